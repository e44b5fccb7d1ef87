"""The video index on disk: its metadata in SQLite, its features in immutable shards, one writer at a time.

    <index>/index.sqlite                the published version (WAL journal): ``meta`` (format, model, sampler, window,
                                        feature dtype, version counter, the approximate stage's record), ``entries``
                                        (one row per moment), ``shards`` (rows, size, checksums), ``failures``,
                                        ``files`` (every file the index wrote, so only those are ever deleted)
    <index>/shards/<token>.safetensors  feature rows (``shards.py``). Never modified once written
    <index>/ann/<token>.faiss, .keys.npy  optional: the approximate first stage (``ann.py``). Never modified
    <index>/thumbs/<entry id>.jpg       the sampled frames of one moment, as one strip
    <index>/.lock                       held (flock) by the one process updating the index, with its pid

A version is one SQLite transaction: a reader sees the old version or the new one, never a mix, and a kill at any
moment (the writer's included) leaves the last committed version. Publishing changes only the rows that changed
(the entries of the videos added, replaced or dropped), so it costs the same in an index of a thousand or a million
moments, and opening an index reads a few rows of ``meta``: nothing is read or verified per entry or per shard until
a query needs it (``ShardReader``). A file is recorded in ``files`` before it is written; files of a killed
writer that never got published, and files of rows a version dropped, are deleted by the next writer.

Indexes of format 3 (one ``manifest.json``) are migrated in place the first time they are opened (``migrate.py``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from xclip_lightning.errors import UserError
from xclip_lightning.index.records import IndexEntry, entry_id, entry_key
from xclip_lightning.index.shards import SHARDS, ShardRecord, fsync_write

INDEX_VERSION = 4  # 3: one JSON manifest rewritten at every publish; 4: SQLite, chunk checksums, lazy verification
DATABASE, MANIFEST, THUMBS, LOCK, ANN, PARTS = "index.sqlite", "manifest.json", "thumbs", ".lock", "ann", "parts"
SHARD_NAME = re.compile(r"^[0-9a-f]{32}\.safetensors$")
ANN_NAME = re.compile(r"^[0-9a-f]{32}\.(faiss|keys\.npy)$")
THUMB_NAME = re.compile(r"^[0-9a-f]{16}\.jpg$")
PART_NAME = re.compile(r"^\.?[0-9]+\.json(\.tmp)?$")
TEMPORARY = re.compile(r"^\.[0-9a-f]{32}\.(safetensors|faiss|keys\.npy)\.tmp$|^\.[0-9a-f]{16}\.jpg\.tmp$")
OWN_FILES = {  # what the index writes in each of its folders: nothing else there is ever deleted
    SHARDS: (SHARD_NAME, TEMPORARY),
    THUMBS: (THUMB_NAME, TEMPORARY),
    ANN: (ANN_NAME, TEMPORARY),
    PARTS: (PART_NAME,),
}
TOP_LEVEL = {DATABASE, f"{DATABASE}-wal", f"{DATABASE}-shm", f".{DATABASE}.tmp", MANIFEST, LOCK}
SQL_CHUNK = 900  # values bound in one statement (SQLite's historical limit is 999)

SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE shards (name TEXT PRIMARY KEY, rows INTEGER NOT NULL, size INTEGER NOT NULL, digests BLOB NOT NULL,
                     live INTEGER NOT NULL);
CREATE TABLE entries (
    key INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, path TEXT NOT NULL, size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL, duration REAL, timestamps TEXT NOT NULL, moment INTEGER NOT NULL,
    moments INTEGER NOT NULL, start_s REAL NOT NULL, end_s REAL NOT NULL, shard TEXT NOT NULL, row INTEGER NOT NULL,
    thumb_sha256 TEXT NOT NULL, in_ann INTEGER NOT NULL DEFAULT 0);
CREATE INDEX entries_by_path ON entries (path);
CREATE INDEX entries_by_shard ON entries (shard, row);
CREATE INDEX entries_not_in_ann ON entries (in_ann) WHERE in_ann = 0;
CREATE TABLE ann_removed (key INTEGER PRIMARY KEY);
CREATE TABLE failures (path TEXT PRIMARY KEY, reason TEXT NOT NULL);
CREATE TABLE files (name TEXT PRIMARY KEY, state TEXT NOT NULL);
CREATE INDEX files_to_delete ON files (state) WHERE state != 'live';
CREATE TABLE videos (path TEXT NOT NULL, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, moments INTEGER NOT NULL,
                     held INTEGER NOT NULL);
CREATE INDEX videos_by_path ON videos (path);
"""
_ENTRY_COLUMNS = (
    "path, size, mtime_ns, duration, timestamps, id, moment, moments, start_s, end_s, shard, row, thumb_sha256"
)


