"""Indexing on several GPUs or nodes through Lightning: ``Trainer.predict`` under DDP, each rank decoding and
encoding its share of the videos into its own shards, rank 0 merging them into one published version.

    xclip-lightning index --model M --videos V --out I --devices 4                 # 4 GPUs of one machine
    xclip-lightning index --model M --videos V --out I --devices 8 --num-nodes 2   # torchrun / SLURM, shared disk

Rank 0 takes the writer lock and plans the update (what is kept, what to encode) and broadcasts the plan; rank r
encodes the videos ``todo[r::world]`` with the same encoder as one process (``encode.Encoder``), writing immutable
shards and thumbnails into the index folder and its progress into ``parts/<rank>.json``; after a barrier rank 0
publishes the kept moments plus every part as one version (then compacts, updates the approximate first stage,
removes the parts). Nothing is published before the merge: a killed multi-process build leaves the previous
version, and the next multi-process build resumes from the parts (what agrees with its shards and whose video is
unchanged is kept, the rest encoded). Every node must see the same index folder.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

import lightning as L

from xclip_lightning.index.encode import Encoder, loader
from xclip_lightning.index.plan import Plan, Update, unchanged
from xclip_lightning.index.store import PARTS, IndexWriter, check, fsync_write, own_files, writer_lock
from xclip_lightning.model.xclip import XCLIP


class _PartWriter(IndexWriter):
    """A rank's writer: shards and thumbnails as usual, but its 'version' is ``parts/<rank>.json``, which only
    rank 0 merges (a rank never publishes the manifest or deletes files)."""

    def __init__(self, folder: Path, header: dict[str, Any], rank: int) -> None:
        super().__init__(folder, header, [], {})
        self.part = folder / PARTS / f"{rank}.json"

    def publish(self) -> None:
        self.part.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.part.with_name(f".{self.part.name}.tmp")
        fsync_write(
            tmp,
            json.dumps(
                {"entries": list(self.entries.values()), "shards": self.shards, "failures": self.failures}
            ).encode(),
        )
        os.replace(tmp, self.part)


def _resume(folder: Path, plan: Plan) -> Plan:
    """Take into ``plan`` what the ranks of a killed multi-process build had finished (their part files), where
    it still agrees with its shards and its video is unchanged and complete; then remove the part files (their
    shards are now the plan's)."""
    parts = sorted((folder / PARTS).glob("*.json")) if (folder / PARTS).is_dir() else []
    finished: list[dict[str, Any]] = []
    shards: dict[str, Any] = {}
    for part in parts:
        try:
            record = json.loads(part.read_text())
            good, _ = check(folder, {"shards": record["shards"], "entries": record["entries"]})
        except (OSError, ValueError, KeyError, TypeError):
            continue  # unreadable: its videos are encoded again
        finished.extend(good)
        shards.update({e["shard"]: record["shards"][e["shard"]] for e in good})
    if finished:
        resumed, todo = unchanged(finished, plan.todo)
        plan.kept.extend(resumed)
        plan.shards.update({e["shard"]: shards[e["shard"]] for e in resumed})
        plan.todo = todo
    (folder / PARTS).mkdir(parents=True, exist_ok=True)
    for stale in own_files(folder, PARTS):
        stale.unlink()
    return plan


class IndexingTask(L.LightningModule):
    """The update of one index as a Lightning predict run (see the module docstring)."""

    def __init__(self, model: XCLIP, update: Update) -> None:
        super().__init__()
        self.model, self.update, self.out = model, update, update.out
        self.plan = None
        self.result: tuple[dict[str, Any], dict[str, str]] | None = None  # rank 0's merged (entries, failures)

    def setup(self, stage: str) -> None:
        self._lock = contextlib.ExitStack()
        plan: Any = None
        if self.global_rank == 0:
            try:
                self._lock.enter_context(writer_lock(self.out))
                plan = _resume(self.out, self.update.plan())
            except Exception as err:  # every rank stops with rank 0's reason (a busy index, another model ...)
                self._lock.close()
                plan = err
        self.plan = self.trainer.strategy.broadcast(plan, src=0)
        if isinstance(self.plan, Exception):
            raise self.plan
        self.todo = self.plan.todo[self.global_rank :: self.trainer.world_size]

    def predict_dataloader(self):
        return loader(self.todo, self.update, self.device.type == "cuda")

    def transfer_batch_to_device(self, batch: Any, device: Any, dataloader_idx: int) -> Any:
        return batch  # the encoder moves the frames of each batch of moments itself

    def on_predict_start(self) -> None:
        self.writer = _PartWriter(self.out, self.plan.header, self.global_rank)
        self.encoder = Encoder(self.model, self.update, self.writer)

    def predict_step(self, item: dict, batch_idx: int) -> None:
        self.encoder.add(self.todo[item["index"]], item)

    def on_predict_end(self) -> None:
        self.encoder.finish()
        self.writer.flush()
        self.trainer.strategy.barrier()
        if self.global_rank == 0:
            try:
                writer = self.plan.writer(self.out)
                parts = [
                    json.loads((self.out / PARTS / f"{r}.json").read_text()) for r in range(self.trainer.world_size)
                ]
                for part in parts:  # in rank order: every rank's videos, each with all its moments
                    writer.shards.update(part["shards"])
                    writer.failures.update(part["failures"])
                    writer.entries.update({e["id"]: e for e in part["entries"]})
                self.update.finish(writer)
                for part in own_files(self.out, PARTS):
                    part.unlink()
                self.result = (writer.entries, writer.failures)
            finally:
                self._lock.close()
        self.result = self.trainer.strategy.broadcast(self.result, src=0)


def build_distributed(
    model: XCLIP, update: Update, device: str, devices: int, num_nodes: int
) -> tuple[Plan, dict[str, dict[str, Any]], dict[str, str], int]:
    """Run ``update`` (``plan.Update``) under DDP; returns (the plan, the merged entries by id, the failures,
    this process's rank)."""
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
    entries, failures = task.result
    return task.plan, entries, failures, trainer.global_rank
