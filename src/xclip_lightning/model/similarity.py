"""The four X-CLIP contrasts and their aggregation, as pure functions (xclip-spec.md §5-§6).

Every function takes *normalised* features and returns a similarity matrix with texts as rows and videos as
columns, before the logit scale. Shape letters: ``Nt`` texts, ``Nv`` videos, ``L`` word slots, ``T`` frame slots,
``D`` embedding width. Masks are bool, True = valid.

Two behaviours for padding:

- official (``word_mask=None`` / ``frame_mask=None`` here): every word slot (SOT, EOT, padding) and every frame
  slot (padded frames too) takes part in every softmax and mean, exactly as the official code does;
- masked: padded slots are excluded from every softmax, mean and max, and from the AOSM mixing (their mixed
  weight is zeroed and their score is not read).
"""

from __future__ import annotations

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


def pool(
    scores: Tensor,
    dim: int,
    how: Pooling = "aosm",
    weight: Tensor | None = None,
    mask: Tensor | None = None,
    temperature: float = AOSM_TEMPERATURE,
) -> Tensor:
    """Reduce ``scores`` over ``dim`` (of size K) by AOSM, mean or max.

    AOSM (spec §6): ``a = softmax(x / temperature)``, ``A(x; M) = sum_k (a M)_k x_k = sum_j a_j (M x)_j``, with
    the learnable mixing matrix ``weight`` = M [K,K] (identity at initialisation). ``mask`` (bool, broadcastable
    to ``scores``, True = valid) excludes slots; ``None`` keeps all of them (the official behaviour).

    Example:
        >>> x = torch.tensor([[0.2, 0.9, 0.1]])
        >>> round(pool(x, dim=1, weight=torch.eye(3)).item(), 4)  # softmax at tau 0.01 is almost max
        0.9
    """
    if how == "mean":
        if mask is None:
            return scores.mean(dim)
        mask = mask.to(scores.dtype)
        return (scores * mask).sum(dim) / mask.sum(dim).clamp(min=1)
    if how == "max":
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        return scores.amax(dim)
    if how != "aosm":
        raise ValueError(f"unknown pooling {how!r}; expected aosm, mean or max")
    if weight is None:
        raise ValueError("AOSM pooling needs its mixing matrix `weight` [K,K]")
    logits = scores / temperature
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf"))
        scores = scores.masked_fill(~mask, 0.0)
    attn = logits.softmax(dim)
    return (attn * _mix(scores, weight, dim)).sum(dim)


def _mix(scores: Tensor, weight: Tensor, dim: int) -> Tensor:
    """(M x) along ``dim``: out[..., j, ...] = sum_k M[j, k] x[..., k, ...]."""
    dim = dim % scores.dim()
    if dim == scores.dim() - 1:
        return scores @ weight.T
    # [..., K, rest] -> matmul on the flattened trailing dims keeps the big tensor contiguous (no transpose copy)
    lead, k = scores.shape[:dim], scores.shape[dim]
    mixed = weight @ scores.reshape(*lead, k, -1)
    return mixed.reshape(scores.shape)


def video_pool(frame_emb: Tensor, frame_mask: Tensor) -> Tensor:
    """Video feature: normalise each frame, masked mean over valid frames, normalise again (spec §5).

    frame_emb [Nv,T,D] (temporal-encoder output), frame_mask [Nv,T] bool -> video_emb [Nv,D]. The divisor is
    the number of valid frames, replaced by 1 when it is 0 (the official guard).
    """
    mask = frame_mask.to(frame_emb.dtype).unsqueeze(-1)  # [Nv,T,1]
    summed = (F.normalize(frame_emb, dim=-1) * mask).sum(1)  # [Nv,D]
    return F.normalize(summed / mask.sum(1).clamp(min=1), dim=-1)


def video_sentence(sentence_emb: Tensor, video_emb: Tensor, global_mat: Tensor) -> Tensor:
    """Coarse contrast: bilinear ``sigma_t^T G u_v``. sentence [Nt,D], video [Nv,D], G [D,D] -> [Nt,Nv]."""
    return (sentence_emb @ global_mat) @ video_emb.T


