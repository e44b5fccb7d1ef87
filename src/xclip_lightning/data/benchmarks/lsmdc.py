"""LSMDC 2016 (needs MPII permission): tab-separated files with exactly six fields per line, no header.

``clip_id, start_aligned, end_aligned, start_extracted, end_extracted, sentence``. One caption per clip
(official: a clip listed twice keeps its last sentence); single-caption metrics. Videos: any file under the folder
(walked recursively) whose stem is the clip id; the official loader drops clips it cannot find.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from xclip_lightning.data.benchmarks.common import (
    AnnotationError,
    MissingPolicy,
    VideoRecord,
    index_by_stem,
    read_lines,
    resolve_missing,
)

SPLIT_FILES = {
    "train": "LSMDC16_annos_training.csv",
    "val": "LSMDC16_annos_val.csv",
    "test": "LSMDC16_challenge_1000_publictect.csv",  # sic: the released file name
}
FIELDS = 6  # official loader asserts exactly six tab-separated fields


def read_lsmdc(
    annotations: str | Path,
    videos: str | Path,
    split: Literal["train", "val", "test"],
    missing_videos: MissingPolicy = "error",
) -> list[VideoRecord]:
    """Records of one split; ``annotations`` is the folder holding the three LSMDC16 csv files."""
    annotations, videos = Path(annotations), Path(videos)
    path = annotations / SPLIT_FILES[split]
    sentences: dict[str, str] = {}
    for line, text in read_lines(path, f"LSMDC {split} annotations"):
        fields = text.split("\t")
        if len(fields) != FIELDS:
            raise AnnotationError(
                path, f"expected {FIELDS} tab-separated fields (clip_id ... sentence), got {len(fields)}", line=line
            )
        sentences[fields[0]] = fields[5]
    on_disk = index_by_stem(videos)
    records = [VideoRecord(cid, on_disk.get(cid), (sentence,), split) for cid, sentence in sentences.items()]
    return resolve_missing(records, missing_videos, f"LSMDC {split} ({annotations})")
