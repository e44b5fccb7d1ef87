"""The records of the index, typed and used end to end: ``IndexEntry`` (one indexed moment) and ``SearchHit``
(one result), and the stable id a script keeps for a moment."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field


@dataclass
class IndexEntry:
    """One indexed moment: a window [start, end) of a video file (the whole file when it is short), which version
    of the file, which frames were sampled, where its feature row is."""

    path: str
    size: int
    mtime_ns: int
    duration: float | None
    timestamps: list[float]
    thumbnail: str  # file under thumbs/
    id: str = ""  # entry_id(path, size, mtime_ns, window): stored beside the feature row, checked on load
    shard: str = ""
    row: int = -1
    window: int = 0  # the moment's number in its video
    moments: int = 1  # how many moments its video has
    start: float = 0.0  # seconds from the first frame
    end: float = 0.0


@dataclass
class SearchHit:
    path: str
    start: float  # the moment, seconds from the first frame of the video
    end: float
    score: float  # the full X-CLIP logit (logit scale x mean of the four contrasts)
    rank: int
    best_frame: int  # sampled frame of the moment whose sentence-frame similarity is highest
    best_time: float  # its timestamp, seconds from the first frame
    timestamps: list[float] = field(default_factory=list)
    thumbnail: str = ""
    id: str = ""  # stable across index updates and file edits: from the path and the start (``item_id``)


def item_id(path: str, start: float = 0.0) -> str:
    """The id a script can keep for an indexed moment: the same in every version of the index and of the file (a
    moment is its path and its start to the millisecond; the first moment of a video is identified by the path)."""
    key = path if round(start, 3) == 0 else f"{path}#t={start:.3f}"
    return hashlib.sha1(key.encode()).hexdigest()[:16]
