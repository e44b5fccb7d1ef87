"""What every annotation reader shares: the record type, errors that name file:line, the official video lookup,
and the missing-video policy (xclip-spec.md §12)."""

from __future__ import annotations

import csv
import io
import json
import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from xclip_lightning.errors import UserError

MissingPolicy = Literal["error", "skip"]
KEEP_MISSING = "keep"  # not a user's policy: records whose video is missing stay, with video_path None (check-data)
SPLITS = ("train", "val", "test")
# Lower-case; DiDeMo alone has .mov .avi .mp4 .mpg .wmv .m4v .3gp .mts .3g2 (real-data-notes.md)
VIDEO_EXTENSIONS = (
    ".mp4", ".webm", ".avi", ".mkv", ".mov", ".m4v", ".mpg", ".mpeg", ".ts", ".m2ts", ".mts", ".flv", ".3gp",
    ".3g2", ".wmv", ".ogv",
)  # fmt: skip
SHOW_MISSING = 5  # how many missing ids an error or warning lists


class AnnotationError(UserError, ValueError):
    """A malformed annotation file: the message names the file, the line (or the JSON entry) and what is wrong."""

    def __init__(
        self, path: str | os.PathLike, problem: str, line: int | None = None, entry: str | None = None
    ) -> None:
        where = f"{path}:{line}" if line is not None else f"{path}, entry {entry}" if entry is not None else str(path)
        super().__init__(f"{where}: {problem}")


class MissingVideosError(UserError, FileNotFoundError):
    """Videos named by the annotations are not on disk."""


@dataclass(frozen=True)
class VideoRecord:
    """One video of a split: its id, its file (None until resolved), its captions (one or several)."""

    video_id: str
    video_path: Path | None
    captions: tuple[str, ...]
    split: str
    end_time: float | None = None  # sample only [0, end_time) seconds (DiDeMo: 32); None = the whole video


def check_split(split: str, benchmark: str, splits: Sequence[str] = SPLITS) -> None:
    if split not in splits:
        raise ValueError(f"{benchmark} has no split {split!r}: use one of {', '.join(splits)}")


def require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found ({what})")
    return path


def read_text(path: Path, what: str) -> str:
    """The file as text: UTF-8, a byte-order mark allowed; other bytes are an error naming the line."""
    data = require_file(path, what).read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise AnnotationError(
            path,
            f"byte {data[err.start]:#04x} is not UTF-8: re-save the file as UTF-8 (e.g. iconv -f cp1252 -t utf-8)",
            line=data.count(b"\n", 0, err.start) + 1,
        ) from err


def load_json(path: Path, what: str) -> Any:
    """Parse a JSON annotation file; a syntax error names the file and the line."""
    try:
        return json.loads(read_text(path, what))
    except json.JSONDecodeError as err:
        raise AnnotationError(path, f"not valid JSON ({err.msg})", line=err.lineno) from err


def read_lines(path: Path, what: str) -> Iterator[tuple[int, str]]:
    """(line number, stripped text) for each non-blank line of a text file."""
    for line, raw in enumerate(read_text(path, what).splitlines(), start=1):
        if raw.strip():
            yield line, raw.strip()


def read_csv_rows(
    path: Path, columns: Sequence[str] = (), delimiter: str = ","
) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, row) for each data row, checking the header has ``columns`` and every row is complete."""
    reader = csv.DictReader(io.StringIO(read_text(path, "annotation file"), newline=""), delimiter=delimiter)
    try:
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            raise AnnotationError(path, f"missing column(s) {missing}; the header has {reader.fieldnames}", line=1)
        start = reader.line_num + 1  # where the next row begins (a quoted field may run over several lines)
        for row in reader:
            if None in row or any(value is None for value in row.values()):
                fields = sum(v is not None for k, v in row.items() if k is not None) + len(row.get(None) or [])
                quoted = reader.line_num > start
                raise AnnotationError(
                    path,
                    f"expected {len(reader.fieldnames)} fields, got {fields}"
                    + (f' (a quote (") opened here runs to line {reader.line_num})' if quoted else ""),
                    line=start,
                )
            yield start, row
            start = reader.line_num + 1
    except csv.Error as err:  # e.g. a stray quote swallowing the rest of the file into one field
        raise AnnotationError(
            path, f'{err}: probably an unbalanced quote (") on this line or above', line=reader.line_num
        ) from err


def caption_text(value: Any, path: Path, line: int | None = None, entry: str | None = None) -> str:
    """A caption as read: it must be a string with some non-blank text."""
    if not isinstance(value, str):
        problem = f"a caption must be a string, got {type(value).__name__} {str(value)[:60]!r}"
        raise AnnotationError(path, problem, line=line, entry=entry)
    if not value.strip():
        raise AnnotationError(path, "empty caption: write the caption or remove the entry", line=line, entry=entry)
    return value


def require_records(records: list[VideoRecord], path: Path, split: str) -> list[VideoRecord]:
    if not records:
        raise AnnotationError(path, f"no entries for split {split!r}: the split is empty")
    return records


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
    if policy == KEEP_MISSING:
        return records
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
