"""Decode each video once: sampled, resized and cropped uint8 frames in a memory-mapped store.

The official pipeline has no augmentation, so the frames a video gives never change: ``FrameCache.build`` decodes
every video in a process pool (with a progress bar) and ``FrameCache.load`` memory-maps the result. The store is
keyed by the sampler settings, so changing fps, max_frames, mode or the image size builds a new one:

    <root>/fps1-frames12-timestamp-224px-v2/
        <entry>.npy    uint8 [T,3,S,S], the T valid frames of one video (no padding)
        <entry>.json   written last: timestamps [T], source path, size, mtime, and the .npy's byte size. An entry
                       is readable only once this file exists; both are written to a temporary name and renamed
        <entry>.error  a video that gave no frame: its reason (reported, never cached as zeros)

An interrupted build resumes where it stopped; an entry whose source file changed (size or mtime), or whose
``.npy`` is missing or not the size its metadata records (truncated, deleted, replaced), is rebuilt. Temporary
files of a killed build are removed by the next one. Worker processes exit when their parent dies, and an
interrupt (Ctrl-C) stops the build at once, keeping the finished entries.
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
from xclip_lightning.inputs.transforms import resize_crop

CACHE_VERSION = 2  # bump when the stored layout or the sampler's output changes (2: .npy size in the metadata)
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

    @property
    def key(self) -> str:
        return f"fps{self.fps:g}-frames{self.max_frames}-{self.mode}-{self.image_size}px-v{CACHE_VERSION}"


class VideoSource(NamedTuple):
    """A video file and the part of it to sample: [0, end_time) seconds, the whole video when None."""

    path: Path
    end_time: float | None = None


class CachedFrames(NamedTuple):
    frames: Tensor  # uint8 [T,3,S,S]
    timestamps: Tensor  # float64 [T] seconds from the first decodable frame


def decode_video(source: VideoSource, settings: SamplerSettings) -> CachedFrames:
    """Sample, resize and crop one video (no cache): the on-the-fly path and the cache's worker."""
    resize = resize_crop(settings.image_size)  # per frame, as it is decoded: memory stays that of S x S frames
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


def _worker_init(parent: int) -> None:
    """Cache workers: one thread each, and exit as soon as the parent is gone (killed, or crashed): an orphaned
    pool worker would otherwise wait on its task queue forever, holding its memory."""
    torch.set_num_threads(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_CHECK_SECONDS)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


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
    meta.update(timestamps=timestamps.tolist(), npy_bytes=len(npy))
    _write_atomic(folder / f"{name}.json", json.dumps(meta).encode())
    (folder / f"{name}.error").unlink(missing_ok=True)
    return None


class FrameCache:
    """A memory-mapped store of sampled frames under ``root``, one folder per ``SamplerSettings``."""

    def __init__(self, root: str | os.PathLike, settings: SamplerSettings) -> None:
        self.settings = settings
        self.folder = Path(root) / settings.key

    def _is_current(self, source: VideoSource, suffix: str) -> bool:
        """The entry (``.json``: frames, ``.error``: a failure) exists for this version of the source file, and for
        frames, the ``.npy`` has the size its metadata records (one stat: truncated or deleted files are caught)."""
        name = _entry_name(source)
        meta_path = self.folder / f"{name}{suffix}"
        if not meta_path.is_file():
            return False
        try:
            meta = json.loads(meta_path.read_text())
            if {k: meta[k] for k in ("size", "mtime_ns")} != _fingerprint(source.path):
                return False
            return suffix != ".json" or (self.folder / f"{name}.npy").stat().st_size == meta["npy_bytes"]
        except (OSError, ValueError, KeyError):
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
                pool = context.Pool(workers, initializer=_worker_init, initargs=(os.getpid(),))
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
        """The cached uint8 [T,3,S,S] frames of one video, memory-mapped (read-only): the DataLoader's hot path."""
        path = self.folder / f"{_entry_name(source)}.npy"
        try:
            return np.load(path, mmap_mode="r")
        except (OSError, ValueError) as err:  # deleted, truncated or overwritten since prepare_data checked it
            raise FrameCacheError(
                f"{path} (frames of {source.path}) cannot be read ({type(err).__name__}: {err}): run prepare_data() "
                f"again (Trainer.fit / test do), which rebuilds broken entries"
            ) from err

    def load(self, source: VideoSource) -> CachedFrames:
        """The cached frames of one video (memory-mapped, then copied into a tensor)."""
        name = _entry_name(source)
        meta_path = self.folder / f"{name}.json"
        if not meta_path.is_file():
            raise KeyError(f"{source.path} is not in the frame cache {self.folder}: run prepare_data() (or build())")
        timestamps = torch.tensor(json.loads(meta_path.read_text())["timestamps"], dtype=torch.float64)
        return CachedFrames(torch.from_numpy(np.array(self.frames_array(source))), timestamps)  # a writable copy