class VideoIndexError(UserError, ValueError):
    """An index that cannot be used: built by another model or sampler setting, corrupt, or missing files."""


class IndexBusyError(VideoIndexError):
    """Another process is updating the index."""


@contextlib.contextmanager
def writer_lock(folder: Path) -> Iterator[None]:
    """Exclusive right to update ``folder``; a second writer stops at once with a message naming the first."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise IndexBusyError(
                f"{folder} is being updated by another `xclip-lightning index` (pid {holder}): wait for it to "
                f"finish, then run again (it will only add what is still missing), or choose another --out"
            ) from None
        os.pwrite(fd, str(os.getpid()).ljust(20).encode(), 0)  # one fixed-width write: never read half-written
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _entry(row: Sequence[Any]) -> IndexEntry:
    path, size, mtime_ns, duration, timestamps, id_, moment, moments, start, end, shard, r, thumb = row
    return IndexEntry(
        path, size, mtime_ns, duration, json.loads(timestamps), id_, moment, moments, start, end, shard, r, thumb
    )


def _entry_values(e: IndexEntry) -> tuple:
    return (
        e.key, e.path, e.size, e.mtime_ns, e.duration, json.dumps(e.timestamps), e.id, e.moment, e.moments,
        e.start, e.end, e.shard, e.row, e.thumb_sha256,
    )  # fmt: skip


def _chunks(values: Sequence[Any]) -> Iterator[Sequence[Any]]:
    for start in range(0, len(values), SQL_CHUNK):
        yield values[start : start + SQL_CHUNK]


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    db.execute("PRAGMA synchronous = NORMAL")  # WAL: a commit survives a killed process; fsync at checkpoints
    return db


class Location(NamedTuple):
    """Where an entry's row is, and what its id must be (a light view of an entry for ranking)."""

    key: int
    shard: str
    row: int
    id: str
    path: str
    size: int
    mtime_ns: int
    moment: int

    def agrees(self) -> bool:
        """Its id is that of its path, file version and moment (an entry edited or swapped by hand is not)."""
        return self.id == entry_id(self.path, self.size, self.mtime_ns, self.moment)


_LOCATION_COLUMNS = "key, shard, row, id, path, size, mtime_ns, moment"


@dataclass(frozen=True)
class VideoInfo:
    """What the index holds of one video file (for planning an update)."""

    size: int
    mtime_ns: int
    moments: int  # how many moments the video has
    held: int  # how many of them the index holds


def _scan_entries(path: Path) -> None:
    # through SQLite, never by opening the file ourselves: closing another descriptor of the database would drop
    # this process's POSIX locks on it (SQLite's own connections share theirs)
    try:
        db = _connect(path)
        try:
            # every page of the table, no row decoded; read through a memory map: the kernel reads ahead (0.4 s
            # for 576 MB from a cold cache here, where SQLite's page-by-page reads took 2.7 s)
            db.execute("PRAGMA mmap_size = 2147418112")
            db.execute("SELECT count(*) FROM entries NOT INDEXED").fetchone()
        finally:
            db.close()
    except sqlite3.Error:
        pass  # only a warm-up: the queries read what they need themselves


