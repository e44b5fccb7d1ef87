"""Search your own videos: encode a folder once into an index, then query it by text with the full X-CLIP score.

    index = VideoIndex.build(XCLIP.from_pretrained("runs/export"), "my_videos/", "my_index/")
    index = VideoIndex.load("my_index/")                      # the model comes back from the index's manifest
    hits = index.search(["a dog catches a frisbee"], k=10)    # [[SearchHit(path, start, end, score, ...), ...]]

What is indexed is moments: a long video is split into ``round(D / window)`` equal windows (``WindowSelector``,
default 30 s), each sampled like a training clip; a short clip is one moment. The index folder
(``index_store.py``) holds immutable feature shards (the model's normalised ``VideoFeatures``, one row per moment),
one JPEG strip of the sampled frames per moment, and ``manifest.json``, which publishes a complete version in one
atomic rename. Building streams features to disk a shard at a time (memory stays flat in the collection size),
publishes every ``flush_every`` moments or ``FLUSH_SECONDS`` (a video's moments together; a killed build keeps
what it finished and resumes), holds a lock (a second writer stops with a message), and repairs what no longer
agrees with the manifest. ``devices > 1`` runs the build on several processes (``distributed_index.py``).

Ranking: the coarse video-sentence score (one matrix product over every moment, or the approximate FAISS IVF
index of a large collection, ``ann.py``) picks ``candidates`` moments per query, which are then re-scored with the
full multi-grained X-CLIP score (``bench/search.py`` measures how often the top 10 agree with exhaustive scoring).
``candidates=None`` scores every moment exhaustively.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import av
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision.io import encode_jpeg
from torchvision.transforms.v2.functional import resize
from tqdm.auto import tqdm

from xclip_lightning.data.benchmarks.common import VIDEO_EXTENSIONS
from xclip_lightning.data.dataset import pad_frames, worker_init
from xclip_lightning.data.frame_cache import SamplerSettings
from xclip_lightning.data.transforms import resize_crop
from xclip_lightning.data.video import WindowSelector, sample_frames
from xclip_lightning.index import ann
from xclip_lightning.index.ranking import DEFAULT_CANDIDATES, CoarseBackend, CoarseSearch, coarse_query, rank_videos
from xclip_lightning.index.store import (
    ANN,
    FEATURE_KEYS,
    INDEX_VERSION,
    LOCK,
    MANIFEST,
    THUMBS,
    IndexBusyError,
    IndexWriter,
    VideoIndexError,
    check,
    check_ann,
    entry_id,
    foreign_files,
    load_features,
    mapped_features,
    read_manifest,
    remove_unpublished,
    write_ann,
    writer_lock,
)
from xclip_lightning.model.head import TextFeatures, VideoFeatures
from xclip_lightning.model.xclip import XCLIP, XCLIP_CONFIG_FILE, update_with_tensors

__all__ = [
    "MANIFEST",
    "THUMBS",
    "CoarseSearch",
    "IndexBusyError",
    "IndexEntry",
    "SearchHit",
    "VideoIndex",
    "VideoIndexError",
    "coarse_query",
    "rank_videos",
]

THUMB_HEIGHT = 64  # pixels of the thumbnail strip
FLUSH_EVERY = 2048  # moments per shard
DEFAULT_WINDOW = 30.0  # seconds per moment of a long video (README "Moments"); a clip under 45 s stays one moment


@dataclass
class IndexEntry:
    """One indexed moment: a window [start, end) of a video file (the whole file when it is short), which version
    of the file, which frames were sampled, where its feature row is."""

    path: str
    size: int
    mtime_ns: int
    duration: float | None
    timestamps: list[float]
    thumbnail: str  # file under thumbs/
    id: str = ""  # entry_id(path, size, mtime_ns, window): stored beside the feature row, checked on load
    shard: str = ""
    row: int = -1
    window: int = 0  # the moment's number in its video
    moments: int = 1  # how many moments its video has
    start: float = 0.0  # seconds from the first frame
    end: float = 0.0


@dataclass
class SearchHit:
    path: str
    start: float  # the moment, seconds from the first frame of the video
    end: float
    score: float  # the full X-CLIP logit (logit scale x mean of the four contrasts)
    rank: int
    best_frame: int  # sampled frame of the moment whose sentence-frame similarity is highest
    best_time: float  # its timestamp, seconds from the first frame
    timestamps: list[float] = field(default_factory=list)
    thumbnail: str = ""
    id: str = ""  # stable across index updates and file edits: from the path and the start (``item_id``)


ZERO_SHOT = "zero-shot CLIP (CLIP4Clip: cosine of the sentence and the mean of the frame features)"
FULL_SCORE = "X-CLIP (multi-grained: video-sentence, video-word, sentence-frame, frame-word)"


def load_search_model(name_or_path: str | os.PathLike) -> XCLIP:
    """A trained X-CLIP folder (``export`` / ``save_pretrained``), or any CLIP folder or hub name for zero-shot
    search: then the head keeps only the video-sentence contrast with an identity matrix and no temporal encoder,
    which is exactly CLIP4Clip's zero-shot rule (cosine of the sentence and the mean of the frame features)."""
    if (Path(name_or_path) / XCLIP_CONFIG_FILE).is_file():
        return XCLIP.from_pretrained(name_or_path)
    return XCLIP.from_clip(str(name_or_path), contrasts=["video_sentence"], temporal_layers=0)


