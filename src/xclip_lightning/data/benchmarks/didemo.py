"""DiDeMo (LocalizingMoments jsons + collaborative-experts splits): video-paragraph retrieval.

``{split}_list.txt`` names the videos; ``{split}_data.json`` is a list of ``{"video", "description", "times", ...}``.
All descriptions of a video are joined into one paragraph, in file order, and the clip is always seconds 0-31
(official: the annotated times are computed, then overwritten).

Ids keep the original file's extension (``x.mov``, ``x.avi``, ``x.mp4``, even a bare ``x.``), and users hold the
videos either under the id itself or re-encoded as ``<id>.mp4``. ``lookup='any'`` (default) finds a video under
any of: the id itself, ``<id>.<video extension>`` (so ``x.mp4.mp4``), or the id's stem with any video extension
(``x.mp4`` for the id ``x.avi``), searched recursively. ``lookup='official'`` is X-CLIP's rule, the file name up to
``.mp4``: it can never match an id that contains ``.mp4`` (179 of 1,004 test, 223 of 1,065 val, 1,279 of 8,392
train ids); those are dropped with a warning giving the count, as the official code drops them silently.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Literal

from xclip_lightning.data.benchmarks.common import (
    SHOW_MISSING,
    AnnotationError,
    MissingPolicy,
    VideoRecord,
    caption_text,
    check_split,
    index_by_stem,
    load_json,
    read_lines,
    require_records,
    resolve_missing,
)

CLIP_SECONDS = 32  # official: start 0, end 31, both seconds included -> sample [0, 32) s
DidemoLookup = Literal["any", "official"]
OFFICIAL_SUFFIX = ".mp4"  # X-CLIP: video_file.split(".mp4")[0] is the id


def _files_by_name(folder: Path) -> dict[str, Path]:
    index: dict[str, Path] = {}
    for root, _, files in os.walk(folder):
        for name in sorted(files):
            index.setdefault(name, Path(root) / name)
    return index


def _finder(folder: Path, lookup: DidemoLookup):
    """id -> path or None, under the chosen rule."""
    by_name = _files_by_name(folder)
    if lookup == "official":
        official: dict[str, Path] = {}
        for name, path in by_name.items():
            official.setdefault(name.split(OFFICIAL_SUFFIX)[0], path)
        return official.get
    by_stem = index_by_stem(folder)  # "x.avi.mp4" -> "x.avi", "x..mp4" -> "x.", "x.mp4" -> "x"

    def find(video_id: str) -> Path | None:
        stem = video_id.rpartition(".")[0] if "." in video_id else video_id
        return by_name.get(video_id) or by_stem.get(video_id) or by_stem.get(stem)

    return find


def _paragraphs(json_path: Path, wanted: list[str]) -> dict[str, list[str]]:
    data = load_json(json_path, "DiDeMo descriptions")
    if not isinstance(data, list):
        raise AnnotationError(json_path, f"expected a list of {{video, description, times}}, got {type(data).__name__}")
    descriptions: dict[str, list[str]] = {vid: [] for vid in wanted}
    for i, item in enumerate(data):
        for key in ("video", "description"):
            if not isinstance(item, dict) or key not in item:
                raise AnnotationError(json_path, f"has no key {key!r}", entry=f"[{i}]")
        if item["video"] in descriptions:
            descriptions[item["video"]].append(caption_text(item["description"], json_path, entry=f"[{i}]").strip())
    return descriptions


def read_didemo(
    annotations: str | Path,
    videos: str | Path,
    split: Literal["train", "val", "test"],
    missing_videos: MissingPolicy = "error",
    lookup: DidemoLookup = "any",
) -> list[VideoRecord]:
    """Records of one split, one paragraph per video (see the module docstring for ``lookup``)."""
    check_split(split, "DiDeMo")
    if lookup not in ("any", "official"):
        raise ValueError(f"unknown DiDeMo lookup {lookup!r}: use 'any' or 'official'")
    annotations, videos = Path(annotations), Path(videos)
    list_path, json_path = annotations / f"{split}_list.txt", annotations / f"{split}_data.json"
    wanted = list(dict.fromkeys(vid for _, vid in read_lines(list_path, f"DiDeMo {split} split")))
    descriptions = _paragraphs(json_path, wanted)
    without = [vid for vid, texts in descriptions.items() if not texts]
    if without:  # the official loader ignores them silently
        warnings.warn(
            f"{list_path}: {len(without)} video(s) have no description in {json_path.name} and are left out, "
            f"e.g. {', '.join(without[:SHOW_MISSING])}",
            RuntimeWarning,
            stacklevel=2,
        )
    if lookup == "official":
        unreachable = [vid for vid in descriptions if OFFICIAL_SUFFIX in vid]
        if unreachable:
            warnings.warn(
                f"{list_path}: X-CLIP's video lookup (lookup='official') can never match the {len(unreachable)} of "
                f"{len(descriptions)} ids that contain '{OFFICIAL_SUFFIX}'; they are dropped as the official code "
                f"drops them (e.g. {', '.join(unreachable[:SHOW_MISSING])}). lookup='any' finds them",
                RuntimeWarning,
                stacklevel=2,
            )
            descriptions = {vid: texts for vid, texts in descriptions.items() if OFFICIAL_SUFFIX not in vid}
    find = _finder(videos, lookup)
    records = [
        VideoRecord(vid, find(vid), (" ".join(texts),), split, end_time=CLIP_SECONDS)
        for vid, texts in descriptions.items()
        if texts
    ]
    require_records(records, list_path, split)
    return resolve_missing(records, missing_videos, f"DiDeMo {split} ({annotations})")
