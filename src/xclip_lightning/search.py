"""Search your own videos: encode a folder once into an index, then query it by text with the full X-CLIP score.

    index = VideoIndex.build(XCLIP.from_pretrained("runs/export"), "my_videos/", "my_index/")
    index = VideoIndex.load("my_index/")                      # the model comes back from the index's manifest
    hits = index.search(["a dog catches a frisbee"], k=10)    # [[SearchHit(path, score, best_frame, ...), ...]]

An index folder holds ``features.safetensors`` (video [N,D], frames [N,T,D], frame_mask [N,T]: the model's
normalised ``VideoFeatures``), ``manifest.json`` (one entry per video: path, size, mtime, duration, the timestamps
of the sampled frames; the failures with their reasons; the model's fingerprint, the sampler settings and the
features' SHA-256) and ``thumbs/`` (one JPEG strip of the sampled frames per video, for the HTML report).

Ranking: the coarse video-sentence score (one matrix product over every video, or an exact FAISS inner-product
index when faiss is installed) picks ``candidates`` videos per query, which are then re-scored with the full
multi-grained X-CLIP score (``bench/search.py`` measures how often the top 10 agree with exhaustive scoring).
``candidates=None`` scores every video exhaustively.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import av
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision.io import encode_jpeg
from torchvision.transforms.v2.functional import resize
from tqdm.auto import tqdm

from xclip_lightning.data.benchmarks.common import VIDEO_EXTENSIONS
from xclip_lightning.data.dataset import pad_frames, worker_init
from xclip_lightning.data.frame_cache import SamplerSettings, VideoSource, decode_video
from xclip_lightning.model.head import TextFeatures, VideoFeatures, XCLIPHead
from xclip_lightning.model.xclip import XCLIP, update_with_tensors

INDEX_VERSION = 1
MANIFEST, FEATURES, THUMBS = "manifest.json", "features.safetensors", "thumbs"
THUMB_HEIGHT = 64  # pixels of the thumbnail strip
DEFAULT_CANDIDATES = 200  # videos re-scored with the full X-CLIP score per query (bench/search.py)
CoarseBackend = Literal["auto", "torch", "faiss"]


class VideoIndexError(ValueError):
    """An index that cannot be used: built by another model or sampler setting, corrupt, or missing files."""


@dataclass
class IndexEntry:
    """One indexed video: where it is, which version of the file, and which frames were sampled."""

    path: str
    size: int
    mtime_ns: int
    duration: float | None
    timestamps: list[float]
    thumbnail: str  # file under thumbs/


@dataclass
class SearchHit:
    path: str
    score: float  # the full X-CLIP logit (logit scale x mean of the four contrasts)
    rank: int
    best_frame: int  # sampled frame whose sentence-frame similarity is highest
    best_time: float  # its timestamp, seconds from the first frame
    timestamps: list[float] = field(default_factory=list)
    thumbnail: str = ""


def model_fingerprint(model: XCLIP) -> str:
    """SHA-256 over the head configuration and every weight: an index is only valid for this exact model."""
    digest = hashlib.sha256(json.dumps(model.head.config(), sort_keys=True).encode())
    return update_with_tensors(digest, model.state_dict()).hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def list_videos(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)


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
        return {"index": i, "frames": frames, "timestamps": timestamps, "jpeg": encode_jpeg(strip, quality=85)}


class VideoIndex:
    """Video features of a folder, searchable by text (see the module docstring)."""

    def __init__(
        self,
        model: XCLIP,
        settings: SamplerSettings,
        entries: list[IndexEntry],
        features: VideoFeatures,
        failures: dict[str, str],
        folder: Path | None = None,
        model_dir: str | None = None,
    ) -> None:
        self.model, self.settings, self.entries, self.features = model, settings, entries, features
        self.failures, self.folder, self.model_dir = failures, folder, model_dir
        self.encoded = 0  # videos decoded and encoded by the build that made this object (0 when loaded)
        self.coarse_backend: CoarseBackend = "auto"
        self._coarse: CoarseSearch | None = None

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
    ) -> VideoIndex:
        """Index every video under ``videos`` (recursively) into ``out``; an existing index there is updated:
        only new or changed files are encoded, files that disappeared are dropped."""
        model_dir = str(model) if not isinstance(model, XCLIP) else None
        model = XCLIP.from_pretrained(model) if model_dir is not None else model
        model.eval()
        settings = SamplerSettings(fps, model.head.max_frames, "timestamp", model.encoders.image_size)
        out, videos = Path(out), Path(videos).resolve()  # entries keep absolute paths
        fingerprint = model_fingerprint(model)
        old = cls.load(out, model=model, fingerprint=fingerprint) if (out / MANIFEST).is_file() else None
        if old is not None and old.settings != settings:
            raise VideoIndexError(
                f"{out} was built with {old.settings}, not {settings}: delete it or choose another --out"
            )
        paths = list_videos(videos)
        known = {e.path: i for i, e in enumerate(old.entries)} if old else {}
        keep, todo = [], []
        for path in paths:
            stat = path.stat()
            row = known.get(str(path))
            if row is not None and (old.entries[row].size, old.entries[row].mtime_ns) == (
                stat.st_size,
                stat.st_mtime_ns,
            ):
                keep.append(row)
            else:
                todo.append(path)
        (out / THUMBS).mkdir(parents=True, exist_ok=True)
        entries = [old.entries[r] for r in keep] if old else []
        parts = [VideoFeatures(*(x[keep] for x in old.features))] if old and keep else []
        failures: dict[str, str] = {}
        loader = DataLoader(
            _Decode(todo, settings),
            batch_size=batch_size,
            num_workers=workers,
            collate_fn=list,
            worker_init_fn=worker_init,
        )
        t = settings.max_frames
        with tqdm(total=len(todo), desc=f"indexing {videos}", unit="video", disable=not progress) as bar:
            for items in loader:
                good = [item for item in items if "error" not in item]
                for item in items:
                    if "error" in item:
                        failures[str(todo[item["index"]])] = item["error"]
                bar.update(len(items))
                if not good:
                    continue
                frames, mask = (torch.stack(x) for x in zip(*(pad_frames(i["frames"], t) for i in good), strict=True))
                with torch.no_grad():
                    video = model.encode_video(frames, mask)
                    parts.append(VideoFeatures(video.video.float(), video.frames.float(), video.frame_mask))
                for item in good:
                    path = todo[item["index"]]
                    stat = path.stat()
                    thumb = f"{hashlib.sha1(str(path).encode()).hexdigest()[:16]}.jpg"
                    (out / THUMBS / thumb).write_bytes(item["jpeg"].numpy().tobytes())
                    entries.append(
                        IndexEntry(
                            str(path),
                            stat.st_size,
                            stat.st_mtime_ns,
                            _duration(path),
                            item["timestamps"].tolist(),
                            thumb,
                        )
                    )
        if not parts:
            raise VideoIndexError(f"no video under {videos} could be indexed ({len(failures)} failed)")
        features = VideoFeatures(*(torch.cat(x) for x in zip(*parts, strict=True)))
        index = cls(model, settings, entries, features, failures, out, model_dir or (old.model_dir if old else None))
        index.encoded = len(todo) - len(failures)
        index.save(out, fingerprint)
        return index

    def save(self, out: str | os.PathLike, fingerprint: str | None = None) -> None:
        """Write features (atomically) and then the manifest that vouches for them (with their checksum)."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        tensors = {"video": self.features.video, "frames": self.features.frames, "frame_mask": self.features.frame_mask}
        tmp = out / f".{FEATURES}.tmp"
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
        os.replace(tmp, out / FEATURES)
        manifest = {
            "format_version": INDEX_VERSION,
            "model_fingerprint": fingerprint or model_fingerprint(self.model),
            "model_dir": self.model_dir,
            "sampler": asdict(self.settings),
            "features_sha256": file_sha256(out / FEATURES),
            "built": time.strftime("%Y-%m-%d %H:%M:%S"),
            "entries": [asdict(e) for e in self.entries],
            "failures": self.failures,
        }
        tmp = out / f".{MANIFEST}.tmp"
        tmp.write_text(json.dumps(manifest, indent=1))
        os.replace(tmp, out / MANIFEST)
        used = {e.thumbnail for e in self.entries}
        for thumb in (out / THUMBS).glob("*.jpg"):  # thumbnails of videos that left the index
            if thumb.name not in used:
                thumb.unlink()

    # ---- loading -----------------------------------------------------------------------------------------------

    @classmethod
    def load(
        cls, folder: str | os.PathLike, model: XCLIP | str | os.PathLike | None = None, fingerprint: str | None = None
    ) -> VideoIndex:
        """Open an index; refuses a corrupt one (checksum) and one built by another model."""
        folder = Path(folder)
        if not (folder / MANIFEST).is_file():
            raise VideoIndexError(
                f"{folder} is not a video index (no {MANIFEST}); build one with `xclip-lightning index`"
            )
        manifest = json.loads((folder / MANIFEST).read_text())
        if manifest.get("format_version") != INDEX_VERSION:
            raise VideoIndexError(f"{folder}: index format {manifest.get('format_version')}, this version reads 1")
        if file_sha256(folder / FEATURES) != manifest["features_sha256"]:
            raise VideoIndexError(
                f"{folder / FEATURES} does not match the checksum in its manifest (corrupt or half-written): "
                f"rebuild the index"
            )
        model_dir = manifest.get("model_dir")
        if model is None:
            if not model_dir:
                raise VideoIndexError(f"{folder} does not record its model folder: pass the model explicitly")
            model = model_dir
        if not isinstance(model, XCLIP):
            model_dir = str(model)
            model = XCLIP.from_pretrained(model)
        model.eval()
        if (fingerprint or model_fingerprint(model)) != manifest["model_fingerprint"]:
            raise VideoIndexError(
                f"{folder} was built by another model (weight fingerprint differs): its features are not comparable "
                f"with this model's text features. Rebuild it with this model, or search with the one that built it"
            )
        settings = SamplerSettings(**manifest["sampler"])
        tensors = load_file(str(folder / FEATURES))
        features = VideoFeatures(tensors["video"], tensors["frames"], tensors["frame_mask"].bool())
        entries = [IndexEntry(**e) for e in manifest["entries"]]
        return cls(model, settings, entries, features, manifest.get("failures", {}), folder, model_dir)

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
                SearchHit(entry.path, score, rank + 1, b, entry.timestamps[b], entry.timestamps, entry.thumbnail)
            )
        return hits


