"""Decode each video once: sampled, resized and cropped uint8 frames in a memory-mapped store.

The official pipeline has no augmentation, so the frames a video gives never change: ``FrameCache.build`` decodes
every video in a process pool (with a progress bar) and ``FrameCache.load`` memory-maps the result. The store is
keyed by the sampler settings, so changing fps, max_frames, mode or the image size builds a new one:

    <root>/fps1-frames12-timestamp-224px-v3/
        <entry>.npy    uint8 [T,3,S,S], the T valid frames of one video (no padding)
        <entry>.json   written last: timestamps [T], source path, size, mtime, the .npy's byte size, shape and
                       SHA-256 digest, and a digest of this metadata itself. An entry is readable only once this
                       file exists; both are written to a temporary name and renamed
        <entry>.error  a video that gave no frame: its reason (reported, never cached as zeros)

An interrupted build resumes where it stopped; an entry whose source file changed (size or mtime), whose metadata
does not match its digest (edited timestamps, a truncated JSON), or whose ``.npy`` is missing, not the size its
metadata records, or has another header (shape, dtype) is rebuilt: these checks read the metadata and the first
bytes of each ``.npy`` (``prepare_data`` runs them for every video). The frames themselves are checked against
their digest the first time a process reads the entry (``frames_array``; about 1.2 ms per 12-frame 224 px entry here,
once per entry and process: each epoch's DataLoader workers check again), so flipped pixels or a ``.npy`` swapped
with another entry's are never returned: the read fails naming the file, and drops the entry's metadata so that the
next ``prepare_data`` rebuilds it. Temporary files of a killed build are removed by the next one. Worker processes
exit when their parent dies, and an interrupt (Ctrl-C) stops the build at once, keeping the finished entries.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import multiprocessing
import os
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from xclip_lightning.data.video import SamplingMode, sample_frames
from xclip_lightning.errors import UserError
from xclip_lightning.inputs.transforms import Resize, resizer

CACHE_VERSION = 3  # bump when the stored layout or the sampler's output changes (3: digests in the metadata)
PARENT_CHECK_SECONDS = 1.0  # how often a cache worker checks that its parent is alive


class FrameCacheError(UserError, RuntimeError):
    """A cache entry that cannot be read: names the file and how to repair it."""


@dataclass(frozen=True)
class SamplerSettings:
    """What the cached frames depend on."""

    fps: float = 1.0
    max_frames: int = 12
    mode: SamplingMode = "timestamp"
    image_size: int = 224
    resize: Resize = "crop"  # CLIP's resize + center crop; SigLIP's "squash" (the whole frame to S x S)

    @property
    def key(self) -> str:
        size = f"{self.image_size}px" + ("" if self.resize == "crop" else f"-{self.resize}")
        return f"fps{self.fps:g}-frames{self.max_frames}-{self.mode}-{size}-v{CACHE_VERSION}"


class VideoSource(NamedTuple):
    """A video file and the part of it to sample: [0, end_time) seconds, the whole video when None."""

    path: Path
    end_time: float | None = None


class CachedFrames(NamedTuple):
    frames: Tensor  # uint8 [T,3,S,S]
    timestamps: Tensor  # float64 [T] seconds from the first decodable frame


def decode_video(source: VideoSource, settings: SamplerSettings) -> CachedFrames:
    """Sample, resize and crop one video (no cache): the on-the-fly path and the cache's worker."""
    resize = resizer(settings.image_size, settings.resize)  # per frame, as decoded: memory holds S x S frames only
    sampled = sample_frames(
        source.path, settings.fps, settings.max_frames, settings.mode, source.end_time, transform=resize
    )
    return CachedFrames(sampled.frames, sampled.timestamps)


@functools.lru_cache(maxsize=1 << 20)
def _entry_name(source: VideoSource) -> str:
    readable = re.sub(r"[^A-Za-z0-9_.-]", "_", source.path.stem)[:60]
    digest = hashlib.sha1(f"{source.path.resolve()}|{source.end_time}".encode()).hexdigest()[:16]
    return f"{readable}-{digest}"


