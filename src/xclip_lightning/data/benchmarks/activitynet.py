"""ActivityNet Captions (collaborative-experts splits): video-paragraph retrieval.

``train_ids.json`` / ``val_ids.json`` list pseudo ids ``v_<youtube_id>``; ``train.json`` / ``val_1.json`` map each
pseudo id to ``{"duration", "timestamps", "sentences"}``. The paragraph is all sentences joined; the clip is the
whole video. Val = test = ``val_1`` (official). Video file: ``<youtube_id>.<ext>`` anywhere under the folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from xclip_lightning.data.benchmarks.common import (
    AnnotationError,
    MissingPolicy,
    VideoRecord,
    index_by_stem,
    load_json,
    resolve_missing,
)

SPLIT_FILES = {"train": ("train_ids.json", "train.json"), "val": ("val_ids.json", "val_1.json")}
PSEUDO_PREFIX = "v_"


def read_activitynet(
    annotations: str | Path,
    videos: str | Path,
    split: Literal["train", "val", "test"],
    missing_videos: MissingPolicy = "error",
) -> list[VideoRecord]:
    """Records of one split, one paragraph per video; ``test`` reads the val files (official)."""
    annotations, videos = Path(annotations), Path(videos)
    ids_path, captions_path = (annotations / name for name in SPLIT_FILES["train" if split == "train" else "val"])
    pseudo_ids = load_json(ids_path, f"ActivityNet {split} ids")
    captions = load_json(captions_path, f"ActivityNet {split} captions")
    if not isinstance(pseudo_ids, list) or not isinstance(captions, dict):
        raise AnnotationError(ids_path, "expected a list of ids here and a dict of id -> {sentences} beside it")
    on_disk = index_by_stem(videos)
    records = []
    for pseudo_id in pseudo_ids:
        entry = captions.get(pseudo_id)
        if entry is None:
            raise AnnotationError(captions_path, f"no entry for {pseudo_id!r} (listed in {ids_path.name})")
        if not isinstance(entry, dict) or not isinstance(entry.get("sentences"), list):
            raise AnnotationError(captions_path, f"{pseudo_id!r} has no key 'sentences' (a list of strings)")
        youtube_id = pseudo_id.removeprefix(PSEUDO_PREFIX)
        paragraph = " ".join(s.strip() for s in entry["sentences"])
        records.append(VideoRecord(youtube_id, on_disk.get(youtube_id), (paragraph,), split))
    return resolve_missing(records, missing_videos, f"ActivityNet {split} ({annotations})")
