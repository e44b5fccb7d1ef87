"""MSVD as released by CLIP4Clip / collaborative-experts: raw-captions.pkl + {train,val,test}_list.txt.

Every caption of a video is kept; evaluation uses the multi-caption protocol. Videos: any file under the folder
(walked recursively) whose stem is the id (YouTubeClips ``*.avi``). The pickle is read with an unpickler that
accepts only dicts, lists and strings: a pickle can run code, and this one never needs to.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any, Literal

from xclip_lightning.data.benchmarks.common import (
    AnnotationError,
    MissingPolicy,
    VideoRecord,
    caption_text,
    check_split,
    index_by_stem,
    read_lines,
    require_file,
    require_records,
    resolve_missing,
)

CAPTIONS_PKL = "raw-captions.pkl"


class _DataOnlyUnpickler(pickle.Unpickler):
    """Dicts, lists, tuples and strings are built from opcodes alone; any class or function lookup is refused."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(
            f"refusing to load {module}.{name}: {CAPTIONS_PKL} may only hold dicts, lists and strings"
        )


def load_raw_captions(path: Path) -> dict[str, list[str]]:
    """video id -> captions, each caption a list of word tokens joined with spaces (official)."""
    try:
        data = _DataOnlyUnpickler(io.BytesIO(require_file(path, "MSVD captions").read_bytes())).load()
    except (pickle.UnpicklingError, EOFError, ValueError) as err:
        raise AnnotationError(path, f"cannot be read safely: {err}") from err
    if not isinstance(data, dict):
        raise AnnotationError(path, f"expected a dict of video id -> captions, got {type(data).__name__}")
    captions = {}
    for vid, caps in data.items():
        if not isinstance(caps, list) or not caps or not all(isinstance(c, list | str) for c in caps):
            raise AnnotationError(path, "expected a non-empty list of token lists", entry=f"[{vid!r}]")
        if not all(isinstance(token, str) for c in caps if isinstance(c, list) for token in c):
            raise AnnotationError(path, "a caption's tokens must be strings", entry=f"[{vid!r}]")
        captions[str(vid)] = [
            caption_text(" ".join(c) if isinstance(c, list) else c, path, entry=f"[{vid!r}][{i}]")
            for i, c in enumerate(caps)
        ]
    return captions


def read_msvd(
    annotations: str | Path,
    videos: str | Path,
    split: Literal["train", "val", "test"],
    missing_videos: MissingPolicy = "error",
) -> list[VideoRecord]:
    check_split(split, "MSVD")
    annotations, videos = Path(annotations), Path(videos)
    captions = load_raw_captions(annotations / CAPTIONS_PKL)
    list_path = annotations / f"{split}_list.txt"
    on_disk = index_by_stem(videos)
    records = []
    for line, vid in read_lines(list_path, f"MSVD {split} split"):
        if vid not in captions:
            raise AnnotationError(list_path, f"video {vid!r} has no captions in {CAPTIONS_PKL}", line=line)
        records.append(VideoRecord(vid, on_disk.get(vid), tuple(captions[vid]), split))
    require_records(records, list_path, split)
    return resolve_missing(records, missing_videos, f"MSVD {split} ({annotations})")