def _fingerprint(path: Path) -> dict[str, int]:
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _write_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary name, then rename: a reader never sees a half-written file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _remove_stale_temporaries(folder: Path) -> int:
    """Delete ``.<name>.<pid>.tmp`` files whose writer is no longer running (a killed build); returns the count."""
    removed = 0
    for tmp in folder.glob(".*.tmp"):
        pid = tmp.name.rsplit(".", 2)[-2]
        if pid.isdigit() and not _pid_alive(int(pid)):
            tmp.unlink(missing_ok=True)
            removed += 1
    return removed


def pool_worker_init(parent: int) -> None:
    """Cache (and check-data) workers: one thread each, and exit as soon as the parent is gone (killed, or
    crashed): an orphaned pool worker would otherwise wait on its task queue forever, holding its memory."""
    torch.set_num_threads(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_CHECK_SECONDS)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _digest(data: bytes | memoryview) -> str:
    """An entry's digest: SHA-256 (with the CPU's SHA instructions the fastest hashlib offers here: 1.2 ms for a
    12-frame 224 px entry, BLAKE2b 2.2 ms), 128 bits kept."""
    return hashlib.sha256(data).hexdigest()[:32]


def _sealed(meta: dict) -> dict:
    """``meta`` with the digest of its own content (every key but this one, canonical JSON)."""
    return {**meta, "meta_digest": _digest(json.dumps(meta, sort_keys=True).encode())}


def _unsealed(meta: dict) -> dict | None:
    """``meta`` without its digest when the digest matches, else None (an edited or damaged metadata file)."""
    content = {k: v for k, v in meta.items() if k != "meta_digest"}
    return content if meta.get("meta_digest") == _digest(json.dumps(content, sort_keys=True).encode()) else None


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _build_entry(source: VideoSource, settings: SamplerSettings, folder: Path) -> str | None:
    """Worker: decode one video into its entry; returns the failure reason, or None on success."""
    name = _entry_name(source)
    meta = {"source": str(source.path), "end_time": source.end_time, **_fingerprint(source.path)}
    try:
        frames, timestamps = decode_video(source, settings)
    except Exception as err:  # recorded with its reason and reported; never cached as a zero sample
        reason = f"{type(err).__name__}: {err}"
        for stale in (f"{name}.json", f"{name}.npy"):  # frames of an earlier version of the file: unreadable now
            (folder / stale).unlink(missing_ok=True)
        _write_atomic(folder / f"{name}.error", json.dumps({**meta, "reason": reason}).encode())
        return reason
    npy = _npy_bytes(frames.numpy())
    _write_atomic(folder / f"{name}.npy", npy)
    meta.update(timestamps=timestamps.tolist(), npy_bytes=len(npy), shape=list(frames.shape), npy_digest=_digest(npy))
    _write_atomic(folder / f"{name}.json", json.dumps(_sealed(meta)).encode())
    (folder / f"{name}.error").unlink(missing_ok=True)
    return None