def video_word(
    word_emb: Tensor,
    video_emb: Tensor,
    word_logit_weight: Tensor | None,
    how: Pooling = "aosm",
    word_mask: Tensor | None = None,
    temperature: float = AOSM_TEMPERATURE,
) -> Tensor:
    """Cross contrast: each word against the video, pooled over words. words [Nt,L,D], video [Nv,D] -> [Nt,Nv]."""
    scores = torch.einsum("tld,vd->tvl", word_emb, video_emb)  # [Nt,Nv,L]
    mask = None if word_mask is None else word_mask[:, None, :]  # [Nt,1,L]
    return pool(scores, -1, how, word_logit_weight, mask, temperature)


def sentence_frame(
    sentence_emb: Tensor,
    frame_emb: Tensor,
    frame_logit_weight: Tensor | None,
    how: Pooling = "aosm",
    frame_mask: Tensor | None = None,
    temperature: float = AOSM_TEMPERATURE,
) -> Tensor:
    """Cross contrast: the sentence against each frame, pooled over frames. [Nt,D], [Nv,T,D] -> [Nt,Nv]."""
    scores = torch.einsum("td,vfd->tvf", sentence_emb, frame_emb)  # [Nt,Nv,T]
    mask = None if frame_mask is None else frame_mask[None, :, :]  # [1,Nv,T]
    return pool(scores, -1, how, frame_logit_weight, mask, temperature)


def frame_word(
    word_emb: Tensor,
    frame_emb: Tensor,
    local_mat: Tensor,
    weights: dict[str, Tensor | None],
    poolings: tuple[Pooling, Pooling] = ("aosm", "aosm"),
    word_mask: Tensor | None = None,
    frame_mask: Tensor | None = None,
    temperature: float = AOSM_TEMPERATURE,
) -> Tensor:
    """Fine contrast: the L x T word-frame matrix per pair, pooled twice (spec §6.4).

    ``C[t,l,v,f] = (omega_tl Lambda) . phi_vf`` with Lambda = ``local_mat`` [D,D]. First stage: over words for each
    frame (``word_mat_weight``) giving r [Nt,Nv,T], and over frames for each word (``frame_mat_weight``) giving
    c [Nt,L,Nv]. Second stage: ``(A(r; frame_mat_weight2) + A(c; word_mat_weight2)) / 2``.

    word_emb [Nt,L,D], frame_emb [Nv,T,D] -> [Nt,Nv]. ``weights`` holds the four L x L / T x T matrices by their
    official names (only read for AOSM stages).
    """
    nt, num_words, dim = word_emb.shape
    nv, num_frames, _ = frame_emb.shape
    first, second = poolings
    # [Nt*L,D] @ [D,Nv*T] -> [Nt,L,Nv,T]: the one large GEMM of the head
    fine = ((word_emb.reshape(-1, dim) @ local_mat) @ frame_emb.reshape(-1, dim).T).view(nt, num_words, nv, num_frames)
    wmask = None if word_mask is None else word_mask[:, :, None, None]  # [Nt,L,1,1]
    fmask = None if frame_mask is None else frame_mask[None, None, :, :]  # [1,1,Nv,T]
    per_frame = pool(fine, 1, first, weights.get("word_mat_weight"), wmask, temperature)  # [Nt,Nv,T]
    per_word = pool(fine, 3, first, weights.get("frame_mat_weight"), fmask, temperature)  # [Nt,L,Nv]
    del fine
    sent2frame = pool(
        per_frame,
        -1,
        second,
        weights.get("frame_mat_weight2"),
        None if frame_mask is None else frame_mask[None],
        temperature,
    )  # [Nt,Nv]
    video2word = pool(
        per_word,
        1,
        second,
        weights.get("word_mat_weight2"),
        None if word_mask is None else word_mask[:, :, None],
        temperature,
    )  # [Nt,Nv]
    return (sent2frame + video2word) / 2
