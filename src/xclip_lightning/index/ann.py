"""The approximate first stage for millions of moments: a FAISS inverted-file index over the video vectors.

``IVF{nlist},SQfp16``: the vectors are split into ``nlist`` lists around k-means centroids (``nlist`` about
4 sqrt(N)) and stored in fp16 (1 KB per 512-d vector); a query scans the ``nprobe`` lists nearest to it instead of
every vector. The full X-CLIP score then re-ranks the candidates it returns, as after the exact first stage.

Inside a video index (``store.py``) it is one immutable file ``ann/<token>.faiss`` recorded with its SHA-256; the
FAISS ids of its vectors are the entries' keys (``entry_key``). Moments added since it was written (the entries not
``in_ann``) are scored exactly beside it, and ids of moments dropped since are skipped, so an update does not
rewrite it until ``ANN_REFRESH`` moments have changed: then the dropped vectors are removed and the new ones added
without retraining. It is trained again when the collection has grown ``RETRAIN_GROWTH`` times past what it was
trained on (its centroids would no longer fit the data).
"""

from __future__ import annotations

import hashlib
import math
import os
import secrets
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from xclip_lightning.index.shards import ShardReader, file_sha256, fsync_write
from xclip_lightning.index.store import ANN, IndexStore, VideoIndexError

ANN_MIN_ROWS = 100_000  # "auto" builds the approximate index from this many moments (bench/search.py: below it
# the exact first stage costs under 25 ms a query)
RETRAIN_GROWTH = 8
TRAIN_SAMPLE = 100_000  # vectors k-means is trained on (FAISS wants 39 x nlist at least)
DEFAULT_NPROBE = 64
ANN_REFRESH = 20_000  # moments added or dropped since the IVF file was written before an update rewrites it (the
# added ones are scored exactly at every query meanwhile: about 2 ms at this count)
GATHER_BLOCK = 65536  # vectors read from the shards at a time


def _faiss():
    try:
        import faiss
    except ImportError:
        return None
    return faiss


def available() -> bool:
    """Whether faiss can be imported (the approximate stage needs it)."""
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
    """Add ``vectors`` [N,D] with FAISS ids ``keys`` [N] to ``index``, a block at a time."""
    for start in range(0, len(keys), chunk):
        part = np.ascontiguousarray(vectors[start : start + chunk].float().numpy())
        index.add_with_ids(part, np.ascontiguousarray(keys[start : start + chunk], dtype=np.int64))


def remove(index: Any, keys: np.ndarray) -> None:
    """Remove the vectors of FAISS ids ``keys`` from ``index``."""
    if len(keys):
        index.remove_ids(np.ascontiguousarray(keys, dtype=np.int64))


def write(index: Any, path: str) -> None:
    """Write ``index`` to ``path``."""
    _faiss().write_index(index, path)


class _Checksum(threading.Thread):
    """The SHA-256 of a file, computed in the background (hashlib releases the GIL): ``problem`` says when it
    does not match."""

    def __init__(self, path: Path, sha256: str) -> None:
        super().__init__(daemon=True)
        self.path, self.sha256, self.problem = path, sha256, None
        self.start()

    def run(self) -> None:
        try:
            digest = file_sha256(self.path)
        except OSError as err:
            self.problem = str(err)
            return
        if digest != self.sha256:
            self.problem = f"{self.path} does not match its checksum"


def open_mapped(path: Path, record: dict[str, Any]) -> tuple[Any, _Checksum]:
    """The IVF index in ``path`` memory-mapped (nothing is read until a query probes its lists), after checking its
    size; its checksum is verified in the background (``_Checksum``)."""
    if path.stat().st_size != record["size"]:
        raise VideoIndexError(
            f"{path} does not match its checksum (it holds {path.stat().st_size} bytes, not {record['size']})"
        )
    faiss = _faiss()
    flag = getattr(faiss, "IO_FLAG_MMAP_IFC", faiss.IO_FLAG_MMAP)
    return faiss.read_index(str(path), flag), _Checksum(path, record["sha256"])


def read(path: Path, sha256: str) -> Any:
    """The IVF index in ``path``, after checking its bytes against ``sha256`` (read once, hashed, deserialised)."""
    data = np.fromfile(path, dtype=np.uint8)
    if hashlib.sha256(data).hexdigest() != sha256:
        raise VideoIndexError(f"{path} does not match its checksum")
    return _faiss().deserialize_index(data)


class ExactStage:
    """Top K moments by the coarse score over every video vector (one matrix product)."""

    backend = "torch"

    def __init__(self, keys: np.ndarray, vectors: Tensor) -> None:
        self.keys, self.vectors = keys, vectors

    def topk(self, query: Tensor, k: int) -> np.ndarray:
        """query [D] (from ``coarse_query``) -> the keys of the best ``k`` moments, best first."""
        k = min(k, len(self.keys))
        return self.keys[(self.vectors @ query).topk(k).indices.numpy()] if k else self.keys[:0]


