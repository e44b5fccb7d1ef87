"""The video index on disk: immutable feature shards, one manifest that publishes a complete version atomically,
a lock for writers, and checks that the manifest and the feature rows agree.

    <index>/manifest.json               the published version: one entry per moment (path, file version, window
                                        number, start, end, timestamps, thumbnail, shard, row, id), the shards with
                                        their row counts and SHA-256, the model fingerprint, the sampler settings
                                        and window length, the failures
    <index>/shards/<token>.safetensors  video [n,D], frames [n,T,D], frame_mask [n,T]; metadata "ids": the entry
                                        ids of its rows in order. Never modified once written
    <index>/ann/<token>.faiss           optional, large collections: the approximate first stage (``ann.py``) and
    <index>/ann/<token>.keys.npy        the FAISS ids of the moments it holds. Never modified once written
    <index>/thumbs/<id>.jpg             the sampled frames of one entry (the id covers path, size, mtime, window)
    <index>/.lock                       held (flock) by the one process updating the index, with its pid

A writer adds shards and thumbnails, then replaces ``manifest.json`` with one rename: a reader sees the old version
or the new one, never a mix, and a kill at any moment leaves the last published version intact. Files that no
version references any more are deleted only after the new manifest is published, under the lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import secrets
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

INDEX_VERSION = 3  # 2: sharded features, ids checked row by row; 3: one entry per moment (window) of a video
MANIFEST, SHARDS, THUMBS, LOCK, ANN = "manifest.json", "shards", "thumbs", ".lock", "ann"
SHARD_NAME = re.compile(r"^[0-9a-f]{32}\.safetensors$")
ANN_NAME = re.compile(r"^[0-9a-f]{32}\.(faiss|keys\.npy)$")
THUMB_NAME = re.compile(r"^[0-9a-f]{16}\.jpg$")
PART_NAME = re.compile(r"^\.?[0-9]+\.json(\.tmp)?$")
TEMPORARY = re.compile(r"^\.[0-9a-f]{32}\.(safetensors|faiss|keys\.npy)\.tmp$")
MANIFEST_TMP = re.compile(r"^\.manifest\.json\.[0-9]+\.tmp$")
PARTS = "parts"  # a multi-process build's progress, one file per rank (``distributed_index.py``)
OWN_FILES = {  # what the index writes in each of its folders: nothing else there is ever deleted
    SHARDS: (SHARD_NAME, TEMPORARY),
    THUMBS: (THUMB_NAME,),
    ANN: (ANN_NAME, TEMPORARY),
    PARTS: (PART_NAME,),
}
FEATURE_KEYS = ("video", "frames", "frame_mask")
FLUSH_SECONDS = 60.0  # a build publishes what it has encoded at least this often, so a killed build keeps it


class VideoIndexError(ValueError):
    """An index that cannot be used: built by another model or sampler setting, corrupt, or missing files."""


class IndexBusyError(VideoIndexError):
    """Another process is updating the index."""


def entry_id(path: str, size: int, mtime_ns: int, window: int = 0) -> str:
    """Identifies one window of one version of one file: its feature row and its thumbnail carry it."""
    key = f"{path}|{size}|{mtime_ns}" + (f"|{window}" if window else "")
    return hashlib.sha1(key.encode()).hexdigest()[:16]


@contextlib.contextmanager
def writer_lock(folder: Path) -> Iterator[None]:
    """Exclusive right to update ``folder``; a second writer stops at once with a message naming the first."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOCK, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise IndexBusyError(
                f"{folder} is being updated by another `xclip-lightning index` (pid {holder}): wait for it to "
                f"finish, then run again (it will only add what is still missing), or choose another --out"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def fsync_write(path: Path, data: bytes | None = None) -> None:
    """Flush ``path`` (writing ``data`` first when given) to the disk."""
    with open(path, "wb" if data is not None else "rb+") as f:
        if data is not None:
            f.write(data)
        f.flush()
        os.fsync(f.fileno())


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_shard(
    folder: Path, tensors: dict[str, Tensor], ids: list[str], dtype: torch.dtype = torch.float32
) -> tuple[str, dict[str, Any]]:
    """Write one immutable shard (temporary name, fsync, rename); returns its name and manifest record.
    ``dtype``: of the stored features (float16 halves the disk and the page cache a large index needs)."""
    (folder / SHARDS).mkdir(parents=True, exist_ok=True)
    name = f"{secrets.token_hex(16)}.safetensors"
    tmp = folder / SHARDS / f".{name}.tmp"
    data = {k: v.to(dtype).contiguous() for k, v in tensors.items() if k != "frame_mask"}
    data["frame_mask"] = tensors["frame_mask"].to(torch.uint8).contiguous()
    save_file(data, str(tmp), metadata={"ids": json.dumps(ids)})
    fsync_write(tmp)
    os.replace(tmp, folder / SHARDS / name)
    return name, {"rows": len(ids), "sha256": file_sha256(folder / SHARDS / name)}


