"""Map-style datasets and their collate. Every batch is a dict; the keys, once:

    input_ids   long  [B,L]         caption tokens in the official layout (SOT, tokens, EOT, 0-padding)
    word_mask   bool  [B,L]         True on SOT, the caption tokens and EOT
    frames      uint8 [B,T,3,S,S]   resized, center-cropped RGB frames; padded slots are zero
    frame_mask  bool  [B,T]         True on real frames
    text_index  long  [B]           position of the caption in the split's caption list (evaluation)
    video_index long  [B]           position of the video in the split's video list (every dataset)

Training items are (video, caption) pairs; evaluation encodes each caption once (``CaptionDataset``, with the
caption-to-video index for the multi-caption protocol) and each unique video once (``VideoDataset``). Frames are
uint8 until the model normalises them on the device.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor
from torch.utils.data import Dataset, RandomSampler, default_collate

from xclip_lightning.data.benchmarks.common import VideoRecord
from xclip_lightning.data.frame_cache import FrameCache, SamplerSettings, VideoSource, decode_video
from xclip_lightning.data.video import VideoDecodeError
from xclip_lightning.inputs.tokenize import TokenizedText

BadVideoPolicy = Literal["error", "skip"]
Item = dict[str, Tensor]


def video_source(record: VideoRecord) -> VideoSource:
    if record.video_path is None:
        raise ValueError(f"video {record.video_id!r} has no file; the reader's missing-video policy should drop it")
    return VideoSource(record.video_path, record.end_time)


class FrameLoader:
    """Frames of one video, padded to ``max_frames``: from the frame cache when there is one, else decoded now."""

    def __init__(self, settings: SamplerSettings, cache: FrameCache | None) -> None:
        self.settings, self.cache = settings, cache

    def __call__(self, source: VideoSource) -> tuple[Tensor, Tensor]:
        """-> frames uint8 [T,3,S,S] zero-padded, frame_mask bool [T]."""
        if self.cache is None:
            return pad_frames(decode_video(source, self.settings).frames, self.settings.max_frames)
        t, size = self.settings.max_frames, self.settings.image_size
        padded = torch.zeros(t, 3, size, size, dtype=torch.uint8)
        frames = self.cache.frames_array(source)
        padded.numpy()[: len(frames)] = frames  # one copy, straight from the mapped file
        return padded, torch.arange(t) < len(frames)


def pad_frames(frames: Tensor, max_frames: int) -> tuple[Tensor, Tensor]:
    """uint8 [n,3,S,S] -> zero-padded [max_frames,3,S,S] and the bool mask [max_frames] of the real ones."""
    padded = frames.new_zeros(max_frames, *frames.shape[1:])
    padded[: len(frames)] = frames
    return padded, torch.arange(max_frames) < len(frames)


class _VideoItems(Dataset):
    """Shared by the three datasets: frames for a video index, honouring the bad-video policy when decoding on the
    fly (a cached build has already dropped or refused the bad ones)."""

    def __init__(self, records: Sequence[VideoRecord], frames: FrameLoader, bad_videos: BadVideoPolicy) -> None:
        self.records, self.load_frames, self.bad_videos = list(records), frames, bad_videos

    def _frames(self, video_index: int) -> Item | None:
        source = video_source(self.records[video_index])
        try:
            frames, mask = self.load_frames(source)
        except (VideoDecodeError, FileNotFoundError) as err:
            if self.bad_videos == "error":
                reason = err.reason if isinstance(err, VideoDecodeError) else str(err)
                raise VideoDecodeError(source.path, f"{reason} (set bad_videos='skip' to drop such videos)") from err
            warnings.warn(f"skipping a bad video: {err}", RuntimeWarning, stacklevel=2)
            return None
        return {"frames": frames, "frame_mask": mask, "video_index": torch.tensor(video_index)}


class PairDataset(_VideoItems):
    """Training: one item per (video, caption) pair, every caption of every video (official expansion)."""

    def __init__(
        self, records: Sequence[VideoRecord], text: TokenizedText, frames: FrameLoader, bad_videos: BadVideoPolicy
    ) -> None:
        super().__init__(records, frames, bad_videos)
        self.text = text
        self.caption_video = caption_to_video(self.records)

    def __len__(self) -> int:
        return len(self.caption_video)

    def __getitem__(self, index: int) -> Item | None:
        item = self._frames(int(self.caption_video[index]))
        if item is not None:
            item.update(input_ids=self.text.input_ids[index], word_mask=self.text.word_mask[index])
        return item


class CaptionDataset(Dataset):
    """Evaluation, text side: each caption once, with the index of its video."""

    def __init__(self, records: Sequence[VideoRecord], text: TokenizedText) -> None:
        self.text, self.caption_video = text, caption_to_video(records)

    def __len__(self) -> int:
        return len(self.caption_video)

    def __getitem__(self, index: int) -> Item:
        return {
            "input_ids": self.text.input_ids[index],
            "word_mask": self.text.word_mask[index],
            "text_index": torch.tensor(index),
            "video_index": self.caption_video[index],
        }


class VideoDataset(_VideoItems):
    """Evaluation and prediction, video side: each unique video once."""

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Item | None:
        item = self._frames(index)
        if item is not None:  # 0: a distractor (generic annotations' "captions": []), kept in the evaluation
            item["captions"] = torch.tensor(len(self.records[index].captions))
        return item


def all_captions(records: Sequence[VideoRecord]) -> list[str]:
    """Every caption, grouped by video in record order (the order ``caption_to_video`` indexes)."""
    return [caption for record in records for caption in record.captions]


def caption_to_video(records: Sequence[VideoRecord]) -> Tensor:
    """long [N_captions]: the video index of each caption of ``all_captions(records)``."""
    counts = torch.tensor([len(r.captions) for r in records], dtype=torch.long)
    return torch.repeat_interleave(torch.arange(len(records)), counts)


def collate(items: Sequence[Item | None]) -> dict[str, Any]:
    """``default_collate`` after dropping the items of skipped bad videos (already reported by the dataset)."""
    kept = [item for item in items if item is not None]
    if not kept:
        return {}
    return default_collate(kept)


def worker_init(_: int) -> None:
    """One intra-op thread per DataLoader worker: the parallelism is across workers (decoding, resizing)."""
    torch.set_num_threads(1)


class EpochShuffleSampler(RandomSampler):
    """A RandomSampler whose order depends only on (seed, epoch): a resumed run sees the same batches as an
    uninterrupted one. Lightning calls ``set_epoch`` every epoch. Under DDP the data module gives a
    DistributedSampler seeded with the same seed instead."""

    def __init__(self, data_source: Dataset, seed: int = 0) -> None:
        super().__init__(data_source, generator=torch.Generator())
        self.seed = seed
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.generator.manual_seed(self.seed + epoch)
