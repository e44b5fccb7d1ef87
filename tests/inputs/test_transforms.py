"""The tensor pipeline against the official PIL one (Resize bicubic on PIL images, CenterCrop, ToTensor, Normalize)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from xclip_lightning.inputs.transforms import CLIP_MEAN, CLIP_STD, normalize, resize_crop

# Measured here: at most 2/255 per pixel, on a few pixels at sharp edges (2/255 over CLIP's smallest std 0.2613 =
# 0.0300 after normalisation); the mean difference is ~5e-5 and more than 99.9% of values are within 1/255.
MAX_DIFF_AFTER_NORMALISATION = 0.031
ONE_LEVEL = 1 / 255 / min(CLIP_STD) + 1e-6


def official_pil(image: np.ndarray, size: int) -> torch.Tensor:
    """CLIP4Clip / X-CLIP: PIL bicubic resize of the short side (torchvision's size rule), center crop, scale, norm."""
    h, w = image.shape[:2]
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    pil = Image.fromarray(image).resize((new_w, new_h), Image.BICUBIC)
    top, left = round((new_h - size) / 2.0), round((new_w - size) / 2.0)
    pil = pil.crop((left, top, left + size, top + size)).convert("RGB")
    x = torch.from_numpy(np.asarray(pil, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return (x - torch.tensor(CLIP_MEAN).view(3, 1, 1)) / torch.tensor(CLIP_STD).view(3, 1, 1)


@pytest.mark.parametrize(("height", "width"), [(240, 320), (720, 1280), (360, 202), (224, 224)])
def test_tensor_pipeline_matches_the_official_pil_pipeline(height, width):
    rng = np.random.default_rng(height + width)
    # a smooth image with sharp edges: the worst case for resampling differences
    y, x = np.mgrid[0:height, 0:width]
    base = (127 + 100 * np.sin(x / 7.0) * np.cos(y / 11.0)).astype(np.uint8)
    image = np.stack([base, np.flipud(base), (base // 2 + 64)], axis=-1)
    image[height // 3 : height // 2, width // 4 : width // 2] = rng.integers(0, 256, 3)
    frames = torch.from_numpy(image).permute(2, 0, 1)[None]  # [1,3,H,W]
    ours = normalize(resize_crop(224)(frames))[0]
    reference = official_pil(image, 224)
    assert ours.shape == reference.shape == (3, 224, 224)
    diff = (ours - reference).abs()
    assert diff.max().item() < MAX_DIFF_AFTER_NORMALISATION
    assert diff.mean().item() < 2e-4
    assert (diff > ONE_LEVEL).float().mean().item() < 1e-3