class ApproximateSearch:
    """Top K moments by the coarse score from an IVF index whose FAISS ids are entry keys, merged with the moments
    it does not hold yet (``extra_keys`` / ``extra_vectors``, scored exactly); ids of moments dropped since it was
    written (``removed``) are skipped."""

    backend = "faiss-ivf"

    def __init__(
        self,
        index: Any,
        extra_keys: np.ndarray,
        extra_vectors: Tensor,
        nprobe: int = DEFAULT_NPROBE,
        removed: np.ndarray | None = None,
        checksum: _Checksum | None = None,
    ) -> None:
        self.index, self.extra_keys, self.extra_vectors = index, extra_keys, extra_vectors
        self.checksum = checksum
        self.removed = np.sort(removed) if removed is not None else np.zeros(0, dtype=np.int64)
        _faiss().extract_index_ivf(index).nprobe = nprobe

    @property
    def problem(self) -> str | None:
        """Why the IVF file cannot be trusted, once its background checksum has found it out (else None)."""
        return self.checksum.problem if self.checksum is not None else None

    def topk(self, query: Tensor, k: int) -> np.ndarray:
        """query [D] (from ``coarse_query``) -> the keys of the best ``k`` moments, best first."""
        wanted = min(k + len(self.removed), max(1, self.index.ntotal))  # dropped ids may take places
        scores, found = self.index.search(np.ascontiguousarray(query.detach().float().cpu().numpy()[None]), wanted)
        valid = (found[0] >= 0) & ~np.isin(found[0], self.removed)
        keys, scores = found[0][valid], scores[0][valid]
        if len(self.extra_keys):
            keys = np.concatenate([keys, self.extra_keys])
            scores = np.concatenate([scores, (self.extra_vectors @ query.float()).numpy()])
            keys = keys[np.argsort(-scores, kind="stable")]
        return keys[:k]


def _vectors(store: IndexStore, reader: ShardReader, where: str = "") -> tuple[np.ndarray, Tensor]:
    """(keys [N], video vectors [N,D]) of the entries (``where``: a SQL condition), read a block at a time."""
    locations = store.locations(where)
    keys = np.array([place.key for place in locations], dtype=np.int64)
    blocks = [
        reader.gather([(p.shard, p.row, p.id) for p in locations[start : start + GATHER_BLOCK]], ("video",))["video"]
        for start in range(0, len(locations), GATHER_BLOCK)
    ]
    return keys, torch.cat(blocks) if blocks else torch.zeros(0, 0)


def exact_stage(store: IndexStore, reader: ShardReader) -> ExactStage:
    """The exact first stage: every entry's video vector."""
    return ExactStage(*_vectors(store, reader))


def first_stage(store: IndexStore, reader: ShardReader) -> ExactStage | ApproximateSearch:
    """The index's first stage: its IVF index with the moments it does not hold yet scored exactly, or the exact
    stage (every video vector) when it has none, or (with a warning saying why) when faiss is missing or the file
    does not match its checksum."""
    record = store.meta.get("ann")
    if record:
        problem = None if available() else "faiss is not installed (pip install faiss-cpu)"
        if problem is None:
            try:
                index, checksum = open_mapped(store.folder / ANN / record["file"], record)
            except (OSError, VideoIndexError, RuntimeError, KeyError) as err:
                problem = str(err)
        if problem is None:
            removed = np.array(store.ann_removed(), dtype=np.int64)
            extra = _vectors(store, reader, "in_ann = 0")
            return ApproximateSearch(index, *extra, removed=removed, checksum=checksum)
        warn_exact(store.folder, problem)
    return exact_stage(store, reader)


def warn_exact(folder: Path, problem: str) -> None:
    """Say why the exact first stage is used in place of the approximate one."""
    warnings.warn(
        f"{folder}: the approximate first stage is not usable ({problem}): every video vector is scored instead "
        f"(exact, slower); `xclip-lightning index` rebuilds it",
        RuntimeWarning,
        stacklevel=4,
    )


def update_approximate(store: IndexStore, mode: str) -> None:
    """Bring the approximate first stage in line with the entries: none under ``ANN_MIN_ROWS`` moments (``auto``)
    or when ``off``; built when there is none yet or the collection has outgrown it; brought up to date once
    ``ANN_REFRESH`` moments were added or dropped since it was written (before that they are merged at query
    time). Each change is one published version."""
    count, record = store.count(), store.meta.get("ann")
    wanted = mode == "on" or (mode == "auto" and count >= ANN_MIN_ROWS)
    if not wanted or not count or not available():
        if record:
            store.publish(meta={"ann": None}, in_ann=True)
        if wanted and mode == "on" and not available():
            raise VideoIndexError("--approximate on needs faiss: pip install faiss-cpu (the index was saved without)")
        return
    reader = ShardReader(store.folder, store.shard_record)
    index = None
    if record and count <= RETRAIN_GROWTH * record["trained_on"]:
        changed = store.db.execute("SELECT count(*) FROM entries WHERE in_ann = 0").fetchone()[0]
        removed = store.ann_removed()
        if changed + len(removed) < max(1, ANN_REFRESH):
            return  # merged at query time until enough has changed
        try:
            index = read(store.folder / ANN / record["file"], record["sha256"])
        except (OSError, VideoIndexError, RuntimeError):
            index = None  # damaged: trained again below
        if index is not None:
            remove(index, np.array(removed, dtype=np.int64))
            keys, vectors = _vectors(store, reader, "in_ann = 0")
            add(index, vectors, keys)
            trained_on = record["trained_on"]
    if index is None:
        keys, vectors = _vectors(store, reader)
        index, trained_on = build(vectors, keys), count
    name = f"{secrets.token_hex(16)}.faiss"
    store.record_files([f"{ANN}/{name}"])
    (store.folder / ANN).mkdir(parents=True, exist_ok=True)
    tmp = store.folder / ANN / f".{name}.tmp"
    write(index, str(tmp))
    fsync_write(tmp)
    os.replace(tmp, store.folder / ANN / name)
    digest = file_sha256(store.folder / ANN / name)
    size = (store.folder / ANN / name).stat().st_size
    ann = {"file": name, "sha256": digest, "size": size, "rows": int(index.ntotal), "trained_on": trained_on}
    store.publish(meta={"ann": ann}, ann_files=[name], in_ann=True)
