"""A generic annotation format for custom data: jsonl or csv, one line per video (or per caption).

jsonl: ``{"video": "clips/a.mp4", "captions": ["...", "..."], "split": "train"}`` (``caption`` for a single
string; optional ``video_id``, default the file stem). csv: header ``video,caption,split`` (optional
``video_id``), one row per caption; rows of the same video are grouped in order. Relative video paths are resolved
against the videos folder.
"""

from __future__ import annotations

import json
from pathlib import Path

from xclip_lightning.data.benchmarks.common import (
    AnnotationError,
    MissingPolicy,
    VideoRecord,
    read_csv_rows,
    read_lines,
    resolve_missing,
)


def _entries(path: Path) -> list[tuple[int, str, str, list[str], str]]:
    """(line, video, video_id, captions, split) per annotation line."""
    entries = []
    if path.suffix == ".csv":
        for line, row in read_csv_rows(path, ["video", "caption", "split"]):
            entries.append((line, row["video"], row.get("video_id") or "", [row["caption"]], row["split"]))
        return entries
    if path.suffix != ".jsonl":
        raise AnnotationError(path, "unknown annotation format: use a .jsonl or .csv file")
    for line, text in read_lines(path, "annotation file"):
        try:
            item = json.loads(text)
        except json.JSONDecodeError as err:
            raise AnnotationError(path, f"not valid JSON ({err.msg})", line=line) from err
        for key in ("video", "split"):
            if key not in item:
                raise AnnotationError(path, f"missing key {key!r}", line=line)
        captions = item.get("captions", [item["caption"]] if "caption" in item else None)
        if not captions or not all(isinstance(c, str) and c for c in captions):
            raise AnnotationError(path, "needs 'captions' (a list of non-empty strings) or 'caption'", line=line)
        entries.append((line, item["video"], item.get("video_id", ""), list(captions), item["split"]))
    return entries


def read_generic(
    annotations: str | Path,
    videos: str | Path,
    split: str,
    missing_videos: MissingPolicy = "error",
) -> list[VideoRecord]:
    """Records of ``split`` from a .jsonl or .csv file (see the module docstring for the format)."""
    annotations, videos = Path(annotations), Path(videos)
    grouped: dict[str, tuple[Path, list[str]]] = {}
    for line, video, video_id, captions, entry_split in _entries(annotations):
        if entry_split != split:
            continue
        path = Path(video) if Path(video).is_absolute() else videos / video
        vid = video_id or Path(video).stem
        if vid in grouped and grouped[vid][0] != path:
            raise AnnotationError(annotations, f"video id {vid!r} names two files: {grouped[vid][0]} and {path}", line)
        grouped.setdefault(vid, (path, []))[1].extend(captions)
    records = [
        VideoRecord(vid, path if path.is_file() else None, tuple(caps), split) for vid, (path, caps) in grouped.items()
    ]
    return resolve_missing(records, missing_videos, f"{annotations} ({split})")