class FrameCache:
    """A memory-mapped store of sampled frames under ``root``, one folder per ``SamplerSettings``."""

    def __init__(self, root: str | os.PathLike, settings: SamplerSettings) -> None:
        self.settings = settings
        self.folder = Path(root) / settings.key
        self._verified: set[str] = set()  # entries whose frames matched their digest in this process

    def _is_current(self, source: VideoSource, suffix: str) -> bool:
        """The entry (``.json``: frames, ``.error``: a failure) exists for this version of the source file, and for
        frames, its metadata matches its digest and the ``.npy`` has the size and the header (shape, dtype) the
        metadata records (truncated, deleted, replaced or damaged-header files are caught without reading frames)."""
        name = _entry_name(source)
        meta_path = self.folder / f"{name}{suffix}"
        if not meta_path.is_file():
            return False
        try:
            meta = json.loads(meta_path.read_text())
            if {k: meta[k] for k in ("size", "mtime_ns")} != _fingerprint(source.path):
                return False
            if suffix != ".json":
                return True
            meta = _unsealed(meta)
            npy = self.folder / f"{name}.npy"
            if meta is None or npy.stat().st_size != meta["npy_bytes"]:
                return False
            with open(npy, "rb") as f:
                version = np.lib.format.read_magic(f)
                if version not in ((1, 0), (2, 0)):
                    return False
                header = (
                    np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                )
                shape, fortran, dtype = header(f)
            return list(shape) == meta["shape"] and dtype == np.uint8 and not fortran
        except (OSError, ValueError, KeyError, TypeError, SyntaxError):
            return False

    def failures(self, sources: Sequence[VideoSource]) -> dict[Path, str]:
        """Videos whose decoding failed in a build: path -> reason."""
        failed = {}
        for source in sources:
            path = self.folder / f"{_entry_name(source)}.error"
            if path.is_file():
                failed[source.path] = json.loads(path.read_text())["reason"]
        return failed

    def build(self, sources: Sequence[VideoSource], workers: int = 4, progress: bool = True) -> dict[Path, str]:
        """Decode every source not yet cached (or changed since); returns the failures, path -> reason."""
        self.folder.mkdir(parents=True, exist_ok=True)
        _remove_stale_temporaries(self.folder)
        todo = [
            s for s in dict.fromkeys(sources) if not self._is_current(s, ".json") and not self._is_current(s, ".error")
        ]
        if not todo:
            return self.failures(sources)
        build = functools.partial(_build_entry, settings=self.settings, folder=self.folder)
        with tqdm(total=len(todo), desc=f"decoding into {self.folder}", unit="video", disable=not progress) as bar:
            if workers <= 1:
                for source in todo:
                    build(source)
                    bar.update()
            else:  # fork is cheap; spawn once CUDA is up (a forked CUDA context is unusable)
                context = multiprocessing.get_context("spawn" if torch.cuda.is_initialized() else None)
                pool = context.Pool(workers, initializer=pool_worker_init, initargs=(os.getpid(),))
                try:
                    for _ in pool.imap_unordered(build, todo):
                        bar.update()
                    pool.close()
                finally:
                    pool.terminate()  # on Ctrl-C or an error: stop now; finished entries are complete on disk
                    pool.join()
        return self.failures(sources)

    def __contains__(self, source: VideoSource) -> bool:
        """A complete, current entry of frames (see ``_is_current``)."""
        return self._is_current(source, ".json")

    def frames_array(self, source: VideoSource) -> np.ndarray:
        """The cached uint8 [T,3,S,S] frames of one video, memory-mapped (read-only): the DataLoader's hot path.
        The first read of an entry in a process checks its bytes against the digest recorded when it was built."""
        name = _entry_name(source)
        path = self.folder / f"{name}.npy"
        try:
            array = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as err:  # deleted, truncated or overwritten since prepare_data checked it
            raise FrameCacheError(
                f"{path} (frames of {source.path}) cannot be read ({type(err).__name__}: {err}): run prepare_data() "
                f"again (Trainer.fit / test do), which rebuilds broken entries"
            ) from err
        if name not in self._verified:
            meta = self._metadata(source)
            if meta.get("npy_digest") != _digest(path.read_bytes()):
                (self.folder / f"{name}.json").unlink(missing_ok=True)  # so that the next prepare_data rebuilds it
                raise FrameCacheError(
                    f"{path} (frames of {source.path}) is not what was cached (its bytes do not match the digest "
                    f"recorded when it was built: damaged, or swapped with another entry): its entry was dropped; run "
                    f"prepare_data() again (Trainer.fit / test do), which rebuilds it"
                )
            self._verified.add(name)
        return array

    def _metadata(self, source: VideoSource) -> dict:
        """An entry's metadata, checked against its digest (``FrameCacheError`` naming the file when it fails)."""
        meta_path = self.folder / f"{_entry_name(source)}.json"
        if not meta_path.is_file():
            raise KeyError(f"{source.path} is not in the frame cache {self.folder}: run prepare_data() (or build())")
        try:
            meta = _unsealed(json.loads(meta_path.read_text()))
        except (OSError, ValueError) as err:
            meta, reason = None, f"{type(err).__name__}: {err}"
        else:
            reason = "it does not match the digest written with it: edited or damaged"
        if meta is None:
            raise FrameCacheError(
                f"{meta_path} (the frame cache's metadata of {source.path}) cannot be used ({reason}): run "
                f"prepare_data() again (Trainer.fit / test do), which rebuilds the entry"
            )
        return meta

    def load(self, source: VideoSource) -> CachedFrames:
        """The cached frames of one video (memory-mapped, then copied into a tensor)."""
        timestamps = torch.tensor(self._metadata(source)["timestamps"], dtype=torch.float64)
        return CachedFrames(torch.from_numpy(np.array(self.frames_array(source))), timestamps)  # a writable copy
