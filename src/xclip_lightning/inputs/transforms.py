"""CLIP preprocessing on uint8 video tensors with torchvision.transforms.v2 (xclip-spec.md §11).

Resize the short side to S (bicubic, antialiased), center crop S x S, and, on the device, normalise with CLIP's
mean and std. There is no augmentation in the official pipeline, so the resized uint8 frames can be cached.
SigLIP's processor instead resizes the whole frame to S x S (``squash``: no crop, the aspect ratio is not kept) and
normalises with mean = std = 0.5 (``SIGLIP_MEAN`` / ``SIGLIP_STD``).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor
from torchvision.transforms import v2

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP preprocessing (spec §11)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SIGLIP_MEAN = SIGLIP_STD = (0.5, 0.5, 0.5)  # SiglipImageProcessor's image_mean / image_std
Resize = Literal["crop", "squash"]
DEFAULT_IMAGE_SIZE = 224  # CLIP ViT-B/32 and ViT-B/16 input size


def resize_crop(size: int = DEFAULT_IMAGE_SIZE) -> v2.Compose:
    """uint8 [T,3,H,W] -> uint8 [T,3,S,S]: short side to S (bicubic, antialias), then center crop S.

    On uint8 tensors torch's bicubic resize rounds and clamps like PIL, so this matches the official PIL pipeline
    within 2/255 on a few edge pixels (tests/data/test_transforms.py states the bound after normalisation). Works
    on one frame [3,H,W] as well (the sampler applies it frame by frame).
    """
    return v2.Compose(
        [
            v2.Resize(size, interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
            v2.CenterCrop(size),
        ]
    )


def resize_squash(size: int = DEFAULT_IMAGE_SIZE) -> v2.Resize:
    """uint8 [T,3,H,W] -> uint8 [T,3,S,S]: the whole frame resized to S x S (bicubic, antialias), as SigLIP's
    image processor does (``do_resize`` to {height: S, width: S}, no crop)."""
    return v2.Resize([size, size], interpolation=v2.InterpolationMode.BICUBIC, antialias=True)


def resizer(size: int, mode: Resize = "crop") -> v2.Transform:
    """The frame resize of a backbone: CLIP's ``crop`` or SigLIP's ``squash``."""
    if mode not in ("crop", "squash"):
        raise ValueError(f"unknown resize {mode!r}: use 'crop' (CLIP) or 'squash' (SigLIP)")
    return resize_crop(size) if mode == "crop" else resize_squash(size)


def normalize(
    frames: Tensor,
    dtype: torch.dtype = torch.float32,
    mean: tuple[float, float, float] = CLIP_MEAN,
    std: tuple[float, float, float] = CLIP_STD,
) -> Tensor:
    """uint8 [...,3,H,W] -> normalised pixels of ``dtype`` (computed in at least float32); CLIP's mean and std
    unless given."""
    work = torch.float64 if dtype == torch.float64 else torch.float32
    mean = torch.tensor(mean, device=frames.device, dtype=work).view(3, 1, 1)
    std = torch.tensor(std, device=frames.device, dtype=work).view(3, 1, 1)
    return ((frames.to(work) / 255.0 - mean) / std).to(dtype)
