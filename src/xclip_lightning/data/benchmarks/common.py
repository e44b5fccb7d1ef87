"""What every annotation reader shares: the record type, errors that name file:line, the official video lookup,
and the missing-video policy (xclip-spec.md §12)."""

from __future__ import annotations

import csv
import json
import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

MissingPolicy = Literal["error", "skip"]
VIDEO_EXTENSIONS = (".mp4", ".webm", ".avi", ".mkv", ".mov", ".m4v", ".mpg", ".mpeg", ".ts", ".flv", ".3gp")
SHOW_MISSING = 5  # how many missing ids an error or warning lists


class AnnotationError(ValueError):
    """A malformed annotation file: the message names the file, the line and what is wrong."""

    def __init__(self, path: str | os.PathLike, problem: str, line: int | None = None) -> None:
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {problem}")


class MissingVideosError(FileNotFoundError):
    """Videos named by the annotations are not on disk."""


@dataclass(frozen=True)
class VideoRecord:
    """One video of a split: its id, its file (None until resolved), its captions (one or several)."""

    video_id: str
    video_path: Path | None
    captions: tuple[str, ...]
    split: str
    end_time: float | None = None  # sample only [0, end_time) seconds (DiDeMo: 32); None = the whole video


def require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found ({what})")
    return path


def load_json(path: Path, what: str) -> Any:
    """Parse a JSON annotation file; a syntax error names the file and the line."""
    try:
        return json.loads(require_file(path, what).read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise AnnotationError(path, f"not valid JSON ({err.msg})", line=err.lineno) from err


def read_lines(path: Path, what: str) -> Iterator[tuple[int, str]]:
    """(line number, stripped text) for each non-blank line of a text file."""
    for line, raw in enumerate(require_file(path, what).read_text(encoding="utf-8").splitlines(), start=1):
        if raw.strip():
            yield line, raw.strip()


def read_csv_rows(path: Path, columns: Sequence[str], delimiter: str = ",") -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, row) for each data row, checking the header has ``columns`` and every row is complete."""
    with open(require_file(path, "annotation file"), newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            raise AnnotationError(path, f"missing column(s) {missing}; the header has {reader.fieldnames}", line=1)
        for row in reader:
            if None in row or any(row.get(c) is None for c in columns):
                raise AnnotationError(path, f"expected {len(reader.fieldnames)} fields", line=reader.line_num)
            yield reader.line_num, row


def find_flat(folder: Path, video_id: str, extensions: Sequence[str] = (".mp4", ".webm")) -> Path | None:
    """Official MSR-VTT rule: ``<folder>/<id>.mp4``, falling back to ``.webm``."""
    for ext in extensions:
        candidate = folder / f"{video_id}{ext}"
        if candidate.is_file():
            return candidate
    return None


def index_by_stem(folder: Path, extensions: Sequence[str] = VIDEO_EXTENSIONS) -> dict[str, Path]:
    """Official MSVD / LSMDC / ActivityNet rule: walk ``folder`` recursively, key each video file by its stem."""
    index: dict[str, Path] = {}
    for root, _, files in os.walk(folder):
        for name in sorted(files):
            path = Path(root) / name
            if path.suffix.lower() in extensions:
                index.setdefault(path.stem, path)
    return index


def resolve_missing(records: Iterable[VideoRecord], policy: MissingPolicy, source: str) -> list[VideoRecord]:
    """Apply the missing-video policy: ``error`` lists the count per split and the first ids; ``skip`` drops
    those records (and says so once)."""
    records = list(records)
    missing: dict[str, list[str]] = {}
    for r in records:
        if r.video_path is None:
            missing.setdefault(r.split, []).append(r.video_id)
    if not missing:
        return records
    summary = "; ".join(
        f"{split}: {len(ids)} missing, e.g. {', '.join(ids[:SHOW_MISSING])}" for split, ids in sorted(missing.items())
    )
    if policy == "error":
        raise MissingVideosError(
            f"{source}: videos not found on disk ({summary}). Check the video folder, or pass "
            f"missing_videos='skip' to drop them"
        )
    warnings.warn(f"{source}: skipping videos not found on disk ({summary})", RuntimeWarning, stacklevel=2)
    return [r for r in records if r.video_path is not None]