class IndexStore:
    """One index folder's database. Any number of processes read; one writes, under ``writer_lock``."""

    def __init__(self, folder: Path, db: sqlite3.Connection) -> None:
        self.folder, self.db = folder, db
        self.meta = self._read_meta()

    # ---- opening -----------------------------------------------------------------------------------------------

    def read_ahead(self) -> threading.Thread:
        """Read the entries once in a background thread (one scan of the table, on a connection of its own), so the
        page cache holds them: each query looks up its candidates' rows at random places in the table, and from a
        cold cache every lookup waits for the disk (1M moments: 10 ms a query). A searcher calls it once; it costs
        one sequential read of the table (576 MB at 1M moments)."""
        thread = threading.Thread(
            target=_scan_entries, args=(self.folder / DATABASE,), name="xclip-index-read-ahead", daemon=True
        )
        thread.start()
        return thread

    @classmethod
    def open(cls, folder: str | os.PathLike) -> IndexStore:
        """Open the index in ``folder`` (``migrate.open_index`` migrates a format-3 one first)."""
        folder = Path(folder)
        if not (folder / DATABASE).is_file():
            if (folder / MANIFEST).is_file():
                raise VideoIndexError(f"{folder} is an index of format 3: open it with migrate.open_index")
            raise VideoIndexError(
                f"{folder} is not a video index (no {DATABASE}): build one with `xclip-lightning index`"
            )
        try:
            store = cls(folder, _connect(folder / DATABASE))
        except sqlite3.DatabaseError as err:
            raise VideoIndexError(
                f"{folder / DATABASE} cannot be read ({err}): delete the index folder and build it again"
            ) from err
        version = store.meta.get("format_version")
        if version != INDEX_VERSION:
            raise VideoIndexError(
                f"{folder}: index format {version}, this version of xclip-lightning reads {INDEX_VERSION}: build "
                f"the index again into a new folder"
            )
        return store

    @classmethod
    def create(cls, folder: Path, meta: dict[str, Any], fill: Callable[[IndexStore], None] | None = None) -> IndexStore:
        """A new index (writer only): the database is written under a temporary name (``fill`` may publish into it
        first), then renamed into place, so a reader never sees it half-made."""
        tmp = folder / f".{DATABASE}.tmp"
        tmp.unlink(missing_ok=True)
        db = sqlite3.connect(tmp, isolation_level=None, check_same_thread=False)
        db.executescript(SCHEMA)
        meta = {**meta, "format_version": INDEX_VERSION, "version": 0, "count": 0}
        db.executemany("INSERT INTO meta VALUES (?, ?)", [(k, json.dumps(v)) for k, v in meta.items()])
        if fill is not None:
            fill(cls(folder, db))
        db.close()
        fsync_write(tmp)
        os.replace(tmp, folder / DATABASE)
        store = cls(folder, _connect(folder / DATABASE))
        store.db.execute("PRAGMA journal_mode = WAL")
        return store

    def close(self) -> None:
        """Close the database connection."""
        self.db.close()

    def _read_meta(self) -> dict[str, Any]:
        return {k: json.loads(v) for k, v in self.db.execute("SELECT key, value FROM meta")}

    # ---- reading -----------------------------------------------------------------------------------------------

    def version(self) -> int:
        """The published version's number (one more at each publish): a reader compares it to refresh."""
        return json.loads(self.db.execute("SELECT value FROM meta WHERE key = 'version'").fetchone()[0])

    def refresh(self) -> None:
        """Read ``meta`` again (after a publish, or to follow another writer's)."""
        self.meta = self._read_meta()

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[None]:
        """Every read inside sees one published version."""
        if self.db.in_transaction:
            yield
            return
        self.db.execute("BEGIN")
        try:
            yield
        finally:
            self.db.execute("COMMIT")

    def count(self) -> int:
        """How many moments the published version holds."""
        return int(self.meta.get("count", 0))

    def shard_record(self, name: str) -> ShardRecord | None:
        """What was recorded of shard ``name`` when it was written (None when it is not recorded)."""
        row = self.db.execute("SELECT name, rows, size, digests FROM shards WHERE name = ?", (name,)).fetchone()
        return ShardRecord(row[0], row[1], row[2], bytes(row[3])) if row else None

    def shard_names(self) -> list[str]:
        """Every recorded shard."""
        return [name for (name,) in self.db.execute("SELECT name FROM shards ORDER BY name")]

    def entries(self, where: str = "", params: Sequence[Any] = (), order: str = "path, moment") -> list[IndexEntry]:
        """Entries (``where`` a SQL condition on the columns), in ``order``."""
        query = f"SELECT {_ENTRY_COLUMNS} FROM entries {'WHERE ' + where if where else ''} ORDER BY {order}"
        return [_entry(row) for row in self.db.execute(query, params)]

    def entries_by_key(self, keys: Iterable[int]) -> dict[int, IndexEntry]:
        """The entries of these keys that exist (a key of a dropped moment is left out)."""
        found: dict[int, IndexEntry] = {}
        for part in _chunks(list(dict.fromkeys(int(k) for k in keys))):
            marks = ",".join("?" * len(part))
            for row in self.db.execute(f"SELECT key, {_ENTRY_COLUMNS} FROM entries WHERE key IN ({marks})", part):
                found[row[0]] = _entry(row[1:])
        return found

    def locations(self, where: str = "") -> list[Location]:
        """Where every entry's row is (``where``: a SQL condition), in storage order."""
        query = f"SELECT {_LOCATION_COLUMNS} FROM entries {'WHERE ' + where if where else ''} ORDER BY shard, row"
        return [Location(*row) for row in self.db.execute(query)]

    def locate(self, keys: Iterable[int]) -> dict[int, Location]:
        """Where the rows of these keys are (a key of a dropped moment is left out)."""
        found: dict[int, Location] = {}
        for part in _chunks(list(dict.fromkeys(int(k) for k in keys))):
            marks = ",".join("?" * len(part))
            for row in self.db.execute(f"SELECT {_LOCATION_COLUMNS} FROM entries WHERE key IN ({marks})", part):
                found[row[0]] = Location(*row)
        return found

    def videos(self) -> dict[str, VideoInfo]:
        """Each indexed video (its path): the file version and how many of its moments the index holds (one row a
        video, kept up to date by ``publish``)."""
        found: dict[str, VideoInfo] = {}
        for path, size, mtime_ns, moments, held in self.db.execute("SELECT * FROM videos"):
            if path in found:  # two versions of one file: neither is whole, encode it again
                found[path] = VideoInfo(-1, -1, 0, 0)
            else:
                found[path] = VideoInfo(size, mtime_ns, moments, held)
        return found

    def failures(self) -> dict[str, str]:
        """The files that could not be indexed, and why."""
        return dict(self.db.execute("SELECT path, reason FROM failures ORDER BY path"))

    def ann_removed(self) -> list[int]:
        """Keys of moments dropped since the approximate stage's file was written."""
        return [k for (k,) in self.db.execute("SELECT key FROM ann_removed")]

    def thumb_digest(self, entry_id: str) -> str | None:
        """The SHA-256 recorded for the thumbnail strip of entry ``entry_id`` (None when it is not an entry)."""
        row = self.db.execute("SELECT thumb_sha256 FROM entries WHERE key = ?", (entry_key(entry_id),)).fetchone()
        return row[0] if row else None

    # ---- writing (under writer_lock) ---------------------------------------------------------------------------

    def record_files(self, names: Iterable[str]) -> None:
        """Record files about to be written (``thumbs/x.jpg``...): a killed writer's are deleted by the next one."""
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.executemany("INSERT OR IGNORE INTO files VALUES (?, 'new')", [(n,) for n in names])

    def publish(
        self,
        added: Sequence[IndexEntry] = (),
        shards: Sequence[ShardRecord] = (),
        drop_paths: Iterable[str] = (),
        drop_ids: Iterable[str] = (),
        failures: dict[str, str] | None = None,
        meta: dict[str, Any] | None = None,
        ann_files: Sequence[str] = (),
        in_ann: bool = False,
        relocate: Sequence[tuple[str, str, int]] = (),
    ) -> None:
        """One new version, in one transaction: the entries of ``drop_paths``, ``drop_ids`` and of the videos in
        ``added`` are replaced by ``added``; ``shards`` (holding the added rows) are recorded; ``failures`` are
        recorded for their paths (and cleared for the paths added); ``meta`` keys are set. ``in_ann``: every entry
        is now held by the approximate stage, whose files are ``ann_files``. ``relocate``: (entry id, shard, row) of
        rows moved to another shard (compaction). Then the files no version needs any more are deleted."""
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            paths = sorted(set(drop_paths) | {e.path for e in added})
            gone: list[tuple[int, str, str, int, str]] = []
            for part in _chunks(paths):
                marks = ",".join("?" * len(part))
                gone += db.execute(
                    f"SELECT key, id, shard, in_ann, path FROM entries WHERE path IN ({marks})", part
                ).fetchall()
            for part in _chunks(list(drop_ids)):
                marks = ",".join("?" * len(part))
                query = f"SELECT key, id, shard, in_ann, path FROM entries WHERE id IN ({marks})"
                gone += db.execute(query, part).fetchall()
            gone = list({g[0]: g for g in gone}.values())
            for part in _chunks([g[0] for g in gone]):
                db.execute(f"DELETE FROM entries WHERE key IN ({','.join('?' * len(part))})", part)
            db.executemany("INSERT INTO ann_removed VALUES (?) ON CONFLICT DO NOTHING", [(g[0],) for g in gone if g[3]])
            db.executemany(
                "UPDATE files SET state = 'garbage' WHERE name = ?", [(f"{THUMBS}/{g[1]}.jpg",) for g in gone]
            )
            dead: dict[str, int] = {}
            for _, _, shard, _, _ in gone:
                dead[shard] = dead.get(shard, 0) + 1
            db.executemany("UPDATE shards SET live = live - ? WHERE name = ?", [(n, s) for s, n in dead.items()])
            db.executemany(
                "INSERT INTO shards VALUES (?, ?, ?, ?, 0)", [(s.name, s.rows, s.size, s.digests) for s in shards]
            )
            db.executemany(
                "INSERT OR REPLACE INTO files VALUES (?, 'live')",
                [(f"{SHARDS}/{s.name}",) for s in shards] + [(f"{ANN}/{n}",) for n in ann_files],
            )
            db.executemany(f"INSERT INTO entries ({'key, ' + _ENTRY_COLUMNS}) VALUES ({','.join('?' * 14)})",
                           [_entry_values(e) for e in added])  # fmt: skip
            db.executemany(
                "INSERT OR REPLACE INTO files VALUES (?, 'live')", [(f"{THUMBS}/{e.id}.jpg",) for e in added]
            )
            added_per_shard: dict[str, int] = {}
            for e in added:
                added_per_shard[e.shard] = added_per_shard.get(e.shard, 0) + 1
            for entry_id, shard, row in relocate:
                (old,) = db.execute("SELECT shard FROM entries WHERE id = ?", (entry_id,)).fetchone()
                db.execute("UPDATE entries SET shard = ?, row = ? WHERE id = ?", (shard, row, entry_id))
                db.execute("UPDATE shards SET live = live - 1 WHERE name = ?", (old,))
                added_per_shard[shard] = added_per_shard.get(shard, 0) + 1
            db.executemany(
                "UPDATE shards SET live = live + ? WHERE name = ?", [(n, s) for s, n in added_per_shard.items()]
            )
            for (name,) in db.execute("SELECT name FROM shards WHERE live <= 0").fetchall():
                db.execute("DELETE FROM shards WHERE name = ?", (name,))
                db.execute("UPDATE files SET state = 'garbage' WHERE name = ?", (f"{SHARDS}/{name}",))
            self._count_videos(sorted(set(paths) | {g[4] for g in gone}))
            db.executemany("DELETE FROM failures WHERE path = ?", [(e.path,) for e in added])
            db.executemany("INSERT OR REPLACE INTO failures VALUES (?, ?)", list((failures or {}).items()))
            if in_ann:
                db.execute("UPDATE entries SET in_ann = 1 WHERE in_ann = 0")
                db.execute("DELETE FROM ann_removed")
                old = (self.meta.get("ann") or {}).get("file")
                if old and old not in ann_files:
                    db.execute("UPDATE files SET state = 'garbage' WHERE name = ?", (f"{ANN}/{old}",))
            count = self.count() - len(gone) + len(added)
            updates = {
                **(meta or {}),
                "count": count,
                "version": self.version() + 1,
                "built": time.strftime("%Y-%m-%d %H:%M:%S"),
            }
            db.executemany(
                "INSERT OR REPLACE INTO meta VALUES (?, ?)", [(k, json.dumps(v)) for k, v in updates.items()]
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self.refresh()
        self.collect_garbage()

    def _count_videos(self, paths: Sequence[str]) -> None:
        """Bring the ``videos`` rows of these paths in line with their entries (inside ``publish``)."""
        for part in _chunks(list(paths)):
            marks = ",".join("?" * len(part))
            self.db.execute(f"DELETE FROM videos WHERE path IN ({marks})", part)
            self.db.execute(
                f"INSERT INTO videos SELECT path, size, mtime_ns, max(moments), count(*) FROM entries "
                f"WHERE path IN ({marks}) GROUP BY path, size, mtime_ns",
                part,
            )

    def reconcile(self) -> bool:
        """Recount the ``videos`` rows and the entry count when they disagree with the entries (the database was
        edited by hand); True when they did. Writer only; costs one count of the entries."""
        entries = self.db.execute("SELECT count(*) FROM entries").fetchone()[0]
        held = self.db.execute("SELECT coalesce(sum(held), 0) FROM videos").fetchone()[0]
        if entries == held == self.count():
            return False
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute("DELETE FROM videos")
            self.db.execute(
                "INSERT INTO videos SELECT path, size, mtime_ns, max(moments), count(*) FROM entries "
                "GROUP BY path, size, mtime_ns"
            )
            self.db.execute("INSERT OR REPLACE INTO meta VALUES ('count', ?)", (json.dumps(entries),))
        self.refresh()
        return True

    def held(self, paths: Iterable[str]) -> int:
        """How many moments the index holds of these videos."""
        total = 0
        for part in _chunks(list(paths)):
            marks = ",".join("?" * len(part))
            total += self.db.execute(
                f"SELECT coalesce(sum(held), 0) FROM videos WHERE path IN ({marks})", part
            ).fetchone()[0]
        return total

    def collect_garbage(self, leftovers: bool = False) -> None:
        """Delete the files recorded as no longer needed (and, with ``leftovers``, those a killed writer recorded
        but never published); then forget them. Files the index did not record are never touched."""
        states = ("garbage", "new") if leftovers else ("garbage",)
        marks = ",".join("?" * len(states))
        names = [n for (n,) in self.db.execute(f"SELECT name FROM files WHERE state IN ({marks})", states)]
        for name in names:
            folder, _, file = name.partition("/")
            if folder in OWN_FILES and any(p.match(file) for p in OWN_FILES[folder]):
                (self.folder / folder / file).unlink(missing_ok=True)
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            for part in _chunks(names):
                self.db.execute(f"DELETE FROM files WHERE name IN ({','.join('?' * len(part))})", part)


def read_thumbnail(folder: Path, name: str) -> bytes | None:
    """The bytes of ``thumbs/name`` in the index ``folder``, or None when the name is not a thumbnail's, the file is
    missing, or it is a symbolic link (never followed)."""
    if not THUMB_NAME.match(name):
        return None
    try:
        fd = os.open(folder / THUMBS / name, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        return f.read()


def own_files(folder: Path, subfolder: str) -> Iterator[Path]:
    """The files of ``folder/subfolder`` that an index writes (by name); a user's file there is never listed."""
    patterns = OWN_FILES[subfolder]
    if (folder / subfolder).is_dir():
        for path in (folder / subfolder).iterdir():
            if any(p.match(path.name) for p in patterns) and not path.is_symlink() and path.is_file():
                yield path


def is_index(folder: Path) -> bool:
    """Whether ``folder`` holds an index (of this format or the previous one)."""
    return (folder / DATABASE).is_file() or (folder / MANIFEST).is_file()


def foreign_files(folder: Path) -> list[Path]:
    """Files and folders in ``folder`` that no index writes: a folder holding any is not an index (or not only)."""
    foreign = []
    for path in folder.iterdir():
        if path.name in OWN_FILES and path.is_dir() and not path.is_symlink():
            mine = set(own_files(folder, path.name))
            foreign.extend(p for p in path.iterdir() if p not in mine)
        elif path.name not in TOP_LEVEL:
            foreign.append(path)
    return sorted(foreign)


def remove_unpublished(folder: Path) -> None:
    """Delete what a build that never published wrote into ``folder`` (only the index's own files and folders)."""
    for subfolder in OWN_FILES:
        for path in own_files(folder, subfolder):
            path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # not empty: something else is there, and stays
            (folder / subfolder).rmdir()
    for name in TOP_LEVEL - {LOCK, MANIFEST}:
        (folder / name).unlink(missing_ok=True)
