"""Generic annotations for custom data and for the formats later code bases ship.

One file for every split, or one file per split (put ``{split}`` in the path: ``data/msrvtt_ret_{split}.json``).
Accepted files:

- ``.jsonl``: one JSON object per line, e.g. ``{"video": "clips/a.mp4", "captions": ["...", "..."], "split": "train"}``;
- ``.json``: a JSON array of such objects, e.g. the retrieval JSON of many repositories
  (``[{"video": "video9770.mp4", "caption": "a person is ..."}]``, ``caption`` a string or a list);
- ``.csv`` / ``.tsv``: a header row, one row per caption, rows of the same video grouped in order
  (``video,caption,split``; ``video_id,sentence``; ``key,vid_key,video_id,sentence``).

Keys (the first one present wins): the video file ``video``, ``video_path``, ``clip_name`` or ``video_id`` (a name
without extension is looked up with each video extension); an explicit id ``video_id`` beside a file key (default:
the file's stem); captions ``captions`` (a list) or ``caption``, ``sentence``, ``text``, ``description`` (a string or
a list); ``split`` (needed unless the path has ``{split}``). ``"captions": []`` in a val or test split is a
distractor video: a candidate every text is ranked against, which no text asks for (a gallery larger than the
queries; see ``metrics.retrieval_metrics``). Video paths are relative to the videos folder and may
not leave it. Every bad value is an ``AnnotationError`` naming the file and the line (or the JSON entry).
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xclip_lightning.data.benchmarks.common import (
    SPLITS,
    VIDEO_EXTENSIONS,
    AnnotationError,
    MissingPolicy,
    VideoRecord,
    caption_text,
    find_flat,
    load_json,
    read_csv_rows,
    read_lines,
    resolve_missing,
)

SPLIT_PLACEHOLDER = "{split}"
VIDEO_KEYS = ("video", "video_path", "clip_name", "video_id")
ID_KEY = "video_id"
CAPTION_LIST_KEY = "captions"
CAPTION_KEYS = ("caption", "sentence", "text", "description")  # a string or a list of strings
SPLIT_KEY = "split"


@dataclass(frozen=True)
class _Entry:
    line: int | None  # the line of a .jsonl / .csv file
    entry: str | None  # the position in a .json array
    video: str
    video_id: str
    captions: list[str]
    split: str | None


def _objects(path: Path) -> Iterator[tuple[int | None, str | None, dict[str, Any]]]:
    """(line, entry, object) for each annotation of the file, whatever its format."""
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        for line, row in read_csv_rows(path, delimiter="\t" if suffix == ".tsv" else ","):
            yield line, None, row
    elif suffix == ".jsonl":
        for line, text in read_lines(path, "annotation file"):
            try:
                item = json.loads(text)
            except json.JSONDecodeError as err:
                raise AnnotationError(path, f"not valid JSON ({err.msg})", line=line) from err
            if not isinstance(item, dict):
                raise AnnotationError(path, f"expected a JSON object, got {type(item).__name__}", line=line)
            yield line, None, item
    elif suffix == ".json":
        data = load_json(path, "annotation file")
        if not isinstance(data, list):
            raise AnnotationError(path, f"expected a JSON array of objects, got {type(data).__name__}")
        for i, item in enumerate(data):
            if not isinstance(item, dict):
                raise AnnotationError(path, f"expected a JSON object, got {type(item).__name__}", entry=f"[{i}]")
            yield None, f"[{i}]", item
    else:
        raise AnnotationError(path, "unknown annotation format: use a .jsonl, .json, .csv or .tsv file")


def _captions(item: dict[str, Any], path: Path, line: int | None, entry: str | None) -> list[str]:
    keys = [k for k in (CAPTION_LIST_KEY, *CAPTION_KEYS) if k in item]
    if len(keys) != 1:
        problem = f"has caption keys {keys}: keep one" if keys else f"needs one of {[CAPTION_LIST_KEY, *CAPTION_KEYS]}"
        raise AnnotationError(path, problem, line=line, entry=entry)
    value = item[keys[0]]
    if isinstance(value, str) and keys[0] != CAPTION_LIST_KEY:
        value = [value]
    if not isinstance(value, list):
        expected = "a list of strings" if keys[0] == CAPTION_LIST_KEY else "a string or a list of strings"
        raise AnnotationError(
            path, f"{keys[0]!r} must be {expected}, got {type(value).__name__}", line=line, entry=entry
        )
    if not value and keys[0] != CAPTION_LIST_KEY:
        raise AnnotationError(path, f"{keys[0]!r} is an empty list: give at least one caption", line=line, entry=entry)
    return [caption_text(c, path, line, entry) for c in value]


def _entry(item: dict[str, Any], path: Path, line: int | None, entry: str | None) -> _Entry:
    video_key = next((k for k in VIDEO_KEYS if k in item), None)
    if video_key is None:
        raise AnnotationError(path, f"needs a video key, one of {list(VIDEO_KEYS)}", line=line, entry=entry)
    values = {k: item[k] for k in (video_key, ID_KEY, SPLIT_KEY) if k in item}
    for key, value in values.items():
        if not isinstance(value, str) or not value.strip():
            raise AnnotationError(path, f"{key!r} must be a non-empty string, got {value!r}", line=line, entry=entry)
    video = values[video_key]
    video_id = values.get(ID_KEY) or Path(video).stem
    return _Entry(line, entry, video, video_id, _captions(item, path, line, entry), values.get(SPLIT_KEY))


def _video_path(videos: Path, entry: _Entry, path: Path) -> Path:
    """Where an entry's video must be: inside ``videos`` (checked without touching the disk)."""
    root = os.path.abspath(videos)
    candidate = Path(os.path.normpath(os.path.join(root, entry.video)))
    if os.path.commonpath([root, candidate]) != root:
        raise AnnotationError(
            path,
            f"video {entry.video!r} is outside the videos folder {root}: write paths relative to that folder, or "
            f"set the videos folder to one that holds every video",
            line=entry.line,
            entry=entry.entry,
        )
    return candidate


