"""Symmetric InfoNCE over a texts x videos logit matrix (xclip-spec.md §8)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def symmetric_infonce(logits: Tensor) -> Tensor:
    """``(CE(logits) + CE(logits^T)) / 2`` with the matching pairs on the diagonal.

    logits [B,B], texts as rows: the first term is text->video, the second video->text. The official code averages
    the two; the paper writes their sum.

    Example:
        >>> round(symmetric_infonce(torch.eye(3) * 100).item(), 6)
        0.0
    """
    if logits.dim() != 2 or logits.shape[0] != logits.shape[1]:
        raise ValueError(f"symmetric InfoNCE needs a square [B,B] matrix, got {tuple(logits.shape)}")
    target = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