def publish(folder: Path, manifest: dict[str, Any]) -> None:
    """Make ``manifest`` the index's version, atomically."""
    tmp = folder / f".{MANIFEST}.{os.getpid()}.tmp"
    fsync_write(tmp, json.dumps(manifest, indent=1).encode())
    os.replace(tmp, folder / MANIFEST)
    directory = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST
    if not path.is_file():
        raise VideoIndexError(f"{folder} is not a video index (no {MANIFEST}); build one with `xclip-lightning index`")
    try:
        manifest = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise VideoIndexError(f"{path} is not valid JSON ({err}): delete the index folder and build it again") from err
    if not isinstance(manifest, dict) or manifest.get("format_version") != INDEX_VERSION:
        version = manifest.get("format_version") if isinstance(manifest, dict) else None
        raise VideoIndexError(
            f"{path}: index format {version}, this version of xclip-lightning reads {INDEX_VERSION}: build the index "
            f"again into a new folder"
        )
    return manifest


def shard_ids(folder: Path, name: str) -> list[str]:
    with safe_open(str(folder / SHARDS / name), framework="pt") as f:
        return json.loads((f.metadata() or {}).get("ids", "[]"))


def check(folder: Path, manifest: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    """The manifest's entries that agree with the files, and a description of each that does not.

    An entry agrees when its id is that of its path and file version, its shard is listed and exists with the
    recorded SHA-256 and row count, and the id stored at its row is the entry's id (a swapped, edited or stale
    entry fails); its thumbnail name must be a plain file name of the thumbs folder. Each shard is read once.
    """
    problems: list[str] = []
    valid_shards: dict[str, list[str]] = {}
    for name, record in manifest.get("shards", {}).items():
        path = folder / SHARDS / name
        if not SHARD_NAME.match(name):
            problems.append(f"shard name {name!r} is not a shard file name")
        elif not path.is_file():
            problems.append(f"{path} is missing")
        elif file_sha256(path) != record.get("sha256"):
            problems.append(f"{path} does not match its checksum (corrupt or half-written)")
        else:
            ids = shard_ids(folder, name)
            if len(ids) != record.get("rows"):
                problems.append(f"{path} holds {len(ids)} rows, the manifest says {record.get('rows')}")
            else:
                valid_shards[name] = ids
    good, seen = [], set()
    for i, entry in enumerate(manifest.get("entries", [])):
        try:
            ids, row = valid_shards.get(entry["shard"]), entry["row"]
            if entry["id"] != entry_id(entry["path"], entry["size"], entry["mtime_ns"], entry["window"]):
                problem = "its id is not that of its path, file version and window"
            elif ids is None:
                problem = f"its shard {entry['shard']!r} is not usable"
            elif not (isinstance(row, int) and 0 <= row < len(ids)) or ids[row] != entry["id"]:
                problem = f"row {row} of its shard holds another video"
            elif entry["id"] in seen:
                problem = "it is listed twice"
            elif not THUMB_NAME.match(str(entry["thumbnail"])):
                problem = f"its thumbnail {entry['thumbnail']!r} is not a file name of {THUMBS}/"
            else:
                seen.add(entry["id"])
                good.append(entry)
                continue
        except (KeyError, TypeError):
            problem = "a key is missing or malformed"
        problems.append(f"entry {i} ({entry.get('path', '?') if isinstance(entry, dict) else entry!r}): {problem}")
    return good, problems


def check_ann(folder: Path, manifest: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    """(the approximate index's record when its files are there and match their checksums, else a problem)."""
    record = manifest.get("ann")
    if not record:
        return None, None
    try:
        for name, digest in zip(record["files"], record["sha256"], strict=True):
            path = folder / ANN / name
            if not ANN_NAME.match(name):
                return None, f"approximate index file name {name!r} is not one"
            if not path.is_file() or file_sha256(path) != digest:
                return None, f"{path} is missing or does not match its checksum"
    except (KeyError, TypeError, ValueError):
        return None, "the approximate index's record is malformed"
    return record, None


def write_ann(folder: Path, index: Any, keys: np.ndarray, write_index) -> dict[str, Any]:
    """Write the approximate index (``write_index(index, path)``) and its ids as two immutable files; their record."""
    (folder / ANN).mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(16)
    names = [f"{token}.faiss", f"{token}.keys.npy"]
    tmp = [folder / ANN / f".{name}.tmp" for name in names]
    write_index(index, str(tmp[0]))
    with open(tmp[1], "wb") as f:
        np.save(f, keys.astype(np.int64))
    for t, name in zip(tmp, names, strict=True):
        fsync_write(t)
        os.replace(t, folder / ANN / name)
    return {"files": names, "sha256": [file_sha256(folder / ANN / n) for n in names], "rows": len(keys)}


def load_features(
    folder: Path, entries: list[dict[str, Any]], keys: tuple[str, ...] = FEATURE_KEYS
) -> dict[str, Tensor]:
    """The feature rows of ``entries``, in their order: video [N,D], frames [N,T,D] (float32 whatever the stored
    dtype), frame_mask [N,T] bool; only ``keys``."""
    by_shard: dict[str, list[int]] = {}
    for position, entry in enumerate(entries):
        by_shard.setdefault(entry["shard"], []).append(position)
    parts: dict[str, list[Tensor]] = {k: [] for k in keys}
    order: list[int] = []
    for name, positions in by_shard.items():
        rows = torch.tensor([entries[p]["row"] for p in positions])
        with safe_open(str(folder / SHARDS / name), framework="pt") as f:
            for key in keys:
                parts[key].append(f.get_tensor(key)[rows])
        order.extend(positions)
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order, dtype=torch.long)] = torch.arange(len(order))
    features = {k: torch.cat(v)[inverse] for k, v in parts.items()}
    for key in features:
        features[key] = features[key].bool() if key == "frame_mask" else features[key].float()
    return features


