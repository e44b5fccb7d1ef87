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
import os
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import torch
from torch import Tensor

from xclip_lightning.data.frame_cache import SamplerSettings
from xclip_lightning.index.ann import approximate_stage
from xclip_lightning.index.encode import encode_videos, load_search_model, model_fingerprint, resolve_device
from xclip_lightning.index.plan import DEFAULT_WINDOW, FLUSH_EVERY, Update, check_destination
from xclip_lightning.index.ranking import DEFAULT_CANDIDATES, CoarseBackend, CoarseSearch, coarse_query, rank_videos
from xclip_lightning.index.records import IndexEntry, SearchHit, item_id
from xclip_lightning.index.store import (
    FEATURE_KEYS,
    LOCK,
    MANIFEST,
    IndexBusyError,
    VideoIndexError,
    check,
    load_features,
    mapped_features,
    read_manifest,
    remove_unpublished,
    writer_lock,
)
from xclip_lightning.model.head import TextFeatures, VideoFeatures
from xclip_lightning.model.xclip import XCLIP

__all__ = [
    "CoarseSearch",
    "IndexBusyError",
    "IndexEntry",
    "SearchHit",
    "VideoIndex",
    "VideoIndexError",
    "coarse_query",
    "item_id",
    "rank_videos",
    "resolve_device",
]

ZERO_SHOT = "zero-shot CLIP (CLIP4Clip: cosine of the sentence and the mean of the frame features)"


FULL_SCORE = "X-CLIP (multi-grained: video-sentence, video-word, sentence-frame, frame-word)"


def scorer_name(model: XCLIP) -> str:
    zero_shot = model.head.contrasts == ("video_sentence",) and model.head.temporal_layers == 0
    return ZERO_SHOT if zero_shot else FULL_SCORE


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
        update = Update(
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
                        encode_videos(model, plan.todo, update, writer, progress)
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
            index._coarse = approximate_stage(folder, manifest, entries)
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