def scorer_name(model: XCLIP) -> str:
    zero_shot = model.head.contrasts == ("video_sentence",) and model.head.temporal_layers == 0
    return ZERO_SHOT if zero_shot else FULL_SCORE


def item_id(path: str, start: float = 0.0) -> str:
    """The id a script can keep for an indexed moment: the same in every version of the index and of the file (a
    moment is its path and its start to the millisecond; the first moment of a video is identified by the path)."""
    key = path if round(start, 3) == 0 else f"{path}#t={start:.3f}"
    return hashlib.sha1(key.encode()).hexdigest()[:16]


def model_fingerprint(model: XCLIP) -> str:
    """SHA-256 over the head configuration and every weight: an index is only valid for this exact model."""
    digest = hashlib.sha256(json.dumps(model.head.config(), sort_keys=True).encode())
    return update_with_tensors(digest, model.state_dict()).hexdigest()


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


def _duration(path: Path) -> float | None:
    try:
        with av.open(str(path)) as container:
            return container.duration / av.time_base if container.duration else None
    except av.error.FFmpegError:
        return None


class _Decode(Dataset):
    """Decodes one video per item in DataLoader workers: its moments' frames (``WindowSelector``) and one thumbnail
    strip per moment; a failure becomes a reason, never a zero sample."""

    def __init__(self, paths: Sequence[Path], settings: SamplerSettings, window: float | None) -> None:
        self.paths, self.settings, self.window = list(paths), settings, window

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict:
        path, s = self.paths[i], self.settings
        windows = WindowSelector(self.window or math.inf, s.fps, s.max_frames)
        try:
            sampled = sample_frames(
                path, s.fps, s.max_frames, s.mode, transform=resize_crop(s.image_size), select=windows
            )
        except Exception as err:  # reported by path with its reason; the run goes on
            return {"index": i, "error": f"{type(err).__name__}: {err}"}
        thumbs = resize(sampled.frames, [THUMB_HEIGHT, THUMB_HEIGHT], antialias=True)  # [T,3,h,h]
        counts = [w.count for w in windows.windows]
        strips = [torch.cat(list(moment), dim=2) for moment in thumbs.split(counts)]  # [3,h,count*h] each
        return {
            "index": i,
            "frames": sampled.frames,
            "timestamps": sampled.timestamps,
            "windows": windows.windows,
            "duration": _duration(path),
            "jpegs": [encode_jpeg(strip, quality=85) for strip in strips],
        }


