"""Decoding and encoding videos for the index: the model (a trained X-CLIP folder or any CLIP for zero-shot), its
fingerprint, the device, the decode Dataset run in DataLoader workers, and the encoder that turns each video's
moments into feature rows and thumbnails for a writer."""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import av
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms.v2.functional import resize
from tqdm.auto import tqdm

from xclip_lightning.data.dataset import pad_frames, worker_init
from xclip_lightning.data.frame_cache import SamplerSettings
from xclip_lightning.data.video import Window, WindowSelector, sample_frames
from xclip_lightning.index.plan import Update
from xclip_lightning.index.records import IndexEntry, entry_id
from xclip_lightning.index.store import THUMBS, VideoIndexError
from xclip_lightning.index.writer import Row, RowBuffer, write_thumbnail
from xclip_lightning.inputs.transforms import resizer
from xclip_lightning.model.xclip import XCLIP, XCLIP_CONFIG_FILE, update_with_tensors

THUMB_HEIGHT = 64  # pixels of the thumbnail strip


def load_search_model(name_or_path: str | os.PathLike) -> XCLIP:
    """A trained X-CLIP folder (``export`` / ``save_pretrained``), or any CLIP folder or hub name for zero-shot
    search: then the head keeps only the video-sentence contrast with an identity matrix and no temporal encoder,
    which is exactly CLIP4Clip's zero-shot rule (cosine of the sentence and the mean of the frame features)."""
    if (Path(name_or_path) / XCLIP_CONFIG_FILE).is_file():
        return XCLIP.from_pretrained(name_or_path)
    return XCLIP.from_clip(str(name_or_path), contrasts=["video_sentence"], temporal_layers=0)


def model_fingerprint(model: XCLIP) -> str:
    """SHA-256 over the head configuration and every weight: an index is only valid for this exact model."""
    digest = hashlib.sha256(json.dumps(model.head.config(), sort_keys=True).encode())
    return update_with_tensors(digest, model.state_dict()).hexdigest()


def _duration(path: Path) -> float | None:
    try:
        with av.open(str(path)) as container:
            return container.duration / av.time_base if container.duration else None
    except av.error.FFmpegError:
        return None


class Decode(Dataset):
    """Decodes one video per item in DataLoader workers: its moments' frames (``WindowSelector``) and one thumbnail
    strip per moment; a failure becomes a reason, never a zero sample."""

    def __init__(
        self, paths: Sequence[Path], settings: SamplerSettings, window: float | None, stride: float | None = None
    ) -> None:
        self.paths, self.settings, self.window, self.stride = list(paths), settings, window, stride

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict:
        path, s = self.paths[i], self.settings
        windows = WindowSelector(self.window or math.inf, s.fps, s.max_frames, self.stride)
        try:
            sampled = sample_frames(
                path, s.fps, s.max_frames, s.mode, transform=resizer(s.image_size, s.resize), select=windows
            )
        except Exception as err:  # reported by path with its reason; the run goes on
            return {"index": i, "error": f"{type(err).__name__}: {err}"}
        thumbs = resize(sampled.frames, [THUMB_HEIGHT, THUMB_HEIGHT], antialias=True)  # [T,3,h,h]
        strips = [torch.cat(list(thumbs[list(w.positions)]), dim=2) for w in windows.windows]  # [3,h,count*h] each
        late = sampled.late_start  # moments are timed on the player's clock, from the file's presentation start
        return {
            "index": i,
            "frames": sampled.frames,
            "timestamps": sampled.timestamps + late,
            "windows": [Window(w.start + late, w.end + late, w.positions) for w in windows.windows],
            "duration": _duration(path),
            "jpegs": [_jpeg(strip) for strip in strips],
        }


def _jpeg(image: Tensor, quality: int = 85) -> Tensor:
    """uint8 [3,H,W] -> the JPEG file's bytes as a uint8 tensor, which worker processes pass on in shared memory
    (Pillow: torchvision.io's codecs are deprecated since torchvision 0.29)."""
    from io import BytesIO

    from PIL import Image

    buffer = BytesIO()
    Image.fromarray(image.permute(1, 2, 0).contiguous().numpy()).save(buffer, format="JPEG", quality=quality)
    return torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8)


