"""What an update of an index must do, decided under the writer lock: the published version read and checked,
the videos folder listed, what is kept, what is encoded, what is dropped; and the checks made before anything is
written (a missing folder, an ``--out`` that is not an index, an update that would empty the index)."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from xclip_lightning.data.benchmarks.common import VIDEO_EXTENSIONS
from xclip_lightning.data.frame_cache import SamplerSettings
from xclip_lightning.index.ann import update_approximate
from xclip_lightning.index.store import (
    INDEX_VERSION,
    MANIFEST,
    IndexWriter,
    VideoIndexError,
    check,
    check_ann,
    foreign_files,
    read_manifest,
)

FLUSH_EVERY = 2048  # moments per shard


DEFAULT_WINDOW = 30.0  # seconds per moment of a long video (README "Moments"); a clip under 45 s stays one moment


def list_videos(folder: Path) -> tuple[list[Path], list[str]]:
    """Video files under ``folder`` (recursively, sorted) and the subfolders that could not be read."""
    found, unreadable = [], []
    for root, _, files in os.walk(folder, onerror=lambda err: unreadable.append(f"{err.filename}: {err.strerror}")):
        found.extend(Path(root) / f for f in files if Path(f).suffix.lower() in VIDEO_EXTENSIONS)
    return sorted(found), unreadable


def check_destination(videos: Path, out: Path) -> None:
    """Refuse, before anything is written, a ``videos`` folder that does not exist and an ``out`` that is a file
    or a folder holding files that are not an index's (its files would be someone else's)."""
    if not videos.is_dir():
        raise VideoIndexError(f"--videos {videos}: no such folder (nothing was changed)")
    if out.exists() and not out.is_dir():
        raise VideoIndexError(f"--out {out} is a file, not an index folder: choose a new or empty folder")
    if out.is_dir() and not (out / MANIFEST).is_file() and (foreign := foreign_files(out)):
        shown = ", ".join(p.name for p in foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise VideoIndexError(
            f"--out {out} is not an index and holds other files ({shown}): choose a new or empty folder (nothing "
            f"was written there)"
        )


def previous_version(
    folder: Path, fingerprint: str, settings: SamplerSettings, window: float | None, dtype: str
) -> tuple[list[dict[str, Any]], dict, list[str], str | None, dict | None]:
    """(entries that agree with their rows, their shards, the problems found, model_dir, the approximate index's
    record) of the published version.

    A build repairs: what does not agree (a swapped, edited or deleted entry, a corrupt shard) is left out here,
    and its video is encoded again.
    """
    if not (folder / MANIFEST).is_file():
        return [], {}, [], None, None
    manifest = read_manifest(folder)
    if manifest["model_fingerprint"] != fingerprint:
        raise VideoIndexError(
            f"{folder} was built by another model (weight fingerprint differs): its features are not comparable "
            f"with this model's text features. Choose another --out, or delete the index to rebuild it"
        )
    if SamplerSettings(**manifest["sampler"]) != settings:
        raise VideoIndexError(
            f"{folder} was built with {SamplerSettings(**manifest['sampler'])}, not {settings}: delete it or choose "
            f"another --out"
        )
    if manifest.get("window") != window:
        raise VideoIndexError(
            f"{folder} was built with --window {manifest.get('window') or 0}, not {window or 0}: delete it or choose "
            f"another --out"
        )
    if manifest.get("feature_dtype", "float32") != dtype:
        raise VideoIndexError(
            f"{folder} stores {manifest.get('feature_dtype')} features, not {dtype} (--half): delete it or choose "
            f"another --out"
        )
    entries, problems = check(folder, manifest)
    shards = {e["shard"]: manifest["shards"][e["shard"]] for e in entries}
    ann_record, ann_problem = check_ann(folder, manifest)
    problems += [ann_problem] if ann_problem else []
    return entries, shards, problems, manifest.get("model_dir"), ann_record


@dataclass
class Plan:
    """What an update has to do, decided under the writer lock from the published version and the folder."""

    header: dict[str, Any]
    kept: list[dict[str, Any]]  # moments of unchanged videos, kept with their rows
    shards: dict[str, Any]  # the shards those rows are in
    todo: list[Path]  # videos to encode: new, changed or repaired
    problems: list[str]  # what the published version had out of agreement (redone)
    unreadable: list[str]  # subfolders that could not be listed
    old_ann: dict[str, Any] | None
    removed: int  # videos of the published version whose files are gone (dropped)

    def writer(self, folder: Path) -> IndexWriter:
        """The writer of the new version: the kept moments, their shards and the approximate stage to update."""
        writer = IndexWriter(folder, self.header, self.kept, self.shards)
        writer.ann = self.old_ann
        return writer


@dataclass(frozen=True)
class Update:
    """The settings of one update of an index, the same in every process of a multi-process build."""

    out: Path
    videos: Path
    fingerprint: str
    settings: SamplerSettings
    window: float | None
    dtype: str  # of the stored features
    model_dir: str | None
    approximate: str
    batch_size: int
    workers: int
    flush_every: int
    prune: bool = False  # drop the videos whose files are gone even when they are most of the index

    def plan(self) -> Plan:
        """Read the published version and list the folder (under the writer lock)."""
        previous, shards, problems, old_model_dir, old_ann = previous_version(
            self.out, self.fingerprint, self.settings, self.window, self.dtype
        )
        header = {
            "format_version": INDEX_VERSION,
            "model_fingerprint": self.fingerprint,
            "model_dir": self.model_dir or old_model_dir,
            "videos": str(self.videos),
            "sampler": asdict(self.settings),
            "window": self.window,
            "feature_dtype": self.dtype,
        }
        paths, unreadable = list_videos(self.videos)
        indexed = {e["path"] for e in previous}
        gone = len(indexed - {str(p) for p in paths})
        if not previous and not paths:
            raise VideoIndexError(
                f"no video file under {self.videos} (looked for {', '.join(VIDEO_EXTENSIONS)}): nothing was indexed"
            )
        if gone > len(indexed) / 2 and not self.prune:
            raise VideoIndexError(
                f"{gone} of the {len(indexed)} indexed videos are not under {self.videos} any more (a wrong "
                f"--videos, or a drive not mounted?): the index was left as it was. If they were deleted, run "
                f"again with --prune to remove them from the index"
            )
        kept, todo = unchanged(previous, paths)
        return Plan(header, kept, shards, todo, problems, unreadable, old_ann, gone)

    def finish(self, writer: IndexWriter) -> None:
        """Compact, bring the approximate stage up to date, publish; an update that ends with no video at all
        publishes nothing (the previous version stays)."""
        if not writer.entries and not writer.pending:
            failed = "".join(f", e.g. {path}: {reason}" for path, reason in list(writer.failures.items())[:1])
            kept = ": the index was left as it was" if (self.out / MANIFEST).is_file() else ""
            raise VideoIndexError(
                f"no video could be indexed under {self.videos} ({len(writer.failures)} failed{failed}){kept}"
            )
        writer.compact()
        update_approximate(writer, self.approximate)


def unchanged(previous: list[dict[str, Any]], paths: list[Path]) -> tuple[list[dict[str, Any]], list[Path]]:
    """(moments of files still on disk and unchanged, files to encode: new, changed, or repaired)."""
    known: dict[str, list[dict[str, Any]]] = {}
    for e in previous:
        known.setdefault(e["path"], []).append(e)
    kept, todo = [], []
    for path in paths:
        stat = path.stat()
        moments = known.get(str(path), [])
        complete = sorted(e["window"] for e in moments) == list(range(moments[0]["moments"])) if moments else False
        if (
            moments
            and complete
            and all((e["size"], e["mtime_ns"]) == (stat.st_size, stat.st_mtime_ns) for e in moments)
        ):
            kept.extend(moments)
        else:
            todo.append(path)
    return kept, todo