def _find_video(candidate: Path) -> Path | None:
    """The file on disk (trying each video extension for a name without one), or None."""
    if candidate.is_file():
        return candidate
    if candidate.suffix.lower() not in VIDEO_EXTENSIONS:
        return find_flat(candidate.parent, candidate.name, VIDEO_EXTENSIONS)
    return None


def _split_file(annotations: Path, split: str) -> Path:
    return Path(str(annotations).replace(SPLIT_PLACEHOLDER, split))


def _entries_of_split(annotations: Path, split: str) -> tuple[Path, list[_Entry]]:
    """The file read and its entries of ``split``, checking the split assignment."""
    per_split_files = SPLIT_PLACEHOLDER in str(annotations)
    path = _split_file(annotations, split)
    entries = [_entry(item, path, line, entry) for line, entry, item in _objects(path)]
    if not entries:
        raise AnnotationError(path, f"no entries for split {split!r}: the file is empty")
    if per_split_files:
        for e in entries:
            if e.split is not None and e.split != split:
                raise AnnotationError(
                    path, f"says split {e.split!r} in the file of split {split!r}", line=e.line, entry=e.entry
                )
        return path, entries
    split_of: dict[str, str] = {}
    for e in entries:
        if e.split is None:
            raise AnnotationError(
                path,
                f"has no {SPLIT_KEY!r}: add one, or keep one file per split and put {SPLIT_PLACEHOLDER} in the path",
                line=e.line,
                entry=e.entry,
            )
        if e.split not in SPLITS:
            close = difflib.get_close_matches(e.split, SPLITS, n=1)
            raise AnnotationError(
                path,
                f"split {e.split!r} is not one of {', '.join(SPLITS)}"
                + (f" (did you mean {close[0]!r}?)" if close else ""),
                line=e.line,
                entry=e.entry,
            )
        if split_of.setdefault(e.video_id, e.split) != e.split:
            raise AnnotationError(
                path,
                f"video {e.video_id!r} is in split {e.split!r} here and in {split_of[e.video_id]!r} above: a video "
                f"in two splits leaks test data into training",
                line=e.line,
                entry=e.entry,
            )
    chosen = [e for e in entries if e.split == split]
    if not chosen:
        present = sorted(set(split_of.values()))
        raise AnnotationError(path, f"no entries for split {split!r}; the file has the splits {present}")
    return path, chosen


def read_generic(
    annotations: str | Path,
    videos: str | Path,
    split: str,
    missing_videos: MissingPolicy = "error",
) -> list[VideoRecord]:
    """Records of ``split`` (see the module docstring for the accepted files and keys)."""
    annotations, videos = Path(annotations), Path(videos)
    path, entries = _entries_of_split(annotations, split)
    grouped: dict[str, tuple[_Entry, Path, list[str]]] = {}
    for e in entries:
        candidate = _video_path(videos, e, path)  # every entry's path is checked, not only the first of a video
        first, first_path, captions = grouped.setdefault(e.video_id, (e, candidate, []))
        if first_path != candidate:
            raise AnnotationError(
                path, f"video id {e.video_id!r} names two files: {first.video} and {e.video}", e.line, e.entry
            )
        captions.extend(e.captions)
    for vid, (first, _, captions) in grouped.items():
        if not captions and split == "train":
            raise AnnotationError(
                path,
                f"video {vid!r} has no caption: 'captions': [] marks a distractor video (a candidate no text asks "
                f"for), which only val and test splits can have",
                first.line,
                first.entry,
            )
    # the disk is looked at once per video
    records = [VideoRecord(vid, _find_video(file), tuple(caps), split) for vid, (_, file, caps) in grouped.items()]
    return resolve_missing(records, missing_videos, f"{path} ({split})")
