"""Building or updating an index: the settings gathered into an ``Update``, then one process (here) or one per
device under DDP (``distributed.py``); both end with ``IndexWriter.finish``."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch

from xclip_lightning.data.frame_cache import SamplerSettings
from xclip_lightning.index.defaults import DEFAULT_BATCH_SIZE, DEFAULT_WINDOW, DEFAULT_WORKERS
from xclip_lightning.index.encode import encode_videos, load_search_model, model_fingerprint, resolve_device
from xclip_lightning.index.plan import Update, check_destination, model_reference
from xclip_lightning.index.records import BuildReport
from xclip_lightning.index.store import LOCK, VideoIndexError, is_index, remove_unpublished, writer_lock
from xclip_lightning.index.writer import FLUSH_EVERY, IndexWriter
from xclip_lightning.model.xclip import XCLIP

APPROXIMATE_MODES = ("auto", "on", "off")


def build_index(
    model: XCLIP | str | os.PathLike,
    videos: str | os.PathLike,
    out: str | os.PathLike,
    fps: float = 1.0,
    batch_size: int = DEFAULT_BATCH_SIZE,
    workers: int = DEFAULT_WORKERS,
    progress: bool = True,
    flush_every: int = FLUSH_EVERY,
    window: float | None = DEFAULT_WINDOW,
    stride: float | None = None,
    device: str = "auto",
    approximate: str = "auto",
    half: bool = False,
    devices: int = 1,
    num_nodes: int = 1,
    prune: bool = False,
) -> tuple[XCLIP, BuildReport]:
    """Index every video under ``videos`` into ``out`` (see ``VideoIndex.build``); returns the model (on the CPU)
    and what was done."""
    if approximate not in APPROXIMATE_MODES:
        raise ValueError(f"approximate must be one of {APPROXIMATE_MODES}, got {approximate!r}")
    if window is not None and not window > 0:
        raise ValueError(f"window must be a positive number of seconds, or None for one moment per file, got {window}")
    if stride is not None and not (window is not None and stride > 0):
        raise ValueError(f"stride must be a positive number of seconds, with a window, got {stride}")
    if stride is not None and stride >= window:
        stride = None  # windows that do not overlap: the consecutive split
    out, videos = Path(out), Path(videos)
    check_destination(videos, out)
    reference = model_reference(model) if not isinstance(model, XCLIP) else None
    if reference is not None and _looks_like_a_path(reference) and not Path(reference).exists():
        raise VideoIndexError(f"--model {model}: no such folder (give a model folder, or a hub name such as "
                              f"openai/clip-vit-base-patch32)")  # fmt: skip
    model = (load_search_model(reference) if reference is not None else model).eval()
    model.to(resolve_device(device))
    settings = SamplerSettings(
        fps, model.head.max_frames, "timestamp", model.encoders.image_size, model.encoders.resize
    )
    update = Update(
        out, videos.resolve(), model_fingerprint(model), settings, window, "float16" if half else "float32",
        reference, approximate, batch_size, workers, flush_every, prune, stride,
    )  # fmt: skip
    if devices > 1 or num_nodes > 1:
        from xclip_lightning.index.distributed import build_distributed

        report = build_distributed(model, update, device, devices, num_nodes)
    else:
        report = _build_here(model, update, progress)
    return model.cpu(), report  # searching encodes one query at a time: the CPU does it


def _looks_like_a_path(name: str) -> bool:
    """A hub name is ``owner/name``; anything absolute, relative to here, or deeper is a folder."""
    return (
        os.path.isabs(name) or name.startswith((".", "~")) or name.count("/") > 1 or (os.sep != "/" and os.sep in name)
    )


def _build_here(model: XCLIP, update: Update, progress: bool) -> BuildReport:
    out, created = update.out, not update.out.exists()
    try:
        with writer_lock(out):
            store, new = None, not is_index(out)
            try:
                store = update.open_store()
                plan = update.plan(store)
                dtype = getattr(torch, update.dtype)
                writer = IndexWriter(store, dtype, update.flush_every, plan.gone, update.meta())
                encode_videos(model, plan.todo, update, writer, progress)
                writer.finish(update.videos, update.approximate)
            except BaseException:
                if new and (store is None or store.version() == 0):  # a new index that never published: leave nothing
                    if store is not None:
                        store.close()
                    remove_unpublished(out)
                raise
            store.close()
    finally:
        if created and out.is_dir() and {p.name for p in out.iterdir()} <= {LOCK}:
            (out / LOCK).unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                out.rmdir()
    return BuildReport(len(plan.todo) - len(writer.failures), len(plan.gone), writer.failures, plan.unreadable)
