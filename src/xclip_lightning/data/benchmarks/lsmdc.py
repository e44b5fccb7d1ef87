"""LSMDC 2016 (needs MPII permission): tab-separated files with exactly six fields per line, no header.

``clip_id, start_aligned, end_aligned, start_extracted, end_extracted, sentence``. Every line is one pair, as the
official loader keeps them: a clip listed on two lines gives two records (two pairs for training, two rows and two
columns of the evaluation matrix). Single-caption metrics. Videos: any file under the folder (walked recursively)
whose stem is the clip id; the official loader drops clips it cannot find (``missing_videos='skip'``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from xclip_lightning.data.benchmarks.common import (
    AnnotationError,
    MissingPolicy,
    VideoRecord,
    caption_text,
    check_split,
    index_by_stem,
    read_lines,
    require_records,
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
    """Records of one split, one per line; ``annotations`` is the folder holding the three LSMDC16 csv files."""
    check_split(split, "LSMDC")
    annotations, videos = Path(annotations), Path(videos)
    path = annotations / SPLIT_FILES[split]
    pairs = []
    for line, text in read_lines(path, f"LSMDC {split} annotations"):
        fields = text.split("\t")
        if len(fields) != FIELDS:
            raise AnnotationError(
                path, f"expected {FIELDS} tab-separated fields (clip_id ... sentence), got {len(fields)}", line=line
            )
        pairs.append((fields[0], caption_text(fields[5], path, line=line)))
    on_disk = index_by_stem(videos)
    records = [VideoRecord(cid, on_disk.get(cid), (sentence,), split) for cid, sentence in pairs]
    return resolve_missing(require_records(records, path, split), missing_videos, f"LSMDC {split} ({annotations})")