def coarse_query(head: XCLIPHead, text: TextFeatures) -> Tensor:
    """The query side of the video-sentence score sentence^T G video: sentence @ G [Q,D] (G = global_mat_weight,
    or the identity when the head has no video-sentence contrast)."""
    weight = getattr(head, "global_mat_weight", None)
    return text.sentence @ weight if weight is not None else text.sentence


class CoarseSearch:
    """Top K videos by the coarse video-sentence score: a torch matrix product, or an exact FAISS inner-product
    index (``IndexFlatIP``) when faiss is installed and ``backend`` allows it. Both return the same rows."""

    def __init__(self, video: Tensor, backend: CoarseBackend = "auto") -> None:
        self.video = video
        self.index = None
        if backend != "torch":
            try:
                import faiss
            except ImportError:
                if backend == "faiss":
                    raise ImportError("backend='faiss' needs faiss: pip install faiss-cpu") from None
                return
            self.index = faiss.IndexFlatIP(video.shape[1])
            self.index.add(video.detach().float().cpu().contiguous().numpy())

    @property
    def backend(self) -> str:
        return "torch" if self.index is None else "faiss"

    def topk(self, query: Tensor, k: int) -> Tensor:
        """query [Q,D] (from ``coarse_query``) -> rows [Q,k], best first."""
        if self.index is None:
            return (query @ self.video.T).topk(k, dim=1).indices
        _, rows = self.index.search(query.detach().float().cpu().contiguous().numpy(), k)
        return torch.from_numpy(rows).to(self.video.device)


