"""What an update of an index must do, decided under the writer lock: the index opened (created, or checked to have
been built the same way), the videos folder listed and compared with what the index holds: what is kept, what is
encoded, what is dropped; and the checks made before anything is written (a missing folder, an ``--out`` that is
not an index, an update that would empty the index)."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from xclip_lightning.data.benchmarks.common import VIDEO_EXTENSIONS
from xclip_lightning.data.frame_cache import SamplerSettings
from xclip_lightning.index.migrate import open_index
from xclip_lightning.index.store import IndexStore, VideoIndexError, VideoInfo, foreign_files, is_index


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
    if out.is_dir() and not is_index(out) and (foreign := foreign_files(out)):
        shown = ", ".join(p.name for p in foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise VideoIndexError(
            f"--out {out} is not an index and holds other files ({shown}): choose a new or empty folder (nothing "
            f"was written there)"
        )


def model_reference(model: str | os.PathLike) -> str:
    """How the index records its model: a local folder as its absolute path (so ``search`` finds it from any
    directory), anything else (a hub name) as it was given."""
    path = Path(model).expanduser()
    return str(path.resolve()) if path.exists() else str(model)


@dataclass(frozen=True)
class Plan:
    """What one update has to do."""

    todo: list[Path]  # videos to encode: new, changed, or not whole in the index
    gone: list[str]  # indexed videos whose files are gone: dropped
    unreadable: list[str]  # subfolders that could not be listed


@dataclass(frozen=True)
class Update:
    """The settings of one update of an index, the same in every process of a multi-process build."""

    out: Path
    videos: Path
    fingerprint: str
    settings: SamplerSettings
    window: float | None  # seconds per moment; None: one moment per file
    dtype: str  # of the stored features
    model: str | None  # how the model is recorded (``model_reference``); None: keep what the index says
    approximate: str
    batch_size: int
    workers: int
    flush_every: int
    prune: bool = False  # drop the videos whose files are gone even when they are most of the index
    stride: float | None = None  # seconds between the starts of overlapping moments; None: consecutive moments

    def meta(self) -> dict[str, Any]:
        """What the index records of this update's settings."""
        meta = {
            "model_fingerprint": self.fingerprint,
            "videos": str(self.videos),
            "sampler": asdict(self.settings),
            "window": self.window,
            "stride": self.stride,
            "feature_dtype": self.dtype,
        }
        return {**meta, "model": self.model} if self.model else meta

    def open_store(self) -> IndexStore:
        """The index to update (under the writer lock): created, or opened (a format-3 one migrated) and checked to
        have been built with this model and these settings; files a killed writer left are deleted."""
        if not is_index(self.out):
            return IndexStore.create(self.out, self.meta())
        store = open_index(self.out, locked=True)
        meta, out = store.meta, self.out
        if meta.get("model_fingerprint") != self.fingerprint:
            raise VideoIndexError(
                f"{out} was built by another model (weight fingerprint differs; it was {meta.get('model')}): its "
                f"features are not comparable with this model's. Choose another --out, or delete {out} to rebuild it"
            )
        if SamplerSettings(**meta["sampler"]) != self.settings:
            raise VideoIndexError(
                f"{out} was built with {SamplerSettings(**meta['sampler'])}, not {self.settings}: use the same "
                f"--fps, or choose another --out"
            )
        if meta.get("window") != self.window:
            raise VideoIndexError(
                f"{out} was built with --window {meta.get('window') or 0:g}, not {self.window or 0:g}: pass --window "
                f"{meta.get('window') or 0:g}, or choose another --out"
            )
        if meta.get("stride") != self.stride:
            built, asked = meta.get("stride"), self.stride
            raise VideoIndexError(
                f"{out} was built {f'with --stride {built:g}' if built else 'without --stride'}, not "
                f"{f'with --stride {asked:g}' if asked else 'without'}: "
                f"{f'pass --stride {built:g}' if built else 'leave --stride out'}, or choose another --out"
            )
        if meta.get("feature_dtype") != self.dtype:
            raise VideoIndexError(
                f"{out} stores {meta.get('feature_dtype')} features, not {self.dtype}: "
                f"{'add' if meta.get('feature_dtype') == 'float16' else 'leave out'} --half, or choose another --out"
            )
        store.collect_garbage(leftovers=True)
        store.reconcile()
        return store

    def plan(self, store: IndexStore) -> Plan:
        """List the folder and compare it with what the index holds."""
        paths, unreadable = list_videos(self.videos)
        known = store.videos()
        gone = sorted(set(known) - {str(p) for p in paths})
        if not known and not paths:
            raise VideoIndexError(
                f"no video file under {self.videos} (looked for {', '.join(VIDEO_EXTENSIONS)}): nothing was indexed"
            )
        if len(gone) > len(known) / 2 and not self.prune:
            raise VideoIndexError(
                f"{len(gone)} of the {len(known)} indexed videos are not under {self.videos} any more (a wrong "
                f"--videos, or a drive not mounted?): the index was left as it was. If they were deleted, run "
                f"again with --prune to remove them from the index"
            )
        todo = [p for p in paths if not _whole(known.get(str(p)), p)]
        return Plan(todo, gone, unreadable)


def _whole(info: VideoInfo | None, path: Path) -> bool:
    """The index holds every moment of this version of the file."""
    if info is None:
        return False
    stat = path.stat()
    return (info.size, info.mtime_ns) == (stat.st_size, stat.st_mtime_ns) and info.held == info.moments
