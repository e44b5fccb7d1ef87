"""The records of the index, typed and used end to end: ``IndexEntry`` (one indexed moment), ``SearchHit`` (one
result), and the ids that tie them to files: ``entry_id`` (one moment of one version of a file, stored beside its
feature row), ``entry_key`` (the same as a 63-bit integer: the database key and the FAISS id), ``item_id`` (what a
script keeps: the same across versions of the file and of the index)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field


def entry_id(path: str, size: int, mtime_ns: int, moment: int = 0) -> str:
    """Identifies one moment of one version of one file (16 hex digits): its feature row and its thumbnail carry it."""
    key = f"{path}|{size}|{mtime_ns}" + (f"|{moment}" if moment else "")
    return hashlib.sha1(key.encode()).hexdigest()[:16]


def entry_key(entry_id: str) -> int:
    """The integer (int64 >= 0) of an entry id: the primary key of its row in the database and its FAISS id."""
    return int(entry_id, 16) & ((1 << 63) - 1)


def item_id(path: str, start: float = 0.0) -> str:
    """The id a script can keep for an indexed moment: the same in every version of the index and of the file (a
    moment is its path and its start to the millisecond; the first moment of a video is identified by the path)."""
    key = path if round(start, 3) == 0 else f"{path}#t={start:.3f}"
    return hashlib.sha1(key.encode()).hexdigest()[:16]


def clock(seconds: float) -> str:
    """A moment's time as the terminal table, the page and the server print it: 1234.5 -> '20:34.5',
    4000 -> '1:06:40.0'."""
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return (f"{int(hours)}:{int(minutes):02d}" if hours else f"{int(minutes)}") + f":{secs:04.1f}"


@dataclass(frozen=True)
class IndexEntry:
    """One indexed moment: the span [start, end) of a video file (the whole file when it is short), which version of
    the file, which frames were sampled, where its feature row and its thumbnail strip are."""

    path: str
    size: int
    mtime_ns: int
    duration: float | None
    timestamps: list[float]  # of its sampled frames, seconds on the player's clock
    id: str  # entry_id(path, size, mtime_ns, moment): stored beside the feature row, checked when the row is read
    moment: int = 0  # the moment's number in its video
    moments: int = 1  # how many moments its video has
    start: float = 0.0  # seconds on the player's clock
    end: float = 0.0
    shard: str = ""  # the feature shard holding its row (empty until the row is written)
    row: int = -1
    thumb_sha256: str = ""  # of its thumbnail strip thumbs/<id>.jpg

    @property
    def key(self) -> int:
        """Its integer key (``entry_key``)."""
        return entry_key(self.id)

    @property
    def thumbnail(self) -> str:
        """The file name of its thumbnail strip under thumbs/ (always derived from the id, never stored)."""
        return f"{self.id}.jpg"

    def agrees(self) -> bool:
        """Its id is that of its path, file version and moment (an entry edited or swapped by hand is not)."""
        return self.id == entry_id(self.path, self.size, self.mtime_ns, self.moment)


@dataclass(frozen=True)
class SearchHit:
    """One result: a moment and its full X-CLIP score."""

    path: str
    start: float  # the moment, seconds on the player's clock
    end: float
    score: float  # the full X-CLIP logit (logit scale x mean of the four contrasts)
    rank: int
    best_frame: int  # sampled frame of the moment whose sentence-frame similarity is highest
    best_time: float  # its timestamp
    timestamps: list[float] = field(default_factory=list)
    thumbnail: str = ""  # file name under the index's thumbs/
    id: str = ""  # stable across index updates and file edits: from the path and the start (``item_id``)


@dataclass
class BuildReport:
    """What an update of an index did."""

    encoded: int = 0  # videos decoded and encoded now (new, changed or not whole)
    removed: int = 0  # videos dropped because their files are gone
    failures: dict[str, str] = field(default_factory=dict)  # files that could not be indexed, and why
    unreadable: list[str] = field(default_factory=list)  # subfolders that could not be listed
    rank: int = 0  # this process's rank in a multi-process build (only rank 0 reports)
