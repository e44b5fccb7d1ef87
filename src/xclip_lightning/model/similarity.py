"""The X-CLIP similarity, one small function per equation (xclip-spec.md §5-§6; paper §3.2-§3.3).

This module is for reading: every function is the equation as written, on whole tensors. ``XCLIPHead`` runs the
same values laid out for speed (``fast_similarity.py``; tests/model/test_fast_similarity.py checks they agree).

Every contrast takes *normalised* features and returns a similarity matrix with texts as rows and videos as
columns, before the logit scale. Shape letters: ``Nt`` texts, ``Nv`` videos, ``L`` word slots, ``T`` frame slots,
``D`` embedding width. Masks are bool, True = valid; ``None`` is the official behaviour, where every word slot
(SOT, EOT, padding) and every frame slot (padded frames too) takes part in every softmax, mean and max.

    video_sentence  S_vs[t,v] = sentence_t^T G video_v                                         (coarse)
    video_word      S_vw[t,v] = A_words(video_v . word_tl ; M_word_logit)                       (cross)
    sentence_frame  S_sf[t,v] = A_frames(sentence_t . frame_vf ; M_frame_logit)                 (cross)
    frame_word      C[t,l,f,v] = (word_tl^T Lambda) . frame_vf                                  (fine)
                    S_fw[t,v] = ( A_frames(A_words(C; M_word); M_frame2) + A_words(A_frames(C; M_frame); M_word2) ) / 2
    logits          = logit_scale x mean of the enabled contrasts
    AOSM            A(x; M) = sum_j softmax(x / tau)_j (M x)_j,  tau = 0.01
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

AOSM_TEMPERATURE = 0.01  # official code (the literal `/ 1e-2`, written six times) and paper Tab. 9
Pooling = Literal["aosm", "mean", "max"]
Aggregation = Literal["aosm", "mean_mean", "mean_max", "max_mean", "max_max"]
Contrast = Literal["video_sentence", "video_word", "sentence_frame", "frame_word"]
CONTRASTS: tuple[Contrast, ...] = ("video_sentence", "video_word", "sentence_frame", "frame_word")


def stage_poolings(aggregation: Aggregation) -> tuple[Pooling, Pooling]:
    """Split an aggregation name into (first stage, second stage) poolings (paper Tab. 7).

    The first pooling reduces the frame-word matrix over words (per frame) and over frames (per word); the second
    reduces the resulting vectors to one score, and also reduces the video-word and sentence-frame vectors, which
    are instance-level aggregations of the same kind. ``aosm`` uses AOSM in both stages.
    """
    if aggregation == "aosm":
        return "aosm", "aosm"
    first, _, second = aggregation.partition("_")
    if first not in ("mean", "max") or second not in ("mean", "max"):
        raise ValueError(f"unknown aggregation {aggregation!r}; expected aosm, mean_mean, mean_max, max_mean, max_max")
    return first, second  # type: ignore[return-value]


# ---- pooling over one dimension of K slots ---------------------------------------------------------------------


def aosm(
    scores: Tensor, weight: Tensor, dim: int, mask: Tensor | None = None, temperature: float = AOSM_TEMPERATURE
) -> Tensor:
    """Attention over similarity matrix: ``A(x; M) = sum_j softmax(x / tau)_j (M x)_j`` over ``dim`` (size K).

    scores [..., K, ...], weight M [K,K] (learnable, identity at initialisation), mask broadcastable to scores.
    A masked slot gets no softmax weight and contributes 0 to ``M x``.

    Example:
        >>> round(aosm(torch.tensor([[0.2, 0.9, 0.1]]), torch.eye(3), dim=1).item(), 4)  # ~ max at tau 0.01
        0.9
    """
    x = scores.movedim(dim, -1)  # [...,K]
    valid = None if mask is None else mask.expand_as(scores).movedim(dim, -1)
    mixed = (x if valid is None else x.masked_fill(~valid, 0.0)) @ weight.T  # (M x)_j = sum_k M_jk x_k
    logits = x / temperature if valid is None else (x / temperature).masked_fill(~valid, float("-inf"))
    return (torch.softmax(logits, dim=-1) * mixed).sum(-1)


def mean_pool(scores: Tensor, dim: int, mask: Tensor | None = None) -> Tensor:
    """Mean over ``dim``, over the valid slots only with a mask (at least one slot counted)."""
    if mask is None:
        return scores.mean(dim)
    weight = mask.to(scores.dtype).expand_as(scores)
    return (scores * weight).sum(dim) / weight.sum(dim).clamp(min=1)


def max_pool(scores: Tensor, dim: int, mask: Tensor | None = None) -> Tensor:
    """Max over ``dim``, over the valid slots only with a mask."""
    return (scores if mask is None else scores.masked_fill(~mask, float("-inf"))).amax(dim)


def pool(
    scores: Tensor,
    dim: int,
    how: Pooling,
    weight: Tensor | None = None,
    mask: Tensor | None = None,
    temperature: float = AOSM_TEMPERATURE,
) -> Tensor:
    """``aosm`` (with its matrix ``weight``), ``mean`` or ``max`` over ``dim``."""
    if how == "aosm":
        if weight is None:
            raise ValueError("AOSM pooling needs its mixing matrix `weight` [K,K]")
        return aosm(scores, weight, dim, mask, temperature)
    if how == "mean":
        return mean_pool(scores, dim, mask)
    if how == "max":
        return max_pool(scores, dim, mask)
    raise ValueError(f"unknown pooling {how!r}; expected aosm, mean or max")


# ---- the video-level feature (spec §5) -------------------------------------------------------------------------


def video_feature(frame_emb: Tensor, frame_mask: Tensor) -> Tensor:
    """``u_v = normalise(mean over valid frames of normalise(phi_vf))``: frame_emb [Nv,T,D] (temporal-encoder
    output), frame_mask [Nv,T] -> video_emb [Nv,D]. The divisor is clamped to 1 (the official guard)."""
    mask = frame_mask.to(frame_emb.dtype).unsqueeze(-1)  # [Nv,T,1]
    summed = (F.normalize(frame_emb, dim=-1) * mask).sum(1)  # [Nv,D]
    return F.normalize(summed / mask.sum(1).clamp(min=1), dim=-1)


# ---- the four contrasts (spec §6) ------------------------------------------------------------------------------


def video_sentence(sentence_emb: Tensor, video_emb: Tensor, global_mat: Tensor) -> Tensor:
    """Coarse: ``sentence_t^T G video_v``. sentence [Nt,D], video [Nv,D], G [D,D] -> [Nt,Nv]."""
    return sentence_emb @ global_mat @ video_emb.T


def video_word(
    word_emb: Tensor,
    video_emb: Tensor,
    word_logit_weight: Tensor | None,
    how: Pooling = "aosm",
    word_mask: Tensor | None = None,
    temperature: float = AOSM_TEMPERATURE,
) -> Tensor:
    """Cross: every word against the video, pooled over words. words [Nt,L,D], video [Nv,D] -> [Nt,Nv]."""
    scores = torch.einsum("tld,vd->tlv", word_emb, video_emb)  # [Nt,L,Nv]
    mask = None if word_mask is None else word_mask[:, :, None]  # [Nt,L,1]
    return pool(scores, 1, how, word_logit_weight, mask, temperature)


def sentence_frame(
    sentence_emb: Tensor,
    frame_emb: Tensor,
    frame_logit_weight: Tensor | None,
    how: Pooling = "aosm",
    frame_mask: Tensor | None = None,
    temperature: float = AOSM_TEMPERATURE,
) -> Tensor:
    """Cross: the sentence against every frame, pooled over frames. sentence [Nt,D], frames [Nv,T,D] -> [Nt,Nv]."""
    scores = torch.einsum("td,vfd->tfv", sentence_emb, frame_emb)  # [Nt,T,Nv]
    mask = None if frame_mask is None else frame_mask.T[None]  # [1,T,Nv]
    return pool(scores, 1, how, frame_logit_weight, mask, temperature)


def frame_word(
    word_emb: Tensor,
    frame_emb: Tensor,
    local_mat: Tensor,
    word_mat: Tensor | None,
    frame_mat: Tensor | None,
    frame_mat2: Tensor | None,
    word_mat2: Tensor | None,
    poolings: tuple[Pooling, Pooling] = ("aosm", "aosm"),
    word_mask: Tensor | None = None,
    frame_mask: Tensor | None = None,
    temperature: float = AOSM_TEMPERATURE,
) -> Tensor:
    """Fine: the L x T word-frame matrix of every pair, pooled in two stages. words [Nt,L,D], frames [Nv,T,D] ->
    [Nt,Nv]. First stage: over words for each frame (``word_mat``) and over frames for each word (``frame_mat``);
    second stage: over the frames (``frame_mat2``) and over the words (``word_mat2``); the two are averaged."""
    first, second = poolings
    fine = torch.einsum("tld,de,vfe->tlfv", word_emb, local_mat, frame_emb)  # C [Nt,L,T,Nv]
    word_mask_c = None if word_mask is None else word_mask[:, :, None, None]  # [Nt,L,1,1]
    frame_mask_c = None if frame_mask is None else frame_mask.T[None, None]  # [1,1,T,Nv]
    per_frame = pool(fine, 1, first, word_mat, word_mask_c, temperature)  # [Nt,T,Nv]
    per_word = pool(fine, 2, first, frame_mat, frame_mask_c, temperature)  # [Nt,L,Nv]
    frame_mask_r = None if frame_mask is None else frame_mask.T[None]  # [1,T,Nv]
    word_mask_r = None if word_mask is None else word_mask[:, :, None]  # [Nt,L,1]
    sentence_to_frames = pool(per_frame, 1, second, frame_mat2, frame_mask_r, temperature)  # [Nt,Nv]
    video_to_words = pool(per_word, 1, second, word_mat2, word_mask_r, temperature)  # [Nt,Nv]
    return (sentence_to_frames + video_to_words) / 2


def xclip_logits(contrasts: Sequence[Tensor], logit_scale: Tensor | float) -> Tensor:
    """The X-CLIP logits: ``logit_scale`` times the mean of the enabled contrasts [Nt,Nv] (spec §6, §7)."""
    return logit_scale * torch.stack(list(contrasts)).mean(0)