def resolve_device(device: str) -> torch.device:
    """ "auto": the first GPU when there is one, else the CPU; anything else as torch reads it ("cpu", "cuda:1")."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise VideoIndexError(f"--device {device}: no CUDA GPU is visible here (use --device auto or cpu)")
    return resolved


class _Video:
    """A decoded video whose moments are being encoded; complete once every moment has its feature row."""

    def __init__(self, path: Path, item: dict) -> None:
        self.path, self.item = path, item
        positions = [list(w.positions) for w in item["windows"]]
        self.frames = [item["frames"][p] for p in positions]  # [count,3,S,S] per moment
        self.timestamps = [item["timestamps"][p] for p in positions]
        self.rows: list[dict[str, Tensor] | None] = [None] * len(positions)

    def moments(self, writer: RowBuffer) -> list[Row]:
        """(entry, feature row) of every moment; writes the thumbnails (recorded with the writer first)."""
        stat, windows = self.path.stat(), self.item["windows"]
        ids = [entry_id(str(self.path), stat.st_size, stat.st_mtime_ns, k) for k in range(len(windows))]
        writer.record_files([f"{THUMBS}/{i}.jpg" for i in ids])
        out = []
        for k, (w, row, vid) in enumerate(zip(windows, self.rows, ids, strict=True)):
            jpeg = self.item["jpegs"][k].numpy().tobytes()
            write_thumbnail(writer.folder, vid, jpeg)
            entry = IndexEntry(
                str(self.path), stat.st_size, stat.st_mtime_ns, self.item["duration"], self.timestamps[k].tolist(),
                vid, moment=k, moments=len(windows), start=round(w.start, 3), end=round(w.end, 3),
                thumb_sha256=hashlib.sha256(jpeg).hexdigest(),
            )  # fmt: skip
            out.append((entry, row))
        return out


class Encoder:
    """Encodes decoded videos' moments ``batch_size`` at a time (a long video spreads over several batches, short
    ones share one) and hands each complete video's rows to ``writer``, in the order the videos came."""

    def __init__(self, model: XCLIP, update: Update, writer: RowBuffer) -> None:
        self.model, self.settings, self.writer = model, update.settings, writer
        self.batch_size = update.batch_size
        self.device = next(model.parameters()).device
        self.waiting: list[tuple[_Video, int]] = []  # moments decoded, not yet encoded (FIFO)

    def add(self, path: Path, item: dict) -> None:
        """Queue a decoded video's moments (or record its failure), encoding full batches."""
        if "error" in item:
            self.writer.fail(str(path), item["error"])
            return
        video = _Video(path, item)
        self.waiting.extend((video, k) for k in range(len(video.rows)))
        while len(self.waiting) >= self.batch_size:
            self._encode_batch(self.waiting[: self.batch_size])
            self.waiting = self.waiting[self.batch_size :]

    def finish(self) -> None:
        """Encode the moments still queued."""
        if self.waiting:
            self._encode_batch(self.waiting)
            self.waiting = []

    @torch.no_grad()
    def _encode_batch(self, chunk: list[tuple[_Video, int]]) -> None:
        frames, mask = (
            torch.stack(x)
            for x in zip(*(pad_frames(v.frames[k], self.settings.max_frames) for v, k in chunk), strict=True)
        )
        device = self.device
        with torch.autocast(device.type, torch.float16, enabled=device.type == "cuda"):
            video = self.model.encode_video(frames.to(device, non_blocking=True), mask.to(device, non_blocking=True))
        for j, (v, k) in enumerate(chunk):
            v.rows[k] = {
                "video": video.video[j].float().cpu(),
                "frames": video.frames[j].float().cpu(),
                "frame_mask": video.frame_mask[j].cpu(),
            }
            if k == len(v.rows) - 1:
                self.writer.add_video(v.moments(self.writer))


def loader(todo: list[Path], update: Update, pin: bool) -> DataLoader:
    """Decoding workers, one video per item, prefetching while the model encodes."""
    return DataLoader(
        Decode(todo, update.settings, update.window, update.stride),
        batch_size=None,
        num_workers=update.workers,
        worker_init_fn=worker_init,
        pin_memory=pin,
        prefetch_factor=4 if update.workers else None,
    )


def encode_videos(model: XCLIP, todo: list[Path], update: Update, writer: RowBuffer, progress: bool) -> None:
    """Decode ``todo`` in DataLoader workers and encode it into ``writer`` (one process)."""
    encoder = Encoder(model, update, writer)
    batches = loader(todo, update, encoder.device.type == "cuda")
    with tqdm(
        total=len(todo), desc=f"indexing {len(todo)} videos", unit="video", disable=None if progress else True
    ) as bar:
        for item in batches:
            bar.update(1)
            encoder.add(todo[item["index"]], item)
        encoder.finish()