_NUMPY_DTYPES = {"F32": np.float32, "F16": np.float16, "U8": np.uint8}


def _mapped_tensors(path: Path) -> dict[str, np.ndarray]:
    """The tensors of a safetensors file as read-only memory maps (the format: an 8-byte little-endian header
    length, a JSON header with each tensor's dtype, shape and byte offsets, then the data)."""
    with open(path, "rb") as f:
        length = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(length))
    mapped = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        dtype = _NUMPY_DTYPES[info["dtype"]]
        count = (end - begin) // np.dtype(dtype).itemsize
        data = np.memmap(path, dtype=dtype, mode="r", offset=8 + length + begin, shape=(count,))
        mapped[key] = data.view(np.ndarray).reshape(info["shape"])  # a plain view: indexing it skips memmap's wrapping
    return mapped


class MappedRows:
    """One feature of every entry, read from the memory-mapped shards only for the rows asked for: what a large
    index ranks with (the page cache holds the hot rows; the process holds only the K candidates it re-scores).
    ``rows[t]`` for a LongTensor ``t`` gathers like a tensor (float32, frame_mask bool)."""

    def __init__(self, maps: dict[str, dict[str, np.ndarray]], entries: list[dict[str, Any]], key: str) -> None:
        names = sorted({e["shard"] for e in entries})
        self.arrays = [maps[n][key] for n in names]
        shard_number = {n: i for i, n in enumerate(names)}
        self.shard = np.array([shard_number[e["shard"]] for e in entries], dtype=np.int64)
        self.row = np.array([e["row"] for e in entries], dtype=np.int64)
        self.key = key
        self.shape = (len(entries), *self.arrays[0].shape[1:])
        self.device = torch.device("cpu")

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: Tensor) -> Tensor:
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        shards, local = self.shard[rows], self.row[rows]
        if len(self.arrays) == 1:
            out = self.arrays[0][local]
        else:
            out = np.empty((len(rows), *self.shape[1:]), dtype=self.arrays[0].dtype)
            for s in np.unique(shards):
                where = np.nonzero(shards == s)[0]
                out[where] = self.arrays[s][local[where]]
        tensor = torch.from_numpy(out)
        return tensor.bool() if self.key == "frame_mask" else tensor.float()


def mapped_features(folder: Path, entries: list[dict[str, Any]]) -> dict[str, MappedRows]:
    maps = {name: _mapped_tensors(folder / SHARDS / name) for name in {e["shard"] for e in entries}}
    return {key: MappedRows(maps, entries, key) for key in FEATURE_KEYS}


