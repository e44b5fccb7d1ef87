"""Indexing on several GPUs or nodes through Lightning: ``Trainer.predict`` under DDP, each rank decoding and
encoding its share of the videos into its own shards, rank 0 merging them into one published version.

    xclip-lightning index --model M --videos V --out I --devices 4                 # 4 GPUs of one machine
    xclip-lightning index --model M --videos V --out I --devices 8 --num-nodes 2   # torchrun / SLURM, shared disk

Rank 0 takes the writer lock and plans the update (what is kept, what to encode) and broadcasts the plan; rank r
encodes the videos ``todo[r::world]`` with the same encoder as one process (``encode.Encoder``), writing immutable
shards and thumbnails into the index folder and its progress into ``parts/<rank>.json`` (only rank 0 touches the
database); after a barrier rank 0 publishes every part as one version (then compacts, updates the approximate first
stage, removes the parts). Nothing is published before the merge: a killed multi-process build leaves the previous
version, and the next multi-process build first publishes what the parts hold (what agrees with its shards and
whose video is unchanged and whole), then encodes the rest. Every node must see the same index folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import lightning as L
import torch

from xclip_lightning.index.encode import Encoder, loader
from xclip_lightning.index.plan import Plan, Update
from xclip_lightning.index.records import BuildReport, IndexEntry
from xclip_lightning.index.shards import ShardRecord, fsync_write, shard_digests
from xclip_lightning.index.store import PARTS, SHARDS, THUMBS, IndexStore, own_files, writer_lock
from xclip_lightning.index.writer import IndexWriter, RowBuffer
from xclip_lightning.model.xclip import XCLIP


class _PartWriter(RowBuffer):
    """A rank's writer: shards and thumbnails as one process writes them, but what it finished goes to
    ``parts/<rank>.json``, which only rank 0 merges (a rank never touches the database or deletes files; rank 0
    records the files when it merges)."""

    def __init__(self, folder: Path, rank: int, dtype: torch.dtype, flush_every: int) -> None:
        super().__init__(folder, dtype, flush_every)
        self.part = folder / PARTS / f"{rank}.json"
        self.entries: list[IndexEntry] = []
        self.shards: list[ShardRecord] = []

    def flush(self) -> None:
        """Write the pending rows as one shard and record every shard and entry of this rank in its part file."""
        shards, entries = self.write_pending()
        self.shards += shards
        self.entries += entries
        self.part.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.part.with_name(f".{self.part.name}.tmp")
        shards = [{**asdict(s), "digests": s.digests.hex()} for s in self.shards]
        fsync_write(tmp, json.dumps({"entries": [asdict(e) for e in self.entries], "shards": shards,
                                     "failures": self.failures}).encode())  # fmt: skip
        os.replace(tmp, self.part)
        self.published_at = time.monotonic()


def _read_parts(folder: Path) -> tuple[list[IndexEntry], list[ShardRecord], dict[str, str]]:
    """What the part files hold, keeping only shards whose bytes match their record."""
    entries, shards, failures = [], [], {}
    for part in sorted(own_files(folder, PARTS)):
        if part.name.startswith("."):
            continue
        try:
            record = json.loads(part.read_text())
            records = [ShardRecord(**{**s, "digests": bytes.fromhex(s["digests"])}) for s in record["shards"]]
            good = {s.name for s in records if shard_digests(folder / SHARDS / s.name) == s.digests}
            entries += [e for e in (IndexEntry(**e) for e in record["entries"]) if e.shard in good]
            shards += [s for s in records if s.name in good]
            failures.update(record["failures"])
        except (OSError, ValueError, KeyError, TypeError):
            continue  # unreadable: its videos are encoded again
    return entries, shards, failures


def _publish_parts(store: IndexStore, plan: Plan, update: Update, only_whole: bool) -> tuple[Plan, dict[str, str]]:
    """Publish what the part files hold as one version (with ``only_whole``, a killed build's: only videos still
    unchanged and whole), remove the part files; the plan without the videos published."""
    entries, shards, failures = _read_parts(store.folder)
    todo = {str(p): p for p in plan.todo}
    by_video: dict[str, list[IndexEntry]] = {}
    for e in entries:
        by_video.setdefault(e.path, []).append(e)
    added = []
    for path, moments in by_video.items():
        stat = Path(path).stat() if Path(path).is_file() else None
        whole = (
            stat is not None
            and all((e.size, e.mtime_ns) == (stat.st_size, stat.st_mtime_ns) for e in moments)
            and sorted(e.moment for e in moments) == list(range(moments[0].moments))
        )
        if (whole or not only_whole) and path in todo:
            added += moments
            todo.pop(path)
    failures = {} if only_whole else {p: r for p, r in failures.items() if p in todo}
    live = {e.shard for e in added}
    store.record_files([f"{SHARDS}/{s.name}" for s in shards] + [f"{THUMBS}/{e.id}.jpg" for e in added])
    if added:
        store.publish(added=added, shards=[s for s in shards if s.name in live], drop_paths=failures, failures=failures,
                      meta=update.meta())  # fmt: skip
    for part in own_files(store.folder, PARTS):
        part.unlink()
    for name in {s.name for s in shards} - live:  # shards of videos that changed since: never published
        (store.folder / SHARDS / name).unlink(missing_ok=True)
    return replace(plan, todo=list(todo.values())), failures


class IndexingTask(L.LightningModule):
    """The update of one index as a Lightning predict run (see the module docstring)."""

    def __init__(self, model: XCLIP, update: Update) -> None:
        super().__init__()
        self.model, self.update, self.out = model, update, update.out
        self.plan: Plan | None = None
        self.report = BuildReport()

    def setup(self, stage: str) -> None:
        """Rank 0 locks, opens and plans the update; every rank takes its share (or rank 0's error)."""
        self._lock = contextlib.ExitStack()
        plan: Any = None
        if self.global_rank == 0:
            try:
                self._lock.enter_context(writer_lock(self.out))
                self.store = self._lock.enter_context(contextlib.closing(self.update.open_store()))
                plan, _ = _publish_parts(self.store, self.update.plan(self.store), self.update, only_whole=True)
            except Exception as err:  # every rank stops with rank 0's reason (a busy index, another model ...)
                self._lock.close()
                plan = err
        self.plan = self.trainer.strategy.broadcast(plan, src=0)
        if isinstance(self.plan, Exception):
            raise self.plan
        self.todo = self.plan.todo[self.global_rank :: self.trainer.world_size]

    def predict_dataloader(self):
        """This rank's videos, decoded in DataLoader workers."""
        return loader(self.todo, self.update, self.device.type == "cuda")

    def transfer_batch_to_device(self, batch: Any, device: Any, dataloader_idx: int) -> Any:
        """Left on the CPU: the encoder moves each batch of moments itself."""
        return batch

    def on_predict_start(self) -> None:
        """This rank's part writer and encoder."""
        dtype = getattr(torch, self.update.dtype)
        self.writer = _PartWriter(self.out, self.global_rank, dtype, self.update.flush_every)
        self.encoder = Encoder(self.model, self.update, self.writer)

    def predict_step(self, item: dict, batch_idx: int) -> None:
        """Encode one decoded video's moments."""
        self.encoder.add(self.todo[item["index"]], item)

    def on_predict_end(self) -> None:
        """Flush this rank's part; rank 0 publishes every part as one version and finishes the update."""
        self.encoder.finish()
        self.writer.flush()
        self.trainer.strategy.barrier()
        report = None
        if self.global_rank == 0:
            try:
                _, failures = _publish_parts(self.store, self.plan, self.update, only_whole=False)
                writer = IndexWriter(self.store, getattr(torch, self.update.dtype), self.update.flush_every,
                                     self.plan.gone, self.update.meta())  # fmt: skip
                writer.failures, writer.reported = failures, set(failures)
                writer.finish(self.update.videos, self.update.approximate)
                report = BuildReport(len(self.plan.todo) - len(failures), len(self.plan.gone), failures,
                                     self.plan.unreadable)  # fmt: skip
            finally:
                self._lock.close()
        self.report = self.trainer.strategy.broadcast(report, src=0)


def build_distributed(model: XCLIP, update: Update, device: str, devices: int, num_nodes: int) -> BuildReport:
    """Run ``update`` under DDP; returns what was done (with this process's rank)."""
    accelerator = "cpu" if device == "cpu" else ("gpu" if device != "auto" else "auto")
    task = IndexingTask(model.cpu(), update)
    trainer = L.Trainer(
        accelerator=accelerator,
        devices=devices,
        num_nodes=num_nodes,
        strategy="ddp",
        use_distributed_sampler=False,  # the videos are split by rank here, without the padding duplicates
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.predict(task, return_predictions=False)
    return replace(task.report, rank=trainer.global_rank)
