"""The writer of one update: feature rows buffered into shards, each shard published with its entries as one new
version (a video's moments always in the same version), then compaction of shards that are mostly dead rows."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from xclip_lightning.index.ann import update_approximate
from xclip_lightning.index.records import IndexEntry
from xclip_lightning.index.shards import (
    FEATURE_KEYS,
    SHARDS,
    ShardReader,
    ShardRecord,
    fsync_write,
    shard_name,
    write_shard,
)
from xclip_lightning.index.store import THUMBS, IndexStore, VideoIndexError

FLUSH_EVERY = 2048  # moments per shard
FLUSH_SECONDS = 60.0  # a build publishes what it has encoded at least this often, so a killed build keeps it

Row = tuple[IndexEntry, dict[str, Tensor]]  # an entry and its features: video [D], frames [T,D], frame_mask [T]


def write_thumbnail(folder: Path, entry_id: str, jpeg: bytes) -> None:
    """thumbs/<id>.jpg, written under a temporary name and renamed (a reader never sees half a file)."""
    tmp = folder / THUMBS / f".{entry_id}.jpg.tmp"
    fsync_write(tmp, jpeg)
    os.replace(tmp, folder / THUMBS / f"{entry_id}.jpg")


class RowBuffer:
    """Feature rows of whole videos buffered until a shard's worth (or ``FLUSH_SECONDS``) is there, then written as
    one shard by ``flush`` (which a subclass defines: publish a version, or record a rank's part); the files that
    could not be indexed, and why. The encoder (``encode.Encoder``) writes into one."""

    def __init__(self, folder: Path, dtype: torch.dtype, flush_every: int) -> None:
        self.folder, self.dtype, self.flush_every = folder, dtype, flush_every
        self.failures: dict[str, str] = {}
        self.pending: list[Row] = []
        self.published_at = time.monotonic()
        (folder / THUMBS).mkdir(parents=True, exist_ok=True)

    def record_files(self, names: Sequence[str]) -> None:
        """Files about to be written (``thumbs/<id>.jpg``, a shard)."""

    def fail(self, path: str, reason: str) -> None:
        """Record that ``path`` could not be indexed (its old moments, if any, are dropped)."""
        self.failures[path] = reason

    def add_video(self, rows: Sequence[Row]) -> None:
        """Add every moment of one video together: a version never holds part of a video."""
        self.pending.extend(rows)
        if len(self.pending) >= self.flush_every or time.monotonic() - self.published_at > FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        raise NotImplementedError

    def write_pending(self) -> tuple[list[ShardRecord], list[IndexEntry]]:
        """Write the pending rows as one shard (none when nothing is pending): its record and the entries, placed."""
        if not self.pending:
            return [], []
        name = shard_name()
        self.record_files([f"{SHARDS}/{name}"])
        tensors = {k: torch.stack([f[k] for _, f in self.pending]) for k in FEATURE_KEYS}
        record = write_shard(self.folder, name, tensors, [e.id for e, _ in self.pending], self.dtype)
        entries = [replace(e, shard=name, row=row) for row, (e, _) in enumerate(self.pending)]
        self.pending = []
        return [record], entries


class IndexWriter(RowBuffer):
    """Publishes the versions of one index during an update. ``drop_paths``: videos whose entries go in the first
    version (files gone, or entries found out of agreement); a video re-encoded replaces its old entries in the
    version that adds its new ones, so search keeps finding it in between."""

    def __init__(
        self,
        store: IndexStore,
        dtype: torch.dtype = torch.float32,
        flush_every: int = FLUSH_EVERY,
        drop_paths: Iterable[str] = (),
        meta: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(store.folder, dtype, flush_every)
        self.store = store
        self.meta = meta or {}  # the settings recorded with every version this writer publishes
        self.drop_paths = set(drop_paths)
        self.reported: set[str] = set()  # failures already published

    def record_files(self, names: Sequence[str]) -> None:
        """Files about to be written: recorded in the database first, so a killed writer leaves no orphan."""
        self.store.record_files(names)

    def remaining(self) -> int:
        """Entries the index would hold if the update ended now (what was kept, plus what was added)."""
        return self.store.count() - self.store.held(self._dropped()) + len(self.pending)

    def _dropped(self) -> set[str]:
        return self.drop_paths | set(self.failures)

    def flush(self) -> None:
        """Write the pending rows as one shard and publish the version that holds them."""
        shards, added = self.write_pending()
        failures = {p: r for p, r in self.failures.items() if p not in self.reported}
        self.store.publish(added=added, shards=shards, drop_paths=self._dropped(), failures=failures, meta=self.meta)
        self.reported |= set(failures)
        self.drop_paths = set()
        self.published_at = time.monotonic()

    def finish(self, videos: Path, approximate: str) -> None:
        """Publish the last rows (dropping what the update drops), compact, bring the approximate stage up to date
        (``approximate``: auto / on / off). An update that would leave the index with no moment publishes nothing:
        the previous version stays."""
        if self.remaining() <= 0:
            failed = "".join(f", e.g. {path}: {reason}" for path, reason in list(self.failures.items())[:1])
            kept = ": the index was left as it was" if self.store.version() > 0 else ""
            raise VideoIndexError(
                f"no video could be indexed under {videos} ({len(self.failures)} failed{failed}){kept}"
            )
        self.flush()
        self.compact()
        update_approximate(self.store, approximate)

    def compact(self) -> None:
        """Move the live rows of shards that are mostly dead (deleted or replaced moments) into new shards."""
        sparse = [
            name
            for name, rows, live in self.store.db.execute("SELECT name, rows, live FROM shards WHERE live * 2 < rows")
        ]
        if not sparse:
            return
        marks = ",".join("?" * len(sparse))
        moved = self.store.entries(f"shard IN ({marks})", sparse, order="shard, row")
        reader = ShardReader(self.folder, self.store.shard_record)
        for start in range(0, len(moved), self.flush_every):
            part = moved[start : start + self.flush_every]
            features = reader.gather([(e.shard, e.row, e.id) for e in part])
            name = shard_name()
            self.record_files([f"{SHARDS}/{name}"])
            record = write_shard(self.folder, name, features, [e.id for e in part], self.dtype)
            self.store.publish(shards=[record], relocate=[(e.id, name, row) for row, e in enumerate(part)])
