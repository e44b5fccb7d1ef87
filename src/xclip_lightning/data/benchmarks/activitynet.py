"""ActivityNet Captions (collaborative-experts splits): video-paragraph retrieval.

``train_ids.json`` / ``val_ids.json`` list pseudo ids ``v_<youtube_id>``; ``train.json`` / ``val_1.json`` map each
pseudo id to ``{"duration", "timestamps", "sentences"}``. The paragraph is all sentences joined; the clip is the
whole video. Val = test = ``val_1`` (official). Video file: ``<youtube_id>.<ext>`` anywhere under the folder.
The released id lists name 15 train and 9 val ids that have no captions: they are left out with one warning, as
the official loader leaves them out (10,009 train and 4,917 val/test videos remain).
"""

from __future__ import annotations

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
    require_records,
    resolve_missing,
)

SPLIT_FILES = {"train": ("train_ids.json", "train.json"), "val": ("val_ids.json", "val_1.json")}
PSEUDO_PREFIX = "v_"


def _paragraph(entry: object, path: Path, pseudo_id: str) -> str:
    where = f"[{pseudo_id!r}]"
    if not isinstance(entry, dict) or not isinstance(entry.get("sentences"), list) or not entry["sentences"]:
        raise AnnotationError(path, "needs 'sentences', a non-empty list of strings", entry=where)
    sentences = [caption_text(s, path, entry=f"{where}['sentences'][{i}]") for i, s in enumerate(entry["sentences"])]
    return " ".join(s.strip() for s in sentences)


def read_activitynet(
    annotations: str | Path,
    videos: str | Path,
    split: Literal["train", "val", "test"],
    missing_videos: MissingPolicy = "error",
) -> list[VideoRecord]:
    """Records of one split, one paragraph per video; ``test`` reads the val files (official)."""
    check_split(split, "ActivityNet")
    annotations, videos = Path(annotations), Path(videos)
    ids_path, captions_path = (annotations / name for name in SPLIT_FILES["train" if split == "train" else "val"])
    pseudo_ids = load_json(ids_path, f"ActivityNet {split} ids")
    captions = load_json(captions_path, f"ActivityNet {split} captions")
    if not isinstance(pseudo_ids, list) or not all(isinstance(p, str) for p in pseudo_ids):
        raise AnnotationError(ids_path, "expected a JSON list of ids (strings)")
    if not isinstance(captions, dict):
        raise AnnotationError(captions_path, "expected a JSON object mapping each id to {duration, sentences}")
    uncaptioned = [p for p in pseudo_ids if p not in captions]
    if uncaptioned:  # the released lists name 15 train / 9 val such ids; the official loader skips them
        warnings.warn(
            f"{ids_path}: {len(uncaptioned)} of {len(pseudo_ids)} ids have no captions in {captions_path.name} and "
            f"are left out, as the official loader does (e.g. {', '.join(uncaptioned[:SHOW_MISSING])})",
            RuntimeWarning,
            stacklevel=2,
        )
    on_disk = index_by_stem(videos)
    records = []
    for pseudo_id in pseudo_ids:
        if pseudo_id in captions:
            youtube_id = pseudo_id.removeprefix(PSEUDO_PREFIX)
            paragraph = _paragraph(captions[pseudo_id], captions_path, pseudo_id)
            records.append(VideoRecord(youtube_id, on_disk.get(youtube_id), (paragraph,), split))
    require_records(records, ids_path, split)
    return resolve_missing(records, missing_videos, f"ActivityNet {split} ({annotations})")