def own_files(folder: Path, subfolder: str) -> Iterator[Path]:
    """The files of ``folder/subfolder`` that an index writes (by name); a user's file there is never listed."""
    patterns = OWN_FILES[subfolder]
    if (folder / subfolder).is_dir():
        for path in (folder / subfolder).iterdir():
            if any(p.match(path.name) for p in patterns) and not path.is_symlink() and path.is_file():
                yield path


def foreign_files(folder: Path) -> list[Path]:
    """Files and folders in ``folder`` that no index writes: a folder holding any is not an index (or not only)."""
    foreign = []
    for path in folder.iterdir():
        if path.name in OWN_FILES and path.is_dir() and not path.is_symlink():
            mine = set(own_files(folder, path.name))
            foreign.extend(p for p in path.iterdir() if p not in mine)
        elif path.name not in (MANIFEST, LOCK) and not MANIFEST_TMP.match(path.name):
            foreign.append(path)
    return sorted(foreign)


def remove_unpublished(folder: Path) -> None:
    """Delete what a build that never published wrote into ``folder`` (only the index's own files and folders)."""
    for subfolder in OWN_FILES:
        for path in own_files(folder, subfolder):
            path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # not empty: something else is there, and stays
            (folder / subfolder).rmdir()
    for path in folder.iterdir():
        if MANIFEST_TMP.match(path.name):
            path.unlink(missing_ok=True)


def collect_garbage(folder: Path, manifest: dict[str, Any]) -> None:
    """Delete the index's own shards, thumbnails and temporary files that the published ``manifest`` does not
    reference (writer only). Files of other names, a user's, are never touched."""
    referenced = {
        SHARDS: set(manifest["shards"]),
        THUMBS: {e["thumbnail"] for e in manifest["entries"]},
        ANN: set(manifest["ann"]["files"]) if manifest.get("ann") else set(),
    }
    for subfolder, keep in referenced.items():
        for path in own_files(folder, subfolder):
            if path.name not in keep:
                path.unlink(missing_ok=True)
    for path in folder.glob(f".{MANIFEST}.*.tmp"):
        path.unlink(missing_ok=True)


class IndexWriter:
    """Publishes the versions of one index during a build: the entries kept from the previous version plus those
    encoded so far, their features written a shard at a time (so memory holds at most one shard)."""

    def __init__(self, folder: Path, header: dict[str, Any], kept: list[dict[str, Any]], shards: dict) -> None:
        self.folder, self.header = folder, header
        self.entries = {e["id"]: e for e in kept}
        self.shards = shards
        self.failures: dict[str, str] = {}
        self.pending: list[tuple[dict[str, Any], dict[str, Tensor]]] = []
        self.published_at = time.monotonic()
        self.ann: dict[str, Any] | None = None  # the approximate first stage's record, when the index has one
        self.dtype = getattr(torch, header.get("feature_dtype", "float32"))

    def add_video(self, rows: list[tuple[dict[str, Any], dict[str, Tensor]]], flush_every: int) -> None:
        """Add every moment of one video (entry, feature row) together: a version never holds part of a video."""
        self.pending.extend(rows)
        if len(self.pending) >= flush_every or time.monotonic() - self.published_at > FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        """Write the pending rows as one shard, then publish the version that includes them."""
        if self.pending:
            tensors = {k: torch.stack([f[k] for _, f in self.pending]) for k in FEATURE_KEYS}
            name, record = write_shard(self.folder, tensors, [e["id"] for e, _ in self.pending], self.dtype)
            self.shards[name] = record
            for row, (entry, _) in enumerate(self.pending):
                self.entries[entry["id"]] = {**entry, "shard": name, "row": row}
            self.pending = []
        self.publish()

    def publish(self) -> None:
        live = Counter(e["shard"] for e in self.entries.values())
        manifest = {
            **self.header,
            "built": time.strftime("%Y-%m-%d %H:%M:%S"),
            "shards": {n: r for n, r in self.shards.items() if live[n]},
            "entries": list(self.entries.values()),
            "failures": self.failures,
            "ann": self.ann,
        }
        publish(self.folder, manifest)
        collect_garbage(self.folder, manifest)
        self.published_at = time.monotonic()

    def compact(self) -> None:
        """Rewrite the shards that are mostly rows of deleted or changed videos, then publish."""
        live = Counter(e["shard"] for e in self.entries.values())
        for name, record in list(self.shards.items()):
            if 0 < live[name] < record["rows"] / 2:
                moved = [e for e in self.entries.values() if e["shard"] == name]
                features = load_features(self.folder, moved)
                for i, entry in enumerate(moved):
                    self.pending.append((entry, {k: features[k][i] for k in FEATURE_KEYS}))
        self.flush()
