"""DiDeMo (LocalizingMoments jsons + collaborative-experts splits): video-paragraph retrieval.

``{split}_list.txt`` names the videos; ``{split}_data.json`` is a list of ``{"video", "description", "times", ...}``.
All descriptions of a video are joined into one paragraph, in file order, and the clip is always seconds 0-31
(official: the annotated times are computed, then overwritten). A video file matches an id by its name up to
``.mp4`` (X-CLIP's rule, so re-encoded ``<original name>.mp4`` files work), searched recursively.
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
    load_json,
    read_lines,
    resolve_missing,
)

CLIP_SECONDS = 32  # official: start 0, end 31, both seconds included -> sample [0, 32) s


def _index_up_to_mp4(folder: Path) -> dict[str, Path]:
    index: dict[str, Path] = {}
    for root, _, files in os.walk(folder):
        for name in sorted(files):
            index.setdefault(name.split(".mp4")[0], Path(root) / name)
    return index


def read_didemo(
    annotations: str | Path,
    videos: str | Path,
    split: Literal["train", "val", "test"],
    missing_videos: MissingPolicy = "error",
) -> list[VideoRecord]:
    """Records of one split, one paragraph per video."""
    annotations, videos = Path(annotations), Path(videos)
    list_path, json_path = annotations / f"{split}_list.txt", annotations / f"{split}_data.json"
    wanted = [vid for _, vid in read_lines(list_path, f"DiDeMo {split} split")]
    data = load_json(json_path, f"DiDeMo {split} descriptions")
    if not isinstance(data, list):
        raise AnnotationError(json_path, f"expected a list of {{video, description, times}}, got {type(data).__name__}")
    descriptions: dict[str, list[str]] = {vid: [] for vid in wanted}
    for i, item in enumerate(data):
        for key in ("video", "description"):
            if not isinstance(item, dict) or key not in item:
                raise AnnotationError(json_path, f"entry [{i}] has no key {key!r}")
        if item["video"] in descriptions:
            descriptions[item["video"]].append(item["description"])
    without = [vid for vid, texts in descriptions.items() if not texts]
    if without:  # the official loader ignores them silently
        warnings.warn(
            f"{list_path}: {len(without)} video(s) have no description in {json_path.name} and are left out, "
            f"e.g. {', '.join(without[:SHOW_MISSING])}",
            RuntimeWarning,
            stacklevel=2,
        )
    on_disk = _index_up_to_mp4(videos)
    records = [
        VideoRecord(vid, on_disk.get(vid), (" ".join(texts),), split, end_time=CLIP_SECONDS)
        for vid, texts in descriptions.items()
        if texts
    ]
    return resolve_missing(records, missing_videos, f"DiDeMo {split} ({annotations})")
