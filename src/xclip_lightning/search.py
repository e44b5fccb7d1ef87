"""Search your own videos: encode a folder once into an index, then query it by text with the full X-CLIP score.

    index = VideoIndex.build(XCLIP.from_pretrained("runs/export"), "my_videos/", "my_index/")
    index = VideoIndex.load("my_index/")                      # the model comes back from the index's manifest
    hits = index.search(["a dog catches a frisbee"], k=10)    # [[SearchHit(path, score, best_frame, ...), ...]]

The index folder (``index_store.py``) holds immutable feature shards (the model's normalised ``VideoFeatures``),
one JPEG strip of the sampled frames per video, and ``manifest.json``, which publishes a complete version in one
atomic rename. Building streams features to disk a shard at a time (memory stays flat in the collection size),
publishes every ``flush_every`` videos or ``FLUSH_SECONDS`` (a killed build keeps what it finished and resumes),
holds a lock (a second writer stops with a message), and repairs what no longer agrees with the manifest.

Ranking: the coarse video-sentence score (one matrix product over every video, or an exact FAISS inner-product
index when faiss is installed) picks ``candidates`` videos per query, which are then re-scored with the full
multi-grained X-CLIP score (``bench/search.py`` measures how often the top 10 agree with exhaustive scoring).
``candidates=None`` scores every video exhaustively.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import av
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.io import encode_jpeg
from torchvision.transforms.v2.functional import resize
from tqdm.auto import tqdm

from xclip_lightning.data.benchmarks.common import VIDEO_EXTENSIONS
from xclip_lightning.data.dataset import pad_frames, worker_init
from xclip_lightning.data.frame_cache import SamplerSettings, VideoSource, decode_video
from xclip_lightning.index_store import (
    FEATURE_KEYS,
    INDEX_VERSION,
    MANIFEST,
    THUMBS,
    IndexWriter,
    VideoIndexError,
    check,
    entry_id,
    load_features,
    read_manifest,
    writer_lock,
)
from xclip_lightning.model.head import TextFeatures, VideoFeatures
from xclip_lightning.model.xclip import XCLIP, XCLIP_CONFIG_FILE, update_with_tensors
from xclip_lightning.ranking import DEFAULT_CANDIDATES, CoarseBackend, CoarseSearch, coarse_query, rank_videos

__all__ = [
    "MANIFEST",
    "THUMBS",
    "CoarseSearch",
    "IndexEntry",
    "SearchHit",
    "VideoIndex",
    "VideoIndexError",
    "coarse_query",
    "rank_videos",
]

THUMB_HEIGHT = 64  # pixels of the thumbnail strip
FLUSH_EVERY = 2048  # videos per shard


@dataclass
class IndexEntry:
    """One indexed video: where it is, which version of the file, which frames were sampled, where its row is."""

    path: str
    size: int
    mtime_ns: int
    duration: float | None
    timestamps: list[float]
    thumbnail: str  # file under thumbs/
    id: str = ""  # entry_id(path, size, mtime_ns): stored beside the feature row, checked on load
    shard: str = ""
    row: int = -1


@dataclass
class SearchHit:
    path: str
    score: float  # the full X-CLIP logit (logit scale x mean of the four contrasts)
    rank: int
    best_frame: int  # sampled frame whose sentence-frame similarity is highest
    best_time: float  # its timestamp, seconds from the first frame
    timestamps: list[float] = field(default_factory=list)
    thumbnail: str = ""
    id: str = ""  # stable across index updates and file edits: derived from the path alone (``item_id``)


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


def item_id(path: str) -> str:
    """The id a script can keep for an indexed video: the same in every version of the index and of the file."""
    return hashlib.sha1(path.encode()).hexdigest()[:16]


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


def _duration(path: Path) -> float | None:
    try:
        with av.open(str(path)) as container:
            return container.duration / av.time_base if container.duration else None
    except av.error.FFmpegError:
        return None


class _Decode(Dataset):
    """Decodes one video per item in DataLoader workers; a failure becomes a reason, never a zero sample."""

    def __init__(self, paths: Sequence[Path], settings: SamplerSettings) -> None:
        self.paths, self.settings = list(paths), settings

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict:
        path = self.paths[i]
        try:
            frames, timestamps = decode_video(VideoSource(path), self.settings)
        except Exception as err:  # reported by path with its reason; the run goes on
            return {"index": i, "error": f"{type(err).__name__}: {err}"}
        strip = resize(frames, [THUMB_HEIGHT, THUMB_HEIGHT], antialias=True)  # [T,3,h,h]
        strip = torch.cat(list(strip), dim=2)  # [3,h,T*h]
        return {
            "index": i,
            "frames": frames,
            "timestamps": timestamps,
            "duration": _duration(path),
            "jpeg": encode_jpeg(strip, quality=85),
        }


def _previous_version(
    folder: Path, fingerprint: str, settings: SamplerSettings
) -> tuple[list[dict[str, Any]], dict, list[str], str | None]:
    """(entries that agree with their rows, their shards, the problems found, model_dir) of the published version.

    A build repairs: what does not agree (a swapped, edited or deleted entry, a corrupt shard) is left out here,
    and its video is encoded again.
    """
    if not (folder / MANIFEST).is_file():
        return [], {}, [], None
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
    entries, problems = check(folder, manifest)
    shards = {e["shard"]: manifest["shards"][e["shard"]] for e in entries}
    return entries, shards, problems, manifest.get("model_dir")


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
        self.coarse_backend: CoarseBackend = "auto"
        self._coarse: CoarseSearch | None = None

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
    ) -> VideoIndex:
        """Index every video under ``videos`` (recursively) into ``out``; an existing index there is updated:
        only new or changed files are encoded, files that disappeared are dropped, entries that no longer agree
        with their feature rows are encoded again. Another build into ``out`` at the same time is refused."""
        model_dir = str(model) if not isinstance(model, XCLIP) else None
        model = (load_search_model(model) if model_dir is not None else model).eval()
        settings = SamplerSettings(fps, model.head.max_frames, "timestamp", model.encoders.image_size)
        out, videos = Path(out), Path(videos).resolve()  # entries keep absolute paths
        fingerprint = model_fingerprint(model)
        with writer_lock(out):
            previous, shards, problems, old_model_dir = _previous_version(out, fingerprint, settings)
            model_dir = model_dir or old_model_dir
            header = {
                "format_version": INDEX_VERSION,
                "model_fingerprint": fingerprint,
                "model_dir": model_dir,
                "videos": str(videos),
                "sampler": asdict(settings),
            }
            paths, unreadable = list_videos(videos)
            kept, todo = _unchanged(previous, paths)
            writer = IndexWriter(out, header, kept, shards)
            _encode(model, todo, settings, writer, batch_size, workers, progress, flush_every)
            writer.compact()
        entries = [IndexEntry(**e) for e in writer.entries.values()]
        index = cls(model, settings, entries, writer.failures, out, model_dir)
        index.encoded, index.repaired, index.unreadable = len(todo) - len(writer.failures), problems, unreadable
        return index

    # ---- loading -----------------------------------------------------------------------------------------------

    @classmethod
    def load(
        cls, folder: str | os.PathLike, model: XCLIP | str | os.PathLike | None = None, fingerprint: str | None = None
    ) -> VideoIndex:
        """Open an index with all its features; refuses one built by another model, and one whose manifest does
        not agree with its files (saying how to repair it)."""
        folder = Path(folder)
        for attempt in range(2):  # a writer may publish (and delete the old shards) between our reads: read again
            stamp = (folder / MANIFEST).stat().st_mtime_ns if (folder / MANIFEST).is_file() else None
            manifest = read_manifest(folder)
            entries, problems = check(folder, manifest)
            try:
                features = load_features(folder, entries) if not problems else None
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
        return cls(model, settings, index_entries, manifest.get("failures", {}), folder, model_dir, video)

    # ---- searching ---------------------------------------------------------------------------------------------

    @torch.no_grad()
    def search(
        self, queries: str | Sequence[str], k: int = 10, candidates: int | None = DEFAULT_CANDIDATES
    ) -> list[list[SearchHit]]:
        """The ``k`` best videos per query, best first. ``candidates=None``: full score on every video."""
        queries = [queries] if isinstance(queries, str) else list(queries)
        tokens = self.model.tokenize(queries)
        text = self.model.encode_text(tokens.input_ids, tokens.word_mask)
        return [
            self._rank(TextFeatures(*(None if x is None else x[q : q + 1] for x in text)), k, candidates)
            for q in range(len(queries))
        ]

    def _rank(self, text: TextFeatures, k: int, candidates: int | None) -> list[SearchHit]:
        head, scale = self.model.head, self.model.logit_scale()
        if self._coarse is None:  # built on the first search (a FAISS index when faiss is installed)
            self._coarse = CoarseSearch(self.features.video, self.coarse_backend)
        rows, scores = rank_videos(head, scale, text, self.features, k, candidates, self._coarse)
        frames, mask = self.features.frames[rows], self.features.frame_mask[rows]
        best = (frames @ text.sentence[0]).masked_fill(~mask, -torch.inf).argmax(dim=1)  # sentence-frame match
        hits = []
        for rank, (row, score, b) in enumerate(zip(rows.tolist(), scores.tolist(), best.tolist(), strict=True)):
            entry = self.entries[row]
            hits.append(
                SearchHit(
                    entry.path,
                    score,
                    rank + 1,
                    b,
                    entry.timestamps[b],
                    entry.timestamps,
                    entry.thumbnail,
                    item_id(entry.path),
                )
            )
        return hits


def _unchanged(previous: list[dict[str, Any]], paths: list[Path]) -> tuple[list[dict[str, Any]], list[Path]]:
    """(entries of files still on disk and unchanged, files to encode: new, changed, or repaired)."""
    known = {e["path"]: e for e in previous}
    kept, todo = [], []
    for path in paths:
        stat = path.stat()
        entry = known.get(str(path))
        if entry is not None and (entry["size"], entry["mtime_ns"]) == (stat.st_size, stat.st_mtime_ns):
            kept.append(entry)
        else:
            todo.append(path)
    return kept, todo


@torch.no_grad()
def _encode(
    model: XCLIP,
    todo: list[Path],
    settings: SamplerSettings,
    writer: IndexWriter,
    batch_size: int,
    workers: int,
    progress: bool,
    flush_every: int,
) -> None:
    """Decode ``todo`` in DataLoader workers, encode in batches, hand each video's row to ``writer``."""
    loader = DataLoader(
        _Decode(todo, settings), batch_size=batch_size, num_workers=workers, collate_fn=list, worker_init_fn=worker_init
    )
    (writer.folder / THUMBS).mkdir(parents=True, exist_ok=True)
    with tqdm(total=len(todo), desc=f"indexing {len(todo)} videos", unit="video", disable=not progress) as bar:
        for items in loader:
            bar.update(len(items))
            good = [item for item in items if "error" not in item]
            for item in items:
                if "error" in item:
                    writer.failures[str(todo[item["index"]])] = item["error"]
            if not good:
                continue
            frames, mask = (
                torch.stack(x) for x in zip(*(pad_frames(i["frames"], settings.max_frames) for i in good), strict=True)
            )
            video = model.encode_video(frames, mask)
            for j, item in enumerate(good):
                path = todo[item["index"]]
                stat = path.stat()
                vid = entry_id(str(path), stat.st_size, stat.st_mtime_ns)
                (writer.folder / THUMBS / f"{vid}.jpg").write_bytes(item["jpeg"].numpy().tobytes())
                entry = asdict(
                    IndexEntry(
                        str(path), stat.st_size, stat.st_mtime_ns, item["duration"], item["timestamps"].tolist(),
                        f"{vid}.jpg", vid,
                    )
                )  # fmt: skip
                row = {
                    "video": video.video[j].float(),
                    "frames": video.frames[j].float(),
                    "frame_mask": video.frame_mask[j],
                }
                writer.add(entry, row, flush_every)
    writer.flush()
    if not writer.entries:
        raise VideoIndexError(f"no video could be indexed ({len(writer.failures)} failed)")
