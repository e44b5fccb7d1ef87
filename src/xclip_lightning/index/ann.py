"""The approximate first stage for millions of moments: a FAISS inverted-file index over the video vectors.

``IVF{nlist},SQfp16``: the vectors are split into ``nlist`` lists around k-means centroids (``nlist`` about
4 sqrt(N)) and stored in fp16 (1 KB per 512-d vector); a query scans the ``nprobe`` lists nearest to it instead of
every vector. The full X-CLIP score then re-ranks the candidates it returns, as after the exact first stage.

Inside a video index (``index_store.py``) it is one immutable file ``ann/<token>.faiss`` named in the manifest; the
FAISS ids of its vectors are the entries' ids (``entry_key``), so an update removes the vectors of deleted or
changed moments and adds the new ones without retraining. It is trained again when the collection has grown
``RETRAIN_GROWTH`` times past what it was trained on (its centroids would no longer fit the data).
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from xclip_lightning.index.ranking import CoarseSearch
from xclip_lightning.index.store import ANN, IndexWriter, VideoIndexError, check_ann, load_features, write_ann

ANN_MIN_ROWS = 100_000  # "auto" builds the approximate index from this many moments (bench/search.py: below it
# the exact first stage costs under 25 ms a query)
RETRAIN_GROWTH = 8
TRAIN_SAMPLE = 100_000  # vectors k-means is trained on (FAISS wants 39 x nlist at least)
DEFAULT_NPROBE = 64


def entry_key(entry_id: str) -> int:
    """The FAISS id (int64 >= 0) of an entry id (16 hex digits)."""
    return int(entry_id, 16) & ((1 << 63) - 1)


def entry_keys(entries: list[dict[str, Any]]) -> np.ndarray:
    """The FAISS ids of index entries, in their order."""
    return np.array([entry_key(e["id"]) for e in entries], dtype=np.int64)


def _faiss():
    try:
        import faiss
    except ImportError:
        return None
    return faiss


def available() -> bool:
    return _faiss() is not None


def nlist_for(rows: int) -> int:
    """Lists of the inverted file: about 4 sqrt(N), at least 1, at most N / 39 (k-means needs 39 points a list)."""
    return max(1, min(int(4 * math.sqrt(rows)), rows // 39))


def build(vectors: Tensor, keys: np.ndarray, generator_seed: int = 0) -> Any:
    """A trained IVF index over ``vectors`` [N,D] (float) with FAISS ids ``keys`` [N] int64."""
    faiss = _faiss()
    n, dim = vectors.shape
    nlist = nlist_for(n)
    index = faiss.index_factory(dim, f"IVF{nlist},SQfp16", faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(generator_seed)
    sample = rng.choice(n, size=min(n, max(TRAIN_SAMPLE, 39 * nlist)), replace=False)
    data = vectors.float().numpy()
    index.train(np.ascontiguousarray(data[np.sort(sample)]))
    add(index, vectors, keys)
    return index


def add(index: Any, vectors: Tensor, keys: np.ndarray, chunk: int = 65536) -> None:
    for start in range(0, len(keys), chunk):
        part = np.ascontiguousarray(vectors[start : start + chunk].float().numpy())
        index.add_with_ids(part, np.ascontiguousarray(keys[start : start + chunk], dtype=np.int64))


def remove(index: Any, keys: np.ndarray) -> None:
    if len(keys):
        index.remove_ids(np.ascontiguousarray(keys, dtype=np.int64))


def write(index: Any, path: str) -> None:
    _faiss().write_index(index, path)


def read(path: str) -> Any:
    return _faiss().read_index(path)


class ApproximateSearch:
    """Top K rows by the coarse score from an IVF index whose ids are ``keys[row]``: the same ``topk`` as
    ``CoarseSearch``. Rows the IVF index does not hold yet (a version published in the middle of an update) are
    scored exactly from ``extra_vectors`` and merged by score; ids it holds that are not rows any more are skipped."""

    backend = "faiss-ivf"

    def __init__(
        self,
        index: Any,
        keys: np.ndarray,
        nprobe: int = DEFAULT_NPROBE,
        extra_rows: Tensor | None = None,
        extra_vectors: Tensor | None = None,
    ) -> None:
        self.index = index
        _faiss().extract_index_ivf(index).nprobe = nprobe
        self.order = np.argsort(keys, kind="stable")
        self.sorted_keys = keys[self.order]
        self.extra_rows = extra_rows if extra_rows is not None else torch.empty(0, dtype=torch.long)
        self.extra_vectors = extra_vectors

    def rows_of(self, found: np.ndarray) -> np.ndarray:
        """Entry rows of FAISS ids; -1 for an id that is not a row (or FAISS's -1 for 'no more results')."""
        at = np.clip(np.searchsorted(self.sorted_keys, found), 0, len(self.sorted_keys) - 1)
        return np.where(self.sorted_keys[at] == found, self.order[at], -1)

    def topk(self, query: Tensor, k: int) -> Tensor:
        """query [Q,D] -> rows [Q,k'] best first, k' <= k when the probed lists hold fewer than k vectors."""
        scores, found = self.index.search(np.ascontiguousarray(query.detach().float().cpu().numpy()), k)
        rows = self.rows_of(found)
        results = []
        for q in range(len(rows)):
            valid = rows[q] >= 0
            row, score = torch.from_numpy(rows[q][valid]), torch.from_numpy(scores[q][valid])
            if len(self.extra_rows):
                row = torch.cat([row, self.extra_rows])
                score = torch.cat([score, self.extra_vectors @ query[q].float()])
                row = row[score.argsort(descending=True, stable=True)]
            results.append(row[:k])
        keep = min(len(r) for r in results)
        return torch.stack([r[:keep] for r in results])


def approximate_stage(folder: Path, manifest: dict, entries: list[dict[str, Any]]) -> CoarseSearch | ApproximateSearch:
    """The index's IVF first stage, with the moments it does not hold yet scored exactly; the exact first stage
    (with a warning saying why) when faiss is missing or the files do not match their checksums."""
    record, problem = check_ann(folder, manifest)
    if problem or not available():
        reason = problem or "faiss is not installed (pip install faiss-cpu)"
        warnings.warn(
            f"{folder}: the approximate first stage is not usable ({reason}): every video vector is scored instead "
            f"(exact, slower); running `xclip-lightning index` again rebuilds it",
            RuntimeWarning,
            stacklevel=3,
        )
        return CoarseSearch(load_features(folder, entries, ("video",))["video"], "torch")
    stored = np.load(folder / ANN / record["files"][1])
    keys = entry_keys(entries)
    missing = np.nonzero(~np.isin(keys, stored))[0]
    extra = load_features(folder, [entries[i] for i in missing], ("video",))["video"] if len(missing) else None
    return ApproximateSearch(
        read(str(folder / ANN / record["files"][0])),
        keys,
        extra_rows=torch.from_numpy(missing),
        extra_vectors=extra,
    )


def update_approximate(writer: IndexWriter, mode: str) -> None:
    """Bring the approximate first stage in line with the entries, then publish: remove the vectors
    of moments that are gone, add the new ones; (re)train when there is none yet or the collection has outgrown
    it; drop it when the collection is under the threshold (``auto``) or it is turned off."""
    entries = list(writer.entries.values())
    wanted = mode == "on" or (mode == "auto" and len(entries) >= ANN_MIN_ROWS)
    if not wanted or not entries or not available():
        writer.ann = None
        writer.publish()
        if wanted and mode == "on":
            raise VideoIndexError("--approximate on needs faiss: pip install faiss-cpu (the index was saved without)")
        return
    keys = entry_keys(entries)
    previous = writer.ann
    if previous and len(entries) <= RETRAIN_GROWTH * previous["trained_on"]:
        old_keys = np.load(writer.folder / ANN / previous["files"][1])
        gone, new = np.setdiff1d(old_keys, keys), ~np.isin(keys, old_keys)
        if not len(gone) and not new.any():  # nothing changed: keep the files as they are
            writer.publish()
            return
        index = read(str(writer.folder / ANN / previous["files"][0]))
        remove(index, gone)
        if new.any():
            fresh = [e for e, is_new in zip(entries, new, strict=True) if is_new]
            add(index, load_features(writer.folder, fresh, ("video",))["video"], keys[new])
        trained_on = previous["trained_on"]
    else:
        index = build(load_features(writer.folder, entries, ("video",))["video"], keys)
        trained_on = len(entries)
    writer.ann = {**write_ann(writer.folder, index, keys, write), "trained_on": trained_on}
    writer.publish()
