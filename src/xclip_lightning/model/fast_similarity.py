"""The four contrasts and AOSM laid out for speed: what ``XCLIPHead`` runs (``similarity.py`` has the maths).

Same values as the plain functions of ``similarity.py`` (tests/model/test_fast_similarity.py checks every contrast,
aggregation and masking option against them), computed differently:

- frames are laid out slot-major ([T*Nv,D]) once per block of videos, so that the large frame-word GEMM puts the
  videos innermost and every reduction runs over a dimension with a long contiguous inner stride;
- AOSM's softmax is ``sum_j e_j (M x)_j / sum_j e_j`` with ``e = exp((x - max x) / tau)``, written into its input
  when the caller allows it (``overwrite``), and the mixing ``M x`` is a batched GEMM over the untransposed tensor;
- the frame-word contrast takes the words already multiplied by the local matrix (once per text, not per block).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from xclip_lightning.model.similarity import AOSM_TEMPERATURE, Pooling


def pool(
    scores: Tensor,
    dim: int,
    how: Pooling = "aosm",
    weight: Tensor | None = None,
    mask: Tensor | None = None,
    temperature: float = AOSM_TEMPERATURE,
    overwrite: bool = False,
) -> Tensor:
    """Reduce ``scores`` over ``dim`` (of size K) by AOSM, mean or max.

    AOSM (spec §6): ``a = softmax(x / temperature)``, ``A(x; M) = sum_k (a M)_k x_k = sum_j a_j (M x)_j``, with
    the learnable mixing matrix ``weight`` = M [K,K] (identity at initialisation). ``mask`` (bool, broadcastable
    to ``scores``, True = valid) excludes slots; ``None`` keeps all of them (the official behaviour).

    The softmax is taken as ``sum_j e_j (M x)_j / sum_j e_j`` with ``e = exp((x - max x) / temperature)``: the
    same value, without normalising the whole tensor. Reductions are fastest over a dimension that is not the last.
    ``overwrite=True`` lets AOSM reuse ``scores`` as its work buffer (for a caller's last use of a large tensor);
    ignored while autograd records ``scores``.

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
    overwrite = overwrite and not (scores.requires_grad and torch.is_grad_enabled())  # autograd needs scores intact
    weighted = _mix(scores if mask is None else scores.masked_fill(~mask, 0.0), weight, dim)  # (M x), new tensor
    if mask is not None:
        scores = scores.masked_fill_(~mask, float("-inf")) if overwrite else scores.masked_fill(~mask, float("-inf"))
        overwrite = True
    shifted = scores.sub_(scores.amax(dim, keepdim=True)) if overwrite else scores - scores.amax(dim, keepdim=True)
    exp = shifted.mul_(1.0 / temperature).exp_()  # unnormalised softmax weights
    return weighted.mul_(exp).sum(dim) / exp.sum(dim)


def _mix(scores: Tensor, weight: Tensor, dim: int) -> Tensor:
    """(M x) along ``dim``: out[..., j, ...] = sum_k M[j, k] x[..., k, ...]."""
    dim = dim % scores.dim()
    if dim == scores.dim() - 1:
        return scores @ weight.T
    # [lead, K, rest] as a batch of [K,K] @ [K,rest] products: bmm reads the contiguous tensor as it is, where
    # `weight @ x` would transpose the whole tensor there and back (two full copies)
    k = scores.shape[dim]
    batched = scores.reshape(-1, k, math.prod(scores.shape[dim + 1 :]))
    return torch.bmm(weight.expand(batched.shape[0], k, k), batched).view(scores.shape)


def frames_by_slot(frame_emb: Tensor) -> Tensor:
    """[Nv,T,D] -> [T*Nv,D], slot-major, so that scores against it come out as [..., T, Nv]."""
    return frame_emb.transpose(0, 1).reshape(-1, frame_emb.shape[-1])


def video_word(
    word_emb: Tensor,
    video_emb: Tensor,
    word_logit_weight: Tensor | None,
    how: Pooling = "aosm",
    word_mask: Tensor | None = None,
    temperature: float = AOSM_TEMPERATURE,
) -> Tensor:
    """Cross contrast: each word against the video, pooled over words. words [Nt,L,D], video [Nv,D] -> [Nt,Nv]."""
    scores = word_emb @ video_emb.T  # [Nt,L,Nv]
    mask = None if word_mask is None else word_mask[:, :, None]  # [Nt,L,1]
    return pool(scores, 1, how, word_logit_weight, mask, temperature)


def sentence_frame(
    sentence_emb: Tensor,
    frame_emb: Tensor,
    frame_logit_weight: Tensor | None,
    how: Pooling = "aosm",
    frame_mask: Tensor | None = None,
    temperature: float = AOSM_TEMPERATURE,
    frames_slot_major: Tensor | None = None,
) -> Tensor:
    """Cross contrast: the sentence against each frame, pooled over frames. [Nt,D], [Nv,T,D] -> [Nt,Nv]."""
    nv, num_frames, _ = frame_emb.shape
    slot_major = frames_by_slot(frame_emb) if frames_slot_major is None else frames_slot_major
    scores = (sentence_emb @ slot_major.T).view(-1, num_frames, nv)  # [Nt,T,Nv]
    mask = None if frame_mask is None else frame_mask.T[None]  # [1,T,Nv]
    return pool(scores, 1, how, frame_logit_weight, mask, temperature)


def frame_word(
    word_local: Tensor,
    frame_emb: Tensor,
    weights: dict[str, Tensor | None],
    poolings: tuple[Pooling, Pooling] = ("aosm", "aosm"),
    word_mask: Tensor | None = None,
    frame_mask: Tensor | None = None,
    temperature: float = AOSM_TEMPERATURE,
    frames_slot_major: Tensor | None = None,
) -> Tensor:
    """Fine contrast: the L x T word-frame matrix per pair, pooled twice (spec §6.4).

    ``word_local`` = ``omega Lambda`` [Nt,L,D], the words already multiplied by ``local_mat_weight`` (done once per
    text, not once per block of videos). ``C[t,l,v,f] = word_local_tl . phi_vf``. First stage: over words for each
    frame (``word_mat_weight``) giving r [Nt,T,Nv], and over frames for each word (``frame_mat_weight``) giving
    c [Nt,L,Nv]. Second stage: ``(A(r; frame_mat_weight2) + A(c; word_mat_weight2)) / 2``.

    frame_emb [Nv,T,D] -> [Nt,Nv]. ``weights`` holds the four L x L / T x T matrices by their official names (only
    read for AOSM stages). ``frames_slot_major`` may pass ``frames_by_slot(frame_emb)`` when the caller reuses it.
    """
    nt, num_words, dim = word_local.shape
    nv, num_frames, _ = frame_emb.shape
    first, second = poolings
    slot_major = frames_by_slot(frame_emb) if frames_slot_major is None else frames_slot_major
    # [Nt*L,D] @ [D,T*Nv] -> C [Nt,L,T,Nv]: the one large GEMM of the head. Videos innermost, so that every
    # reduction below runs over a dimension with a long contiguous inner stride.
    fine = (word_local.reshape(-1, dim) @ slot_major.T).view(nt, num_words, num_frames, nv)
    wmask = None if word_mask is None else word_mask[:, :, None, None]  # [Nt,L,1,1]
    fmask = None if frame_mask is None else frame_mask.T[None, None]  # [1,1,T,Nv]
    per_frame = pool(fine, 1, first, weights.get("word_mat_weight"), wmask, temperature)  # r [Nt,T,Nv]
    per_word = pool(fine, 2, first, weights.get("frame_mat_weight"), fmask, temperature, overwrite=True)  # c [Nt,L,Nv]
    del fine
    fmask2 = None if frame_mask is None else frame_mask.T[None]  # [1,T,Nv]
    wmask2 = None if word_mask is None else word_mask[:, :, None]  # [Nt,L,1]
    sent2frame = pool(per_frame, 1, second, weights.get("frame_mat_weight2"), fmask2, temperature)  # [Nt,Nv]
    video2word = pool(per_word, 1, second, weights.get("word_mat_weight2"), wmask2, temperature)  # [Nt,Nv]
    return (sent2frame + video2word) / 2
