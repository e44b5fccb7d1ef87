"""The index metadata in SQLite (what ``index/store.py`` uses) against Lance, on the same work, side by side.

    .venv/bin/python bench/metadata_store.py                       # 100,000 and 1,000,000 moments
    .venv/bin/python bench/metadata_store.py --moments 100000

The rows are index entries as the store holds them (key, id, path, file version, duration, moment, start, end,
12 timestamps, shard, row, thumbnail checksum), one-hour videos in 30 s moments. Per back end and size:

- ``build_s``: a full build's metadata writes, 2,048 moments a commit (one published version each, as ``index``
  publishes);
- ``open_s``: open the table and read its row count (what ``search`` pays before its first query);
- ``publish_one_s``: one video's 120 moments replaced (its old rows deleted, the new ones inserted) as one commit;
- ``lookup_ms``: the rows of 200 random keys (what a query reads after its first stage);
- ``disk_mb``: the size of the table on disk after all that.

SQLite is the store's real code (``IndexStore.create`` / ``publish`` / ``locate``); Lance (``pylance``, in the
``bench`` extra) runs the same operations with its own API: ``write_dataset(mode="append")`` per commit,
``merge_insert`` for the one-video replacement (one commit), a BTREE scalar index on the key for the lookups.
Prints a table and one JSON line per back end and size.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

from xclip_lightning.index.records import IndexEntry, entry_id
from xclip_lightning.index.shards import ShardRecord
from xclip_lightning.index.store import DATABASE, IndexStore

PER_VIDEO, COMMIT = 120, 2048
T = 12


def entries_of(video: int, version: int = 0) -> list[IndexEntry]:
    path = f"/data/videos/camera-{video // 100:03d}/recording-{video:06d}.mp4"
    size, mtime = 1_000_000_000 + video, 1_700_000_000_000_000_000 + video + version
    shard = f"{video // 17:032x}.safetensors"
    return [
        IndexEntry(
            path,
            size,
            mtime,
            3600.0,
            [30.0 * k + 2.5 * j for j in range(T)],
            entry_id(path, size, mtime, k),
            k,
            PER_VIDEO,
            30.0 * k,
            30.0 * k + 30.0,
            shard,
            (video % 17) * PER_VIDEO + k,
            "ab" * 32,
        )
        for k in range(PER_VIDEO)
    ]


def batches(moments: int):
    """The entries in commits of about COMMIT moments (whole videos)."""
    pending: list[IndexEntry] = []
    for video in range(-(-moments // PER_VIDEO)):
        pending += entries_of(video)
        if len(pending) >= COMMIT:
            yield pending
            pending = []
    if pending:
        yield pending


class SQLiteBackend:
    name = "sqlite"

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True)
        self.store = IndexStore.create(folder, {"window": 30.0})
        self.shards: set[str] = set()

    def write(self, entries: list[IndexEntry]) -> None:
        new = sorted({e.shard for e in entries} - self.shards)
        self.shards |= set(new)
        records = [ShardRecord(n, 17 * PER_VIDEO, 1, b"") for n in new]
        self.store.publish(added=entries, shards=records)

    def open(self) -> int:
        return IndexStore.open(self.folder).count()

    def replace(self, entries: list[IndexEntry]) -> None:
        self.store.publish(added=entries)  # the video's old rows go in the same transaction

    def lookup(self, keys: list[int]) -> int:
        return len(self.store.locate(keys))

    def disk(self) -> int:
        self.store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the table itself, not a journal in passing
        return sum(p.stat().st_size for p in self.folder.glob(f"{DATABASE}*"))


class LanceBackend:
    name = "lance"

    def __init__(self, folder: Path) -> None:
        import lance
        import pyarrow as pa

        self.lance, self.pa, self.uri, self.dataset = lance, pa, str(folder / "entries.lance"), None
        self.schema = pa.schema(
            [("key", pa.int64()), ("id", pa.string()), ("path", pa.string()), ("size", pa.int64()),
             ("mtime_ns", pa.int64()), ("duration", pa.float64()), ("timestamps", pa.list_(pa.float64())),
             ("moment", pa.int32()), ("moments", pa.int32()), ("start_s", pa.float64()), ("end_s", pa.float64()),
             ("shard", pa.string()), ("row", pa.int32()), ("thumb_sha256", pa.string())]
        )  # fmt: skip

    def table(self, entries: list[IndexEntry]):
        columns = {
            "key": [e.key for e in entries], "id": [e.id for e in entries], "path": [e.path for e in entries],
            "size": [e.size for e in entries], "mtime_ns": [e.mtime_ns for e in entries],
            "duration": [e.duration for e in entries], "timestamps": [e.timestamps for e in entries],
            "moment": [e.moment for e in entries], "moments": [e.moments for e in entries],
            "start_s": [e.start for e in entries], "end_s": [e.end for e in entries],
            "shard": [e.shard for e in entries], "row": [e.row for e in entries],
            "thumb_sha256": [e.thumb_sha256 for e in entries],
        }  # fmt: skip
        return self.pa.table(columns, schema=self.schema)

    def write(self, entries: list[IndexEntry]) -> None:
        mode = "append" if self.dataset is not None else "create"
        self.dataset = self.lance.write_dataset(self.table(entries), self.uri, mode=mode)

    def finish_build(self) -> None:
        self.dataset.create_scalar_index("key", "BTREE")

    def open(self) -> int:
        return self.lance.dataset(self.uri).count_rows()

    def replace(self, entries: list[IndexEntry]) -> None:
        path = entries[0].path.replace("'", "''")
        (
            self.dataset.merge_insert("key")
            .when_matched_update_all()
            .when_not_matched_insert_all()
            .when_not_matched_by_source_delete(f"path = '{path}'")
            .execute(self.table(entries))
        )
        self.dataset = self.lance.dataset(self.uri)

    def lookup(self, keys: list[int]) -> int:
        return self.dataset.to_table(
            columns=["key", "shard", "row", "id"], filter=f"key IN ({','.join(map(str, keys))})"
        ).num_rows

    def disk(self) -> int:
        return sum(p.stat().st_size for p in Path(self.uri).rglob("*") if p.is_file())


def run(backend_class, folder: Path, moments: int) -> dict:
    backend = backend_class(folder)
    start = time.perf_counter()
    for part in batches(moments):
        backend.write(part)
    if hasattr(backend, "finish_build"):
        backend.finish_build()
    build_s = time.perf_counter() - start
    start = time.perf_counter()
    count = backend.open()
    open_s = time.perf_counter() - start
    videos = -(-moments // PER_VIDEO)
    start = time.perf_counter()
    backend.replace(entries_of(videos // 2, version=1))  # a video in the middle, changed on disk
    publish_one_s = time.perf_counter() - start
    rng = random.Random(0)
    keys = [
        e.key
        for v in rng.sample(range(videos), min(200, videos))
        for e in entries_of(v)[rng.randrange(PER_VIDEO) :][:1]
    ]
    times = []
    for _ in range(5):
        start = time.perf_counter()
        found = backend.lookup(keys)
        times.append(time.perf_counter() - start)
    assert found >= len(keys) - 1, found  # one may be the replaced video's old version
    return {
        "backend": backend.name,
        "moments": count,
        "build_s": round(build_s, 2),
        "open_s": round(open_s, 4),
        "publish_one_s": round(publish_one_s, 4),
        "lookup_ms": round(1e3 * sorted(times)[2], 2),
        "disk_mb": round(backend.disk() / 2**20, 1),
    }


def main(argv: list[str]) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--moments", type=int, nargs="+", default=[100_000, 1_000_000])
    args = parser.parse_args(argv)
    backends = [SQLiteBackend]
    try:
        import lance  # noqa: F401

        backends.append(LanceBackend)
    except ImportError:
        print("pylance is not installed (pip install -e '.[bench]'): SQLite only")
    results = []
    for moments in args.moments:
        for backend in backends:
            root = Path(tempfile.mkdtemp(prefix=f"xclip-meta-{backend.name}-"))
            try:
                result = run(backend, root / "store", moments)
            finally:
                shutil.rmtree(root, ignore_errors=True)
            results.append(result)
            print(
                f"{result['backend']:>6} {result['moments']:>9,} moments: build {result['build_s']} s, open "
                f"{result['open_s']} s, publish one video {result['publish_one_s']} s, 200-key lookup "
                f"{result['lookup_ms']} ms, {result['disk_mb']} MB"
            )
            print(json.dumps({"bench": "metadata_store", **result}))
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