def rank_videos(
    head: XCLIPHead,
    logit_scale: Tensor | float,
    text: TextFeatures,
    features: VideoFeatures,
    k: int,
    candidates: int | None = DEFAULT_CANDIDATES,
    coarse: CoarseSearch | None = None,
) -> tuple[Tensor, Tensor]:
    """One query (``text`` of batch 1) against every video: (rows [min(k, N)] best first, full X-CLIP scores).

    Two stages: the coarse score picks ``max(candidates, k)`` rows (with ``coarse``, or a torch matrix product),
    the full score ranks them; ``candidates=None``, or a first stage that would keep every video, scores every
    video fully. Each returned score is the full score of the returned row, whatever ``k`` and ``candidates``.
    """
    if k < 1:
        raise ValueError(f"k (the number of results) must be at least 1, got {k}")
    n = features.video.shape[0]
    k = min(k, n)
    if candidates is None or max(candidates, k) >= n:
        rows = torch.arange(n, device=features.video.device)
    else:
        coarse = coarse or CoarseSearch(features.video, backend="torch")
        rows = coarse.topk(coarse_query(head, text), max(candidates, k))[0]
    subset = VideoFeatures(*(x[rows] for x in features))  # [len(rows),...], row i of subset is video rows[i]
    scores = head.score_matrix(text, subset, logit_scale)[0]
    order = scores.argsort(descending=True, stable=True)[:k]
    return rows[order], scores[order]
