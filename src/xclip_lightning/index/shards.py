"""Feature shards: immutable safetensors files of feature rows, written once and verified lazily when read.

A shard holds ``video`` [n,D], ``frames`` [n,T,D] (float32 or float16) and ``frame_mask`` [n,T] (uint8), and in its
metadata the entry id of each row. When it is written its size and a checksum of each of its parts are recorded
(``ShardRecord.digests``: the header, then every row of every tensor; the first 16 bytes of a SHA-256 each, which
together cover every byte of the file); a reader maps the file and, before it returns any row, checks the size,
the header's checksum, the checksums of that row's three parts, and that the id stored at the row is the entry's.
So opening an index costs nothing per shard, a query hashes only the rows it reads (13 KB a candidate at D=512,
T=12, fp16: under 3 ms for 200 cold candidates), and a corrupt or edited shard is never served: ``ShardError``
names it.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import Tensor

SHARDS = "shards"
FEATURE_KEYS = ("video", "frames", "frame_mask")
DIGEST = 16  # bytes kept of each part's SHA-256
_NUMPY_DTYPES = {"F32": np.float32, "F16": np.float16, "U8": np.uint8}


class ShardError(ValueError):
    """A shard that does not match what was recorded when it was written (corrupt, truncated, edited, missing)."""


@dataclass(frozen=True)
class ShardRecord:
    """What is recorded of a shard when it is written."""

    name: str  # <32 hex digits>.safetensors under shards/
    rows: int
    size: int  # bytes
    digests: bytes  # DIGEST bytes of the SHA-256 of the header, then of each row of each of FEATURE_KEYS


def fsync_write(path: Path, data: bytes | None = None) -> None:
    """Flush ``path`` (writing ``data`` first when given) to the disk."""
    with open(path, "wb" if data is not None else "rb+") as f:
        if data is not None:
            f.write(data)
        f.flush()
        os.fsync(f.fileno())


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file, read a block at a time (hashlib releases the GIL on large blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 24):
            digest.update(block)
    return digest.hexdigest()


def _digest(data: np.ndarray | bytes) -> bytes:
    return hashlib.sha256(data).digest()[:DIGEST]


class _Layout:
    """Where the parts of a safetensors shard are: an 8-byte little-endian header length, the JSON header (each
    tensor's dtype, shape and data offsets; the ids in its metadata), then the tensors' data."""

    def __init__(self, data: np.ndarray) -> None:
        self.header_end = 8 + int.from_bytes(data[:8].tobytes(), "little")
        if self.header_end > len(data):
            raise ValueError("the header runs past the end of the file")
        self.header = json.loads(data[8 : self.header_end].tobytes())
        self.rows = self.header["video"]["shape"][0]
        self.spans = {}  # tensor -> (first byte, bytes per row)
        for key in FEATURE_KEYS:
            begin, end = self.header[key]["data_offsets"]
            self.spans[key] = (self.header_end + begin, (end - begin) // max(1, self.rows))

    def unit(self, key: str, row: int) -> int:
        """The number of a row's part among the digests (0 is the header)."""
        return 1 + FEATURE_KEYS.index(key) * self.rows + row

    def part(self, data: np.ndarray, key: str, row: int) -> np.ndarray:
        first, per_row = self.spans[key]
        return data[first + row * per_row : first + (row + 1) * per_row]


def shard_digests(path: Path) -> bytes:
    """The digests of a shard file as written: its header, then every row of every tensor."""
    data = np.memmap(path, dtype=np.uint8, mode="r").view(np.ndarray)
    layout = _Layout(data)
    parts = [_digest(data[: layout.header_end])]
    parts += [_digest(layout.part(data, key, row)) for key in FEATURE_KEYS for row in range(layout.rows)]
    return b"".join(parts)


def shard_name() -> str:
    """A new shard file name (128 random bits)."""
    return f"{secrets.token_hex(16)}.safetensors"


def write_shard(
    folder: Path, name: str, tensors: dict[str, Tensor], ids: Sequence[str], dtype: torch.dtype
) -> ShardRecord:
    """Write the shard ``folder/shards/name`` (temporary name, fsync, rename) and return its record. ``dtype``: of
    the stored features (float16 halves the disk and the page cache a large index needs)."""
    (folder / SHARDS).mkdir(parents=True, exist_ok=True)
    tmp = folder / SHARDS / f".{name}.tmp"
    data = {k: v.to(dtype).contiguous() for k, v in tensors.items() if k != "frame_mask"}
    data["frame_mask"] = tensors["frame_mask"].to(torch.uint8).contiguous()
    save_file(data, str(tmp), metadata={"ids": json.dumps(list(ids))})
    fsync_write(tmp)
    os.replace(tmp, folder / SHARDS / name)
    path = folder / SHARDS / name
    return ShardRecord(name, len(ids), path.stat().st_size, shard_digests(path))


def _will_need(mapped: mmap.mmap, start: int, length: int) -> None:
    """Ask the kernel to start reading these bytes of a mapping now (``MADV_WILLNEED``, where the platform has it):
    reads asked for together overlap on a cold page cache, where touching the pages one after another waits for
    each."""
    if hasattr(mmap, "MADV_WILLNEED") and length > 0:
        page = start - start % mmap.PAGESIZE
        mapped.madvise(mmap.MADV_WILLNEED, page, start + length - page)


class _MappedShard:
    """One shard file mapped read-only, its parts verified as rows are asked for. Mapping it asks the kernel for its
    header; ``load()`` then checks the header (so several shards' headers can be read from the disk at once)."""

    def __init__(self, path: Path, record: ShardRecord) -> None:
        self.path, self.record = path, record
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise ShardError(f"{path} is missing") from None
        if size != record.size or size < 8:
            raise ShardError(f"{path} holds {size} bytes, {record.size} were written (truncated or replaced)")
        with open(path, "rb") as file:
            self.map = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
        self.data = np.frombuffer(self.map, dtype=np.uint8)
        _will_need(self.map, 0, min(size, 4096 + 64 * record.rows))  # the header: its ids are 16 hex digits

    def load(self) -> _MappedShard:
        """Read and check the header (its checksum, its ids): raises ``ShardError`` when it is not the one written."""
        path, record = self.path, self.record
        try:
            self.layout = _Layout(self.data)
        except (ValueError, KeyError, TypeError) as err:
            raise ShardError(f"{path} does not match its checksum (its header cannot be read: {err})") from None
        if _digest(self.data[: self.layout.header_end]) != record.digests[:DIGEST]:
            raise ShardError(f"{path} does not match its checksum (its header: corrupt or edited)")
        self.ids: list[str] = json.loads(self.layout.header.get("__metadata__", {}).get("ids", "[]"))
        if len(self.ids) != record.rows or self.layout.rows != record.rows:
            raise ShardError(f"{path} holds {len(self.ids)} rows, {record.rows} were written")
        if len(record.digests) != DIGEST * (1 + len(FEATURE_KEYS) * record.rows):
            raise ShardError(f"{path}: its recorded checksums do not fit its rows")
        self.verified = np.zeros(1 + len(FEATURE_KEYS) * record.rows, dtype=bool)
        self.arrays: dict[str, np.ndarray] = {}
        for key in FEATURE_KEYS:
            info = self.layout.header[key]
            first, per_row = self.layout.spans[key]
            dtype = _NUMPY_DTYPES[info["dtype"]]
            self.arrays[key] = self.data[first : first + per_row * record.rows].view(dtype).reshape(info["shape"])
        return self

    def unverified(self, rows: Sequence[int], keys: Sequence[str] = FEATURE_KEYS) -> list[tuple[int, np.ndarray]]:
        """(unit, bytes) of the parts of these rows that have not been checked yet."""
        todo = []
        rows = np.asarray(rows, dtype=np.int64)
        for key in keys:
            units = 1 + FEATURE_KEYS.index(key) * self.record.rows + rows
            for unit in units[~self.verified[units]].tolist():
                todo.append((unit, self.layout.part(self.data, key, (unit - 1) % self.record.rows)))
        return todo

    def prefetch(self, unit: int) -> None:
        """Ask the kernel to start reading this part now: hashing the parts one after another then finds them in
        memory."""
        key, row = FEATURE_KEYS[(unit - 1) // self.record.rows], (unit - 1) % self.record.rows
        first, per_row = self.layout.spans[key]
        _will_need(self.map, first + row * per_row, per_row)

    def check(self, unit: int, digest: bytes) -> None:
        if digest != self.record.digests[DIGEST * unit : DIGEST * (unit + 1)]:
            key, row = FEATURE_KEYS[(unit - 1) // self.record.rows], (unit - 1) % self.record.rows
            raise ShardError(f"{self.path} does not match its checksum (row {row} of {key}: corrupt)")
        self.verified[unit] = True

    def verify_rows(self, rows: Iterable[int], keys: Sequence[str] = FEATURE_KEYS) -> None:
        """Check the parts of these rows that have not been checked yet."""
        for unit, part in self.unverified(rows, keys):
            self.check(unit, _digest(part))

    def verify_all(self) -> None:
        self.verify_rows(range(self.record.rows))


class ShardReader:
    """Rows of the shards of one index folder, gathered and verified on first use. ``record_of(name)`` gives the
    record written for a shard (the store's)."""

    def __init__(self, folder: Path, record_of) -> None:
        self.folder, self.record_of = folder, record_of
        self.shards: dict[str, _MappedShard] = {}

    def shard(self, name: str) -> _MappedShard:
        """The mapped shard ``name`` (opened and its header checked on first use)."""
        self._open([name])
        return self.shards[name]

    def _open(self, names: Iterable[str]) -> None:
        """Map the shards not open yet, all of them before any header is read (their reads overlap), then check each
        header."""
        mapped = []
        for name in dict.fromkeys(n for n in names if n not in self.shards):
            record = self.record_of(name)
            if record is None:
                raise ShardError(f"shard {name!r} is not recorded in the index")
            mapped.append((name, _MappedShard(self.folder / SHARDS / name, record)))
        for name, shard in mapped:
            self.shards[name] = shard.load()

    def gather(
        self, locations: Sequence[tuple[str, int, str]], keys: Sequence[str] = FEATURE_KEYS
    ) -> dict[str, Tensor]:
        """The rows at ``locations`` (shard, row, the entry id expected there), in that order: ``video`` [N,D] and
        ``frames`` [N,T,D] as float32, ``frame_mask`` [N,T] bool; only ``keys``. Raises ``ShardError`` when a shard
        or a row does not match what was written, or a row holds another entry."""
        by_shard: dict[str, list[int]] = {}
        for position, (name, _, _) in enumerate(locations):
            by_shard.setdefault(name, []).append(position)
        self._open(by_shard)
        todo: list[tuple[_MappedShard, int, np.ndarray]] = []  # parts to verify before any row is returned
        chosen: list[tuple[_MappedShard, np.ndarray, list[int]]] = []
        for name, positions in by_shard.items():
            shard = self.shards[name]
            rows = np.array([locations[p][1] for p in positions], dtype=np.int64)
            if len(rows) and (rows.min() < 0 or rows.max() >= shard.record.rows):
                raise ShardError(f"{shard.path} has no row {int(rows.max())}")
            for p, row in zip(positions, rows.tolist(), strict=True):
                if shard.ids[row] != locations[p][2]:
                    raise ShardError(f"row {row} of {shard.path} holds another moment than the index says")
            todo.extend((shard, unit, part) for unit, part in shard.unverified(rows, keys))
            chosen.append((shard, rows, positions))
        # every part is checked before anything is copied. The kernel is asked for the large parts first (a cold
        # page cache then reads them in parallel), and each is hashed here: on a page cache that holds them, a pool
        # of hashing threads cost more in hand-offs than it saved (1M moments: 15-16 ms a query serially vs 17-19)
        for shard, unit, part in todo:
            if part.nbytes >= mmap.PAGESIZE:  # the small ones lie in pages of the large ones or of the header
                shard.prefetch(unit)
        for shard, unit, part in todo:
            shard.check(unit, _digest(part))
        parts: dict[str, list[np.ndarray]] = {k: [shard.arrays[k][rows] for shard, rows, _ in chosen] for k in keys}
        order = [p for _, _, positions in chosen for p in positions]
        inverse = np.empty(len(order), dtype=np.int64)
        inverse[np.array(order, dtype=np.int64)] = np.arange(len(order))
        out = {}
        for key in keys:
            joined = np.concatenate(parts[key]) if parts[key] else np.zeros((0,), np.float32)
            tensor = torch.from_numpy(np.ascontiguousarray(joined[inverse])) if len(order) else torch.from_numpy(joined)
            out[key] = tensor.bool() if key == "frame_mask" else tensor.float()
        return out

    def verify(self, name: str) -> None:
        """Check every byte of one shard (``index --verify``)."""
        self.shard(name).verify_all()
