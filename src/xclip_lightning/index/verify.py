"""``xclip-lightning index --verify``: every byte of an index checked, and what is damaged dropped.

Search verifies lazily (the rows a query reads); this reads everything: every shard against its chunk checksums,
every entry against its id and the id stored at its row, every thumbnail against its checksum (a symlink is never
followed), the approximate first stage against its checksum. The entries that fail are dropped in one published
version (their videos are then missing, and the next ``index`` encodes them again); a damaged approximate stage
is dropped (the next ``index`` rebuilds it).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from xclip_lightning.index.migrate import open_index
from xclip_lightning.index.shards import ShardError, ShardReader, file_sha256
from xclip_lightning.index.store import ANN, THUMBS, read_thumbnail, writer_lock


@dataclass
class Verification:
    """What ``verify_index`` found and did."""

    problems: list[str] = field(default_factory=list)
    dropped: int = 0  # moments dropped
    videos: set[str] = field(default_factory=set)  # their videos
    checked: int = 0  # moments checked


def _thumb_ok(folder: Path, name: str, digest: str) -> bool:
    data = read_thumbnail(folder, name)
    return data is not None and hashlib.sha256(data).hexdigest() == digest


def _row_holds(reader: ShardReader, shard: str, row: int, entry_id: str) -> bool:
    try:
        return reader.shard(shard).ids[row : row + 1] == [entry_id] and row >= 0
    except ShardError:
        return False


def verify_index(folder: str | os.PathLike) -> Verification:
    """Check everything in the index at ``folder`` and drop what is damaged (takes the writer lock)."""
    folder = Path(folder)
    found = Verification()
    with writer_lock(folder):
        store = open_index(folder, locked=True)
        try:
            if store.reconcile():
                found.problems.append("the count of moments per video disagreed with the entries (recounted)")
            reader = ShardReader(folder, store.shard_record)
            bad_shards: set[str] = set()
            for name in store.shard_names():
                try:
                    reader.verify(name)
                except ShardError as err:
                    bad_shards.add(name)
                    found.problems.append(str(err))
            bad: set[str] = set()
            for entry in store.entries():
                found.checked += 1
                problem = None
                if not entry.agrees():
                    problem = "its id is not that of its path, file version and moment (edited)"
                elif entry.shard in bad_shards:
                    problem = None  # reported with its shard
                    bad.add(entry.id)
                elif not _row_holds(reader, entry.shard, entry.row, entry.id):
                    problem = f"row {entry.row} of its shard {entry.shard} does not hold it"
                elif not _thumb_ok(folder, entry.thumbnail, entry.thumb_sha256):
                    problem = f"its thumbnail {THUMBS}/{entry.thumbnail} is missing, a link, or not what was written"
                if problem:
                    found.problems.append(f"{entry.path} (moment {entry.moment}): {problem}")
                    bad.add(entry.id)
                if entry.id in bad:
                    found.videos.add(entry.path)
            ann = store.meta.get("ann")
            if ann:
                path = folder / ANN / ann["file"]
                ok = path.is_file() and file_sha256(path) == ann["sha256"]
                if not ok:
                    found.problems.append(f"{path} is missing or does not match its checksum (rebuilt by `index`)")
            if bad or (ann and not ok):
                store.publish(drop_ids=bad, meta={"ann": None} if ann and not ok else None, in_ann=bool(ann and not ok))
            found.dropped = len(bad)
        finally:
            store.close()
    return found
