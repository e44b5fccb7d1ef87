"""Search your own videos: encode a folder once into an index, then query it by text with the full X-CLIP score.

    index = VideoIndex.build("models/my-xclip", "my_videos/", "my_index/")
    index = VideoIndex.load("my_index/")                      # the model comes back from the index
    hits = index.search(["a dog catches a frisbee"], k=10)    # [[SearchHit(path, start, end, score, ...), ...]]

What is indexed is moments: a long video is split into ``round(D / window)`` equal windows (``WindowSelector``,
default 30 s), each sampled like a training clip; a short clip is one moment. The index folder (``store.py``)
holds its metadata in SQLite and the model's normalised ``VideoFeatures`` in immutable shards (``shards.py``), one
row per moment, and a JPEG strip of each moment's sampled frames. Opening an index reads a few rows: a query reads
and verifies only the rows it needs.

Ranking: the coarse video-sentence score (one matrix product over every moment, or the approximate FAISS IVF
index of a large collection, ``ann.py``) picks ``candidates`` moments per query, which are then re-scored with the
full multi-grained X-CLIP score (``bench/search.py`` measures how often the top 10 agree with exhaustive scoring).
``candidates=None`` scores every moment exhaustively, a block at a time.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Sequence
from pathlib import Path

import torch

from xclip_lightning.data.frame_cache import SamplerSettings
from xclip_lightning.index.ann import ApproximateSearch, ExactStage, exact_stage, first_stage, warn_exact
from xclip_lightning.index.build import build_index
from xclip_lightning.index.defaults import DEFAULT_CANDIDATES
from xclip_lightning.index.encode import load_search_model, model_fingerprint, resolve_device
from xclip_lightning.index.migrate import open_index
from xclip_lightning.index.ranking import EXHAUSTIVE_BLOCK, coarse_query, rank_videos
from xclip_lightning.index.records import BuildReport, IndexEntry, SearchHit, item_id
from xclip_lightning.index.shards import FEATURE_KEYS, ShardError, ShardReader
from xclip_lightning.index.store import IndexBusyError, IndexStore, Location, VideoIndexError, read_thumbnail
from xclip_lightning.model.head import TextFeatures, VideoFeatures
from xclip_lightning.model.xclip import XCLIP

__all__ = [
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
    """What the model scores with, in words (printed with the results)."""
    zero_shot = model.head.contrasts == ("video_sentence",) and model.head.temporal_layers == 0
    return ZERO_SHOT if zero_shot else FULL_SCORE


class VideoIndex:
    """An index folder opened for search with its model (see the module docstring)."""

    def __init__(self, model: XCLIP, store: IndexStore, report: BuildReport | None = None) -> None:
        self.model, self.store, self.folder = model, store, store.folder
        self.reader = ShardReader(store.folder, store.shard_record)
        self.report = report or BuildReport()  # what the build that made this object did (empty when loaded)
        self.exact_first_stage = False  # True: score every video vector in the first stage, even with an IVF index
        self._stage: ExactStage | ApproximateSearch | None = None
        self._cache: dict[str, object] = {}
        self._version = -1
        self._read_ahead: threading.Thread | None = None

    # ---- what it holds -----------------------------------------------------------------------------------------

    @property
    def settings(self) -> SamplerSettings:
        """The sampler settings it was built with."""
        return SamplerSettings(**self.store.meta["sampler"])

    @property
    def window(self) -> float | None:
        """Seconds per moment it was built with (None: one moment per file)."""
        return self.store.meta.get("window")

    @property
    def model_name(self) -> str | None:
        """The model it records: an absolute folder, or a hub name."""
        return self.store.meta.get("model")

    @property
    def failures(self) -> dict[str, str]:
        """The files its builds could not index, and why."""
        return self.store.failures()

    @property
    def entries(self) -> list[IndexEntry]:
        """Every moment, by path and start (read from the database on first use after each published version)."""
        self._refresh()
        if "entries" not in self._cache:
            self._cache["entries"] = self.store.entries()
        return self._cache["entries"]

    @property
    def features(self) -> VideoFeatures:
        """The feature rows of ``entries``, in their order (all of them: for small indexes, tests and scripts)."""
        if "features" not in self._cache:
            rows = self._gather(self.entries)
            self._cache["features"] = VideoFeatures(*(rows[k] for k in FEATURE_KEYS))
        return self._cache["features"]

    @property
    def encoded(self) -> int:
        """Videos the build that made this object decoded and encoded (0 when loaded)."""
        return self.report.encoded

    @property
    def removed(self) -> int:
        """Videos that build dropped because their files are gone."""
        return self.report.removed

    @property
    def unreadable(self) -> list[str]:
        """Subfolders that build could not list."""
        return self.report.unreadable

    @property
    def rank(self) -> int:
        """This process's rank in a multi-process build (only rank 0 reports)."""
        return self.report.rank

    def __len__(self) -> int:
        self._refresh()
        return self.store.count()

    # ---- building and opening ----------------------------------------------------------------------------------

    @classmethod
    def build(
        cls, model: XCLIP | str | os.PathLike, videos: str | os.PathLike, out: str | os.PathLike, **kwargs
    ) -> VideoIndex:
        """Index every video under ``videos`` (recursively) into ``out``; an existing index there is updated:
        only new or changed files are encoded, files that disappeared are dropped. Another build into ``out`` at the
        same time is refused. Options (``build.build_index``): ``fps``, ``batch_size``, ``workers``, ``progress``,
        ``flush_every``; ``window``: seconds per moment of a long video (None: one moment per file); ``stride``:
        seconds between the starts of overlapping moments (None: consecutive moments); ``device``:
        "auto" (a GPU when there is one), "cpu", "cuda:1"... (fp16 autocast on a GPU, fp32 rows stored, fp16 with
        ``half``); ``approximate``: "auto" (an IVF first stage from ``ann.ANN_MIN_ROWS`` moments, when faiss is
        installed), "on", "off"; ``devices`` / ``num_nodes`` > 1: one process per device through Lightning
        (``distributed.py``).

        Nothing a user has is lost: a missing ``videos`` folder, an ``out`` that holds other files, an update that
        finds no video it can index, or one that would drop more than half of the indexed videos because their files
        are gone (a wrong folder, a drive not mounted) stop before anything is written, the last with the advice to
        pass ``prune=True`` when the files were really deleted."""
        model, report = build_index(model, videos, out, **kwargs)
        return cls(model, IndexStore.open(out), report)

    @classmethod
    def load(
        cls, folder: str | os.PathLike, model: XCLIP | str | os.PathLike | None = None, fingerprint: str | None = None
    ) -> VideoIndex:
        """Open an index (a few rows of its database: nothing is read per moment) with the model it records, or
        ``model``; refuses one built by another model. ``fingerprint``: the model's, when known."""
        store = open_index(folder)
        if model is None:
            model = store.meta.get("model")
            if not model:
                raise VideoIndexError(f"{folder} does not record its model: pass --model")
            if os.path.isabs(model) and not Path(model).exists():
                raise VideoIndexError(
                    f"{folder} was built with the model {model}, which is not there any more: pass --model with its "
                    f"new place"
                )
        if not isinstance(model, XCLIP):
            model = load_search_model(model)
        model.eval()
        if (fingerprint or model_fingerprint(model)) != store.meta.get("model_fingerprint"):
            raise VideoIndexError(
                f"{folder} was built by another model (weight fingerprint differs): its features are not comparable "
                f"with this model's text features. Rebuild it with this model, or search with the one that built it"
            )
        return cls(model, store)

    def refresh(self) -> None:
        """Follow the version a writer published since (every query does this first)."""
        self._refresh()

    def _refresh(self) -> None:
        """Follow the published version: a writer may have published since the last query."""
        version = self.store.version()
        if version != self._version:
            self.store.refresh()
            self._stage, self._cache, self._version = None, {}, version

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
        if k < 1:
            raise ValueError(f"k (the number of results) must be at least 1, got {k}")
        if per_video is not None and per_video < 1:
            raise ValueError(f"per_video must be at least 1, got {per_video}")
        queries = [queries] if isinstance(queries, str) else list(queries)
        tokens = self.model.tokenize(queries)
        text = self.model.encode_text(tokens.input_ids, tokens.word_mask)
        results = []
        for q in range(len(queries)):
            one = TextFeatures(*(None if x is None else x[q : q + 1] for x in text))
            for attempt in range(2):
                try:
                    with self.store.snapshot():
                        self._refresh()
                        results.append(self._rank(one, k, candidates, per_video))
                    break
                except ShardError as err:
                    if attempt == 0 and "is missing" in str(err):  # a writer published and cleaned up meanwhile
                        self._version = -1
                        continue
                    raise self._damaged(err) from err
        return results

    def _damaged(self, err: Exception) -> VideoIndexError:
        meta = self.store.meta
        return VideoIndexError(
            f"{self.folder}: {err}. Repair: `xclip-lightning index --verify {self.folder}` drops what is damaged, "
            f"then `xclip-lightning index --model {meta.get('model', '...')} --videos {meta.get('videos', '...')} "
            f"--out {self.folder}` encodes it again"
        )

    def _gather(
        self, places: Sequence[IndexEntry | Location], keys: Sequence[str] = FEATURE_KEYS
    ) -> dict[str, torch.Tensor]:
        """The rows of these entries, verified (an entry edited by hand or a damaged row is refused)."""
        bad = next((p for p in places if not p.agrees()), None)
        if bad is not None:
            problem = f"the entry of {bad.path} (moment {bad.moment}) was edited: its id is not that of its file"
            raise self._damaged(ShardError(problem))
        try:
            return self.reader.gather([(p.shard, p.row, p.id) for p in places], keys)
        except ShardError as err:
            raise self._damaged(err) from err

    def _rank(self, text: TextFeatures, k: int, candidates: int | None, per_video: int | None) -> list[SearchHit]:
        head, count = self.model.head, self.store.count()
        if count == 0:
            raise VideoIndexError(f"{self.folder} holds no moments yet: run `xclip-lightning index` to add videos")
        k = min(k, count)
        wanted = k if per_video is None else max(k, candidates or count)
        if candidates is None or max(candidates, k) >= count:
            places, scores = self._exhaustive(text, min(wanted, count))
        else:
            self._first_stage()
            query = coarse_query(head, text)[0]
            found = self.store.locate(self._stage.topk(query, max(candidates, k)))
            if isinstance(self._stage, ApproximateSearch) and self._stage.checksum is not None and not found:
                self._stage.checksum.join()  # no candidate at all from a full index: is the IVF file damaged?
            if getattr(self._stage, "problem", None):  # the IVF file failed its background checksum
                warn_exact(self.folder, self._stage.problem)
                self._stage = exact_stage(self.store, self.reader)
                found = self.store.locate(self._stage.topk(query, max(candidates, k)))
            places, scores = self._score(text, list(found.values()), min(wanted, len(found)))
        ranked = list(zip(places, scores, strict=True))
        if per_video is not None:
            ranked = _at_most_per_video(ranked, per_video, k)
        hits = self._hits(ranked[:k], text.sentence[0])
        if self._read_ahead is None:  # after the first query, never delaying it: the next find the database in memory
            self._read_ahead = self.store.read_ahead()
        return hits

    def _first_stage(self) -> ExactStage | ApproximateSearch:
        if self._stage is None:
            self._stage = (
                exact_stage(self.store, self.reader) if self.exact_first_stage else first_stage(self.store, self.reader)
            )
        return self._stage

    def _hits(self, ranked: list[tuple[Location, float]], probe: torch.Tensor) -> list[SearchHit]:
        """Ranked moments as hits; the best frame of each is the one closest to ``probe`` (the query's sentence
        feature, or the video feature of the moment searched like)."""
        if not ranked:
            return []
        entries = self.store.entries_by_key(p.key for p, _ in ranked)
        rows = self._gather([p for p, _ in ranked], ("frames", "frame_mask"))
        best = (rows["frames"] @ probe).masked_fill(~rows["frame_mask"], -torch.inf).argmax(dim=1)
        hits = []
        for rank, ((place, score), b) in enumerate(zip(ranked, best.tolist(), strict=True)):
            e = entries[place.key]
            hits.append(
                SearchHit(
                    e.path, e.start, e.end, score, rank + 1, b, e.timestamps[b], e.timestamps, e.thumbnail,
                    item_id(e.path, e.start),
                )
            )  # fmt: skip
        return hits

    def moment(self, moment_id: str) -> IndexEntry | None:
        """The indexed moment whose hit id (``SearchHit.id``) is ``moment_id``, or None (the map is built on first
        use and again after an update)."""
        self._refresh()
        if "moments" not in self._cache:
            self._cache["moments"] = {item_id(e.path, e.start): e for e in self.store.entries()}
        return self._cache["moments"].get(moment_id)

    @torch.no_grad()
    def similar(
        self,
        moment_id: str,
        k: int = 10,
        candidates: int | None = DEFAULT_CANDIDATES,
        per_video: int | None = None,
    ) -> list[SearchHit]:
        """More like this: the ``k`` moments whose video features (the temporal encoder's output, as the index stores
        it) are closest to those of the moment ``moment_id`` (a hit's ``id``), the moment itself left out. The score
        is the logit scale times their cosine; the first stage picks ``candidates`` moments (None: all)."""
        if k < 1:
            raise ValueError(f"k (the number of results) must be at least 1, got {k}")
        with self.store.snapshot():
            entry = self.moment(moment_id)
            if entry is None:
                raise VideoIndexError(f"{self.folder} holds no moment with the id {moment_id!r}")
            query = self._gather([entry], ("video",))["video"][0].float()
            count = self.store.count()
            if candidates is None or candidates + 1 >= count:
                places = self.store.locations()
            else:
                places = list(self.store.locate(self._first_stage().topk(query, candidates + 1)).values())
            places = [p for p in places if p.key != entry.key]
            if not places:
                return []
            scores = (self._gather(places, ("video",))["video"].float() @ query) * self.model.logit_scale()
            order = scores.argsort(descending=True, stable=True).tolist()
            ranked = [(places[i], float(scores[i])) for i in order]
            ranked = _at_most_per_video(ranked, per_video, k) if per_video is not None else ranked[:k]
            return self._hits(ranked, query)

    def _score(self, text: TextFeatures, places: list[Location], k: int) -> tuple[list[Location], list[float]]:
        """The best ``k`` of the candidates by the full X-CLIP score, best first, with their scores."""
        if not places:
            return [], []
        rows = self._gather(places)
        features = VideoFeatures(*(rows[key] for key in FEATURE_KEYS))
        order, scores = rank_videos(
            self.model.head, self.model.logit_scale(), text, features, min(k, len(places)), None
        )
        return [places[i] for i in order.tolist()], scores.tolist()

    def _exhaustive(self, text: TextFeatures, k: int) -> tuple[list[Location], list[float]]:
        """Every moment fully scored, a block at a time: the best ``k``, best first (ties in storage order)."""
        best: list[tuple[float, int, Location]] = []
        locations = self.store.locations()
        for start in range(0, len(locations), EXHAUSTIVE_BLOCK):
            block = locations[start : start + EXHAUSTIVE_BLOCK]
            places, scores = self._score(text, block, min(k, len(block)))
            position = {p.key: start + i for i, p in enumerate(block)}
            best += [(s, position[p.key], p) for p, s in zip(places, scores, strict=True)]
        best.sort(key=lambda x: (-x[0], x[1]))
        return [p for _, _, p in best[:k]], [s for s, _, _ in best[:k]]

    def thumbnail(self, hit: SearchHit | IndexEntry) -> bytes | None:
        """The JPEG strip of a hit's (or an entry's) moment, or None when it is missing, not a plain file of
        thumbs/ (a symlink is never followed) or not the bytes the index wrote."""
        data = read_thumbnail(self.folder, hit.thumbnail)
        if data is None:
            return None
        expected = self.store.thumb_digest(hit.thumbnail.removesuffix(".jpg"))
        return data if expected and hashlib.sha256(data).hexdigest() == expected else None


def _at_most_per_video(ranked: list[tuple[Location, float]], per_video: int, k: int) -> list[tuple[Location, float]]:
    """The first ``k`` of ``ranked`` that keep at most ``per_video`` moments of each video."""
    seen: dict[str, int] = {}
    keep = []
    for entry, score in ranked:
        if seen.get(entry.path, 0) < per_video:
            seen[entry.path] = seen.get(entry.path, 0) + 1
            keep.append((entry, score))
            if len(keep) == k:
                break
    return keep
