"""MSR-VTT as released by CLIP4Clip (``msrvtt_data.zip``): 9k/7k train csv + MSRVTT_data.json, JSFUSION 1k-A test.

Train expands every caption of each train video (``--expand_msrvtt_sentences``, used by every X-CLIP script).
Val = test = the 1k-A JSFUSION csv, one caption per video. Videos: ``<videos>/<video_id>.mp4`` or ``.webm``.
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
    find_flat,
    load_json,
    read_csv_rows,
    require_records,
    resolve_missing,
)

DATA_JSON = "MSRVTT_data.json"
TRAIN_CSV = {"9k": "MSRVTT_train.9k.csv", "7k": "MSRVTT_train.7k.csv"}
TEST_CSV = "MSRVTT_JSFUSION_test.csv"


def _captions_by_video(path: Path) -> dict[str, list[str]]:
    data = load_json(path, "MSR-VTT captions")
    if not isinstance(data, dict) or "sentences" not in data:
        raise AnnotationError(path, "missing key 'sentences'")
    captions: dict[str, list[str]] = {}
    if not isinstance(data["sentences"], list):
        raise AnnotationError(path, "'sentences' must be a list of {video_id, caption, sen_id}")
    for i, item in enumerate(data["sentences"]):
        for key in ("video_id", "caption"):
            if not isinstance(item, dict) or key not in item:
                raise AnnotationError(path, f"has no key {key!r}", entry=f"sentences[{i}]")
        caption = caption_text(item["caption"], path, entry=f"sentences[{i}]")
        captions.setdefault(item["video_id"], []).append(caption)
    return captions


def read_msrvtt(
    annotations: str | Path,
    videos: str | Path,
    split: Literal["train", "val", "test"],
    train_set: Literal["9k", "7k"] = "9k",
    missing_videos: MissingPolicy = "error",
) -> list[VideoRecord]:
    """Records of one split; ``annotations`` is the folder holding the csv files and MSRVTT_data.json."""
    check_split(split, "MSR-VTT")
    if train_set not in TRAIN_CSV:
        raise ValueError(f"MSR-VTT has no train set {train_set!r}: use one of {', '.join(TRAIN_CSV)}")
    annotations, videos = Path(annotations), Path(videos)
    records = []
    if split == "train":
        captions = _captions_by_video(annotations / DATA_JSON)
        csv_path = annotations / TRAIN_CSV[train_set]
        for line, row in read_csv_rows(csv_path, ["video_id"]):
            vid = row["video_id"]
            if vid not in captions:
                raise AnnotationError(csv_path, f"video {vid!r} has no caption in {DATA_JSON}", line=line)
            records.append(VideoRecord(vid, find_flat(videos, vid), tuple(captions[vid]), split))
    else:  # val = test = JSFUSION 1k-A (official)
        csv_path = annotations / TEST_CSV
        for line, row in read_csv_rows(csv_path, ["key", "vid_key", "video_id", "sentence"]):
            vid = row["video_id"]
            sentence = caption_text(row["sentence"], csv_path, line=line)
            records.append(VideoRecord(vid, find_flat(videos, vid), (sentence,), split))
    require_records(records, csv_path, split)
    return resolve_missing(records, missing_videos, f"MSR-VTT {split} ({annotations})")