def _previous_version(
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


class VideoIndex:
    """Video features of a folder, searchable by text (see the module docstring)."""

    def __init__(
        self,
        model: XCLIP,
        settings: SamplerSettings,
        entries: list[IndexEntry],
        failures: dict[str, str],
        folder: Path,
        model_dir: str | None = None,
        features: VideoFeatures | None = None,
    ) -> None:
        self.model, self.settings, self.entries = model, settings, entries
        self.failures, self.folder, self.model_dir = failures, folder, model_dir
        self._features = features
        self.encoded = 0  # videos decoded and encoded by the build that made this object (0 when loaded)
        self.repaired: list[str] = []  # what the build found out of agreement with the manifest, and redid
        self.unreadable: list[str] = []  # subfolders the build could not list
        self.removed = 0  # videos the build dropped because their files are gone
        self.coarse_backend: CoarseBackend = "auto"
        self._coarse: CoarseSearch | None = None
        self.window: float | None = None  # seconds per moment it was built with (None: one moment per file)
        self.rank = 0  # the process's rank in a multi-process build (only rank 0 reports)

    @property
    def features(self) -> VideoFeatures:
        """All feature rows, in entry order (read from the shards on first use: a build does not load them)."""
        if self._features is None:
            tensors = load_features(self.folder, [asdict(e) for e in self.entries])
            self._features = VideoFeatures(*(tensors[k] for k in FEATURE_KEYS))
        return self._features

    # ---- building ----------------------------------------------------------------------------------------------

    @classmethod
    def build(
        cls,
        model: XCLIP | str | os.PathLike,
        videos: str | os.PathLike,
        out: str | os.PathLike,
        fps: float = 1.0,
        batch_size: int = 8,
        workers: int = 2,
        progress: bool = True,
        flush_every: int = FLUSH_EVERY,
        window: float | None = DEFAULT_WINDOW,
        device: str = "auto",
        approximate: str = "auto",
        half: bool = False,
        devices: int = 1,
        num_nodes: int = 1,
        prune: bool = False,
    ) -> VideoIndex:
        """Index every video under ``videos`` (recursively) into ``out``; an existing index there is updated:
        only new or changed files are encoded, files that disappeared are dropped, entries that no longer agree
        with their feature rows are encoded again. Another build into ``out`` at the same time is refused.

        ``window``: seconds per moment of a long video (``WindowSelector``; None or 0: one item per file).
        ``batch_size``: moments encoded together. ``device``: "auto" (a GPU when there is one), "cpu", "cuda"...;
        on a GPU the encoders run under fp16 autocast. The index stores fp32 rows, or fp16 with ``half``.
        ``approximate``: "auto" (an IVF first stage from ``ANN_MIN_ROWS`` moments, when faiss is installed), "on",
        "off" (``ann.py``); kept up to date by every update. ``devices`` / ``num_nodes`` > 1: one process per device
        through Lightning (``distributed_index.py``), each encoding its share of the videos into its own shards, the
        first merging them into one version (``device`` then says the kind: "cpu" or "cuda").

        Nothing a user has is lost: a missing ``videos`` folder, an ``out`` that holds other files, an update that
        finds no video it can index, or one that would drop more than half of the indexed videos because their files
        are gone (a wrong folder, a drive not mounted) stop before anything is written, the last with the advice to
        pass ``prune=True`` when the files were really deleted."""
        if approximate not in ("auto", "on", "off"):
            raise ValueError(f"approximate must be 'auto', 'on' or 'off', got {approximate!r}")
        check_destination(Path(videos), Path(out))
        window = window or None
        model_dir = str(model) if not isinstance(model, XCLIP) else None
        model = (load_search_model(model) if model_dir is not None else model).eval()
        model.to(resolve_device(device))
        settings = SamplerSettings(fps, model.head.max_frames, "timestamp", model.encoders.image_size)
        out, videos = Path(out), Path(videos).resolve()  # entries keep absolute paths
        update = _Update(
            out, videos, model_fingerprint(model), settings, window, "float16" if half else "float32", model_dir,
            approximate, batch_size, workers, flush_every, prune,
        )  # fmt: skip
        if devices > 1 or num_nodes > 1:
            from xclip_lightning.index.distributed import build_distributed

            plan, entries, failures, rank = build_distributed(model, update, device, devices, num_nodes)
        else:
            rank, created = 0, not out.exists()
            try:
                with writer_lock(out):
                    try:
                        plan = update.plan()
                        writer = plan.writer(out)
                        _encode(model, plan.todo, update, writer, progress)
                        update.finish(writer)
                    except BaseException:
                        if not (out / MANIFEST).is_file():  # a new index that never published: leave nothing
                            remove_unpublished(out)
                        raise
            finally:
                if created and not (out / MANIFEST).is_file():
                    (out / LOCK).unlink(missing_ok=True)
                    with contextlib.suppress(OSError):
                        out.rmdir()
            entries, failures = writer.entries, writer.failures
        model.cpu()  # searching encodes one query at a time: the CPU does it
        moments = [IndexEntry(**e) for e in entries.values()]
        index = cls(model, settings, moments, failures, out, plan.header["model_dir"])
        index.encoded, index.repaired, index.removed = len(plan.todo) - len(failures), plan.problems, plan.removed
        index.unreadable, index.window, index.rank = plan.unreadable, window, rank
        return index

    # ---- loading -----------------------------------------------------------------------------------------------

    @classmethod
    def load(
        cls, folder: str | os.PathLike, model: XCLIP | str | os.PathLike | None = None, fingerprint: str | None = None
    ) -> VideoIndex:
        """Open an index with all its features (memory-mapped when it has an approximate first stage: a large
        index is never read whole); refuses one built by another model, and one whose manifest does not agree with
        its files (saying how to repair it)."""
        folder = Path(folder)
        for attempt in range(2):  # a writer may publish (and delete the old shards) between our reads: read again
            stamp = (folder / MANIFEST).stat().st_mtime_ns if (folder / MANIFEST).is_file() else None
            manifest = read_manifest(folder)
            entries, problems = check(folder, manifest)
            large = bool(manifest.get("ann"))
            try:
                read = mapped_features if large else load_features
                features = read(folder, entries) if not problems else None
            except OSError as err:
                problems = [str(err)]
            if not problems or attempt or (folder / MANIFEST).stat().st_mtime_ns == stamp:
                break
        if problems:
            shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
            raise VideoIndexError(
                f"{folder}: the manifest does not agree with the index files ({shown}). Repair: run "
                f"`xclip-lightning index --model ... --videos {manifest.get('videos', '...')} --out {folder}` again; "
                f"it keeps what agrees and encodes the rest"
            )
        model_dir = manifest.get("model_dir")
        if model is None:
            if not model_dir:
                raise VideoIndexError(f"{folder} does not record its model folder: pass the model explicitly")
            model = model_dir
        if not isinstance(model, XCLIP):
            model_dir = str(model)
            model = load_search_model(model)
        model.eval()
        if (fingerprint or model_fingerprint(model)) != manifest["model_fingerprint"]:
            raise VideoIndexError(
                f"{folder} was built by another model (weight fingerprint differs): its features are not comparable "
                f"with this model's text features. Rebuild it with this model, or search with the one that built it"
            )
        settings = SamplerSettings(**manifest["sampler"])
        video = VideoFeatures(*(features[k] for k in FEATURE_KEYS))
        index_entries = [IndexEntry(**e) for e in entries]
        index = cls(model, settings, index_entries, manifest.get("failures", {}), folder, model_dir, video)
        index.window = manifest.get("window")
        if large:
            index._coarse = _approximate_stage(folder, manifest, entries)
        return index

    # ---- searching ---------------------------------------------------------------------------------------------

    @torch.no_grad()
    def search(
        self,
        queries: str | Sequence[str],
        k: int = 10,
        candidates: int | None = DEFAULT_CANDIDATES,
        per_video: int | None = None,
    ) -> list[list[SearchHit]]:
        """The ``k`` best moments per query, best first. ``candidates=None``: full score on every moment.
        ``per_video``: at most that many moments of one video (the next best of other videos fill the list)."""
        if per_video is not None and per_video < 1:
            raise ValueError(f"per_video must be at least 1, got {per_video}")
        queries = [queries] if isinstance(queries, str) else list(queries)
        tokens = self.model.tokenize(queries)
        text = self.model.encode_text(tokens.input_ids, tokens.word_mask)
        return [
            self._rank(TextFeatures(*(None if x is None else x[q : q + 1] for x in text)), k, candidates, per_video)
            for q in range(len(queries))
        ]

    def _rank(self, text: TextFeatures, k: int, candidates: int | None, per_video: int | None) -> list[SearchHit]:
        head, scale = self.model.head, self.model.logit_scale()
        if self._coarse is None:  # the exact first stage, built on the first search (load sets the IVF one)
            self._coarse = CoarseSearch(self.features.video, self.coarse_backend)
        # grouping by video needs the whole re-scored list: every candidate is scored fully anyway
        wanted = k if per_video is None else max(k, candidates or len(self.entries))
        rows, scores = rank_videos(head, scale, text, self.features, wanted, candidates, self._coarse)
        if per_video is not None:
            rows, scores = _at_most_per_video(rows, scores, [self.entries[r].path for r in rows.tolist()], per_video, k)
        frames, mask = self.features.frames[rows], self.features.frame_mask[rows]
        best = (frames @ text.sentence[0]).masked_fill(~mask, -torch.inf).argmax(dim=1)  # sentence-frame match
        hits = []
        for rank, (row, score, b) in enumerate(zip(rows.tolist(), scores.tolist(), best.tolist(), strict=True)):
            e = self.entries[row]
            hits.append(
                SearchHit(
                    e.path, e.start, e.end, score, rank + 1, b, e.timestamps[b], e.timestamps, e.thumbnail,
                    item_id(e.path, e.start),
                )
            )  # fmt: skip
        return hits


@dataclass
class _Plan:
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
class _Update:
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

    def plan(self) -> _Plan:
        """Read the published version and list the folder (under the writer lock)."""
        previous, shards, problems, old_model_dir, old_ann = _previous_version(
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
        kept, todo = _unchanged(previous, paths)
        return _Plan(header, kept, shards, todo, problems, unreadable, old_ann, gone)

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
        _update_approximate(writer, self.approximate)


def _approximate_stage(
    folder: Path, manifest: dict, entries: list[dict[str, Any]]
) -> CoarseSearch | ann.ApproximateSearch:
    """The index's IVF first stage, with the moments it does not hold yet scored exactly; the exact first stage
    (with a warning saying why) when faiss is missing or the files do not match their checksums."""
    record, problem = check_ann(folder, manifest)
    if problem or not ann.available():
        reason = problem or "faiss is not installed (pip install faiss-cpu)"
        warnings.warn(
            f"{folder}: the approximate first stage is not usable ({reason}): every video vector is scored instead "
            f"(exact, slower); running `xclip-lightning index` again rebuilds it",
            RuntimeWarning,
            stacklevel=3,
        )
        return CoarseSearch(load_features(folder, entries, ("video",))["video"], "torch")
    stored = np.load(folder / ANN / record["files"][1])
    keys = ann.entry_keys(entries)
    missing = np.nonzero(~np.isin(keys, stored))[0]
    extra = load_features(folder, [entries[i] for i in missing], ("video",))["video"] if len(missing) else None
    return ann.ApproximateSearch(
        ann.read(str(folder / ANN / record["files"][0])),
        keys,
        extra_rows=torch.from_numpy(missing),
        extra_vectors=extra,
    )


def _update_approximate(writer: IndexWriter, mode: str) -> None:
    """Bring the approximate first stage in line with the entries (``ann.py``), then publish: remove the vectors
    of moments that are gone, add the new ones; (re)train when there is none yet or the collection has outgrown
    it; drop it when the collection is under the threshold (``auto``) or it is turned off."""
    entries = list(writer.entries.values())
    wanted = mode == "on" or (mode == "auto" and len(entries) >= ann.ANN_MIN_ROWS)
    if not wanted or not entries or not ann.available():
        writer.ann = None
        writer.publish()
        if wanted and mode == "on":
            raise VideoIndexError("--approximate on needs faiss: pip install faiss-cpu (the index was saved without)")
        return
    keys = ann.entry_keys(entries)
    previous = writer.ann
    if previous and len(entries) <= ann.RETRAIN_GROWTH * previous["trained_on"]:
        old_keys = np.load(writer.folder / ANN / previous["files"][1])
        gone, new = np.setdiff1d(old_keys, keys), ~np.isin(keys, old_keys)
        if not len(gone) and not new.any():  # nothing changed: keep the files as they are
            writer.publish()
            return
        index = ann.read(str(writer.folder / ANN / previous["files"][0]))
        ann.remove(index, gone)
        if new.any():
            fresh = [e for e, is_new in zip(entries, new, strict=True) if is_new]
            ann.add(index, load_features(writer.folder, fresh, ("video",))["video"], keys[new])
        trained_on = previous["trained_on"]
    else:
        index = ann.build(load_features(writer.folder, entries, ("video",))["video"], keys)
        trained_on = len(entries)
    writer.ann = {**write_ann(writer.folder, index, keys, ann.write), "trained_on": trained_on}
    writer.publish()


def _at_most_per_video(rows: Tensor, scores: Tensor, paths: list[str], per_video: int, k: int) -> tuple[Tensor, Tensor]:
    """The first ``k`` of the ranked ``rows`` that keep at most ``per_video`` moments of each video."""
    seen: dict[str, int] = {}
    keep = []
    for i, path in enumerate(paths):
        if seen.get(path, 0) < per_video:
            seen[path] = seen.get(path, 0) + 1
            keep.append(i)
            if len(keep) == k:
                break
    index = torch.tensor(keep, dtype=torch.long, device=rows.device)
    return rows[index], scores[index]


def resolve_device(device: str) -> torch.device:
    """ "auto": the first GPU when there is one, else the CPU; anything else as torch reads it ("cpu", "cuda:1")."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise VideoIndexError(f"--device {device}: no CUDA GPU is visible here (use --device auto or cpu)")
    return resolved


def _unchanged(previous: list[dict[str, Any]], paths: list[Path]) -> tuple[list[dict[str, Any]], list[Path]]:
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


class _Video:
    """A decoded video whose moments are being encoded; complete once every moment has its feature row."""

    def __init__(self, path: Path, item: dict) -> None:
        self.path, self.item = path, item
        counts = [w.count for w in item["windows"]]
        self.frames = item["frames"].split(counts)  # [count,3,S,S] per moment
        self.timestamps = item["timestamps"].split(counts)
        self.rows: list[dict[str, Tensor] | None] = [None] * len(counts)

    def moments(self, folder: Path) -> list[tuple[dict[str, Any], dict[str, Tensor]]]:
        """(entry, feature row) of every moment; writes the thumbnails."""
        stat, windows = self.path.stat(), self.item["windows"]
        out = []
        for k, (w, row) in enumerate(zip(windows, self.rows, strict=True)):
            vid = entry_id(str(self.path), stat.st_size, stat.st_mtime_ns, k)
            (folder / THUMBS / f"{vid}.jpg").write_bytes(self.item["jpegs"][k].numpy().tobytes())
            timestamps = self.timestamps[k].tolist()
            entry = IndexEntry(
                str(self.path), stat.st_size, stat.st_mtime_ns, self.item["duration"], timestamps, f"{vid}.jpg", vid,
                window=k, moments=len(windows), start=round(w.start, 3), end=round(w.end, 3),
            )  # fmt: skip
            out.append((asdict(entry), row))
        return out


class _Encoder:
    """Encodes decoded videos' moments ``batch_size`` at a time (a long video spreads over several batches, short
    ones share one) and hands each complete video's rows to ``writer``, in the order the videos came."""

    def __init__(self, model: XCLIP, update: _Update, writer: IndexWriter) -> None:
        self.model, self.settings, self.writer = model, update.settings, writer
        self.batch_size, self.flush_every = update.batch_size, update.flush_every
        self.device = next(model.parameters()).device
        self.waiting: list[tuple[_Video, int]] = []  # moments decoded, not yet encoded (FIFO)
        (writer.folder / THUMBS).mkdir(parents=True, exist_ok=True)

    def add(self, path: Path, item: dict) -> None:
        if "error" in item:
            self.writer.failures[str(path)] = item["error"]
            return
        video = _Video(path, item)
        self.waiting.extend((video, k) for k in range(len(video.rows)))
        while len(self.waiting) >= self.batch_size:
            self._encode(self.waiting[: self.batch_size])
            self.waiting = self.waiting[self.batch_size :]

    def finish(self) -> None:
        if self.waiting:
            self._encode(self.waiting)
            self.waiting = []

    @torch.no_grad()
    def _encode(self, chunk: list[tuple[_Video, int]]) -> None:
        frames, mask = (
            torch.stack(x)
            for x in zip(*(pad_frames(v.frames[k], self.settings.max_frames) for v, k in chunk), strict=True)
        )
        device = self.device
        with torch.autocast(device.type, torch.float16, enabled=device.type == "cuda"):
            video = self.model.encode_video(frames.to(device, non_blocking=True), mask.to(device, non_blocking=True))
        for j, (v, k) in enumerate(chunk):
            v.rows[k] = {
                "video": video.video[j].float().cpu(),
                "frames": video.frames[j].float().cpu(),
                "frame_mask": video.frame_mask[j].cpu(),
            }
            if k == len(v.rows) - 1:
                self.writer.add_video(v.moments(self.writer.folder), self.flush_every)


def _loader(todo: list[Path], update: _Update, pin: bool) -> DataLoader:
    """Decoding workers, one video per item, prefetching while the model encodes."""
    return DataLoader(
        _Decode(todo, update.settings, update.window),
        batch_size=None,
        num_workers=update.workers,
        worker_init_fn=worker_init,
        pin_memory=pin,
        prefetch_factor=4 if update.workers else None,
    )


def _encode(model: XCLIP, todo: list[Path], update: _Update, writer: IndexWriter, progress: bool) -> None:
    """Decode ``todo`` in DataLoader workers and encode it into ``writer`` (one process)."""
    encoder = _Encoder(model, update, writer)
    loader = _loader(todo, update, encoder.device.type == "cuda")
    with tqdm(total=len(todo), desc=f"indexing {len(todo)} videos", unit="video", disable=not progress) as bar:
        for item in loader:
            bar.update(1)
            encoder.add(todo[item["index"]], item)
        encoder.finish()
