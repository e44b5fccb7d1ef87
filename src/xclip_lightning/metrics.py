"""Retrieval metrics with the official protocols (xclip-spec.md §10): R@1/5/10, MdR, MnR.

Single caption per video (MSR-VTT 1k-A, LSMDC, DiDeMo, ActivityNet): ``sim`` is square with the ground truth on
the diagonal. Several captions per video (MSVD): ``sim`` is [N_captions, N_videos] with the captions grouped by
video in order, and ``captions_per_video`` gives the group sizes. Everything is vectorised: no loop over queries.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

RECALL_AT = (1, 5, 10)
METRIC_NAMES = ("R1", "R5", "R10", "MdR", "MnR")
DSL_TEMPERATURE = 1.0  # dual softmax on logit-scaled scores (x100), i.e. temperature 0.01 on cosines
QB_BETA = 0.2  # QB-Norm's inverse temperature on logit-scaled scores: the paper's beta = 20 on cosines


def _recalls(ranks: Tensor, median_plus_one: Tensor) -> dict[str, float]:
    """ranks: 0-based rank of the ground truth per recorded entry."""
    out = {f"R{k}": (ranks < k).double().mean().item() * 100 for k in RECALL_AT}
    out["MdR"] = median_plus_one.item()
    out["MnR"] = ranks.double().mean().item() + 1
    return out


def _single_caption(sim: Tensor, truth: Tensor | None = None) -> dict[str, float]:
    """The official ``compute_metrics``: every position equal to the ground-truth value is recorded (ties add
    entries, NaN rows drop out); MdR is numpy's median (mean of the two middle values) + 1. The ground truth is the
    diagonal of a square ``sim``, or column ``truth[i]`` of row i (a gallery with more videos than texts)."""
    if truth is None:
        if sim.dim() != 2 or sim.shape[0] != sim.shape[1]:
            raise ValueError(f"single-caption metrics need a square sim matrix, got {tuple(sim.shape)}")
        truth = torch.arange(sim.shape[0], device=sim.device)
    gt = sim.gather(1, truth[:, None])  # [N,1]
    greater = (sim > gt).sum(1)  # first position of the ground truth after a descending sort
    ties = (sim == gt).sum(1)  # 0 for a NaN ground truth: the row disappears, as in the official code
    total = int(ties.sum())
    if total == 0:
        raise ValueError("no row of the similarity matrix has a finite ground-truth score")
    group_start = torch.repeat_interleave(ties.cumsum(0) - ties, ties)
    ranks = torch.repeat_interleave(greater, ties) + torch.arange(total, device=sim.device) - group_start
    ordered = ranks.double().sort().values
    median = (ordered[(total - 1) // 2] + ordered[total // 2]) / 2
    return _recalls(ranks, median + 1)


def _caption_video_index(captions_per_video: Tensor, num_captions: int, num_videos: int) -> Tensor:
    counts = torch.as_tensor(captions_per_video, dtype=torch.long)
    if counts.numel() != num_videos or int(counts.sum()) != num_captions or bool((counts < 0).any()):
        raise ValueError(
            f"captions_per_video must give one count >= 0 per video ({num_videos}) summing to the {num_captions} "
            f"rows of sim; got {counts.numel()} counts summing to {int(counts.sum())}"
        )
    if num_captions == 0:
        raise ValueError("no caption to evaluate: every count of captions_per_video is 0")
    return torch.repeat_interleave(torch.arange(num_videos), counts)


def _multi_caption_t2v(sim: Tensor, video_of_caption: Tensor) -> dict[str, float]:
    """Each caption ranks its own video (official ``tensor_text_to_video_metrics``); MdR is torch's lower median."""
    gt = sim.gather(1, video_of_caption[:, None])  # [Nc,1]
    ranks = (sim > gt).sum(1)[torch.isfinite(gt[:, 0])]
    return _recalls(ranks, (ranks + 1).double().median())


def _multi_caption_v2t(sim: Tensor, video_of_caption: Tensor) -> dict[str, float]:
    """Video j against caption group i scores max over the captions of video i (official
    ``tensor_video_to_text_sim``), then the single-caption protocol on that [Nv,Nv] matrix. Videos without a
    caption (distractors) have no group to find: they are neither queries nor candidates here."""
    num_videos = sim.shape[1]
    sim = sim.nan_to_num(nan=float("-inf"))
    groups = torch.full((num_videos, num_videos), float("-inf"), dtype=sim.dtype, device=sim.device)
    groups.scatter_reduce_(0, video_of_caption[:, None].expand_as(sim), sim, reduce="amax")  # [group i, video j]
    captioned = torch.bincount(video_of_caption, minlength=num_videos) > 0
    return _single_caption(groups[captioned][:, captioned].T)


def dual_softmax(sim: Tensor, dim: int, temperature: float = DSL_TEMPERATURE) -> Tensor:
    """Dual-softmax (DSL) re-ranking: ``sim * softmax(sim / temperature, dim)``. Not part of the X-CLIP numbers."""
    return sim * torch.softmax(sim / temperature, dim=dim)


def querybank_normalise(sim: Tensor, bank: Tensor, beta: float = QB_BETA, k: int = 1) -> Tensor:
    """QB-Norm's dynamic inverted softmax (Bogolin et al., CVPR 2022) of text->video scores. Not part of the X-CLIP
    numbers.

    ``bank`` [Nb,Nv] scores a query bank (training captions, never the test ones) against the same videos. A
    video is *activated* when it is among the top ``k`` of some bank query; a query whose best video is activated
    gets ``exp(beta * s) / sum_bank exp(beta * bank)`` per video (taken in log space: the same ranking, no
    overflow), which demotes videos that are close to every query (hubs); any other query keeps its raw scores.
    Ranking is per query, so the two kinds of rows never compare with each other.
    """
    bank = bank.to(sim.dtype)
    log_normaliser = torch.logsumexp(beta * bank, dim=0)  # [Nv]
    activated = torch.zeros(sim.shape[1], dtype=torch.bool, device=sim.device)
    activated[bank.topk(min(k, bank.shape[1]), dim=1).indices.flatten()] = True
    normalised = beta * sim - log_normaliser
    return torch.where(activated[sim.argmax(1)][:, None], normalised, sim)


def retrieval_metrics(
    sim: Tensor,
    captions_per_video: Sequence[int] | Tensor | None = None,
    dsl: bool = False,
    dsl_temperature: float = DSL_TEMPERATURE,
    querybank: Tensor | None = None,
) -> dict[str, dict[str, float]]:
    """Text->video and video->text R@1/R@5/R@10 (percent), MdR and MnR of a texts x videos score matrix.

    Args:
        sim: [Nt,Nv] scores, texts as rows.
        captions_per_video: None for one caption per video (ground truth on the diagonal); else [Nv] counts, with
            the rows of ``sim`` grouped by video in the same order (the MSVD protocol when a video has several). A
            count of 0 is a distractor video: a candidate for every text, which no text asks for (a gallery with
            more videos than texts).
        dsl: also report dual-softmax re-ranked numbers under ``t2v_dsl`` / ``v2t_dsl`` (never mixed into the raw
            ``t2v`` / ``v2t``).
        querybank: [Nb,Nv] scores of a query bank against the same videos: also report text->video after QB-Norm
            (``querybank_normalise``) under ``t2v_qb``.

    Example:
        >>> retrieval_metrics(torch.eye(4))["t2v"]["R1"]
        100.0
    """
    sim = sim.detach().double()
    out = _directions(sim, captions_per_video, dsl, dsl_temperature)
    if querybank is not None:
        out["t2v_qb"] = _directions(querybank_normalise(sim, querybank.detach()), captions_per_video)["t2v"]
    return out


def _directions(
    sim: Tensor,
    captions_per_video: Sequence[int] | Tensor | None,
    dsl: bool = False,
    dsl_temperature: float = DSL_TEMPERATURE,
) -> dict[str, dict[str, float]]:
    """Text->video and video->text metrics of ``sim`` (and of its dual-softmax re-ranking with ``dsl``)."""
    if captions_per_video is None:
        t2v_truth = v2t_truth = None  # the diagonal
    else:
        index = _caption_video_index(captions_per_video, *sim.shape).to(sim.device)
        captioned = torch.bincount(index, minlength=sim.shape[1]) > 0
        if int(torch.bincount(index).max()) > 1:  # several captions per video: the MSVD protocol
            out = {"t2v": _multi_caption_t2v(sim, index), "v2t": _multi_caption_v2t(sim, index)}
            if dsl:
                out["t2v_dsl"] = _multi_caption_t2v(dual_softmax(sim, 0, dsl_temperature), index)
                out["v2t_dsl"] = _multi_caption_v2t(dual_softmax(sim, 1, dsl_temperature), index)
            return out
        # one caption per captioned video, and distractor videos: texts rank every video; captioned videos rank
        # the texts (row k of sim.T[captioned] is the video of text k)
        t2v_truth, v2t_truth = index, torch.arange(sim.shape[0], device=sim.device)
    variants = {"": (sim, sim.T)}
    if dsl:
        variants["_dsl"] = (dual_softmax(sim, 0, dsl_temperature), dual_softmax(sim, 1, dsl_temperature).T)
    out = {}
    for suffix, (t2v, v2t) in variants.items():
        if v2t_truth is not None:
            v2t = v2t[captioned]
        out["t2v" + suffix], out["v2t" + suffix] = _single_caption(t2v, t2v_truth), _single_caption(v2t, v2t_truth)
    return out


def first_of_each(index: Tensor) -> Tensor:
    """Positions of the first row of each distinct index value, ordered by value."""
    order = index.argsort(stable=True)
    sorted_index = index[order]
    first = torch.ones_like(sorted_index, dtype=torch.bool)
    first[1:] = sorted_index[1:] != sorted_index[:-1]
    return order[first]


def first_of_each_index(index: Tensor, what: str) -> Tensor:
    """``first_of_each``, where the values must be exactly 0..N-1.

    Distributed evaluation pads with repeated items (DistributedSampler), so every index appears once or more;
    a value that never appears is an error, not a smaller evaluation.
    """
    kept = first_of_each(index)
    if not torch.equal(index[kept], torch.arange(len(kept), device=index.device)):
        raise ValueError(f"{what} are missing from the evaluation: got {len(kept)} unique indices, not 0..N-1")
    return kept


class RetrievalMetrics(Metric):
    """torchmetrics wrapper: collects rows of the score matrix (with their text index) on each rank.

    ``update(sim_rows [n,Nv], text_index [n])``; ``compute()`` gathers the rows of every rank (state synced by
    torchmetrics), drops duplicated texts (DistributedSampler padding repeats a few), checks that every text
    0..Nt-1 is there exactly once, and returns flat keys ``t2v/R1`` ... (and ``t2v_dsl/R1`` ... with ``dsl``,
    ``t2v_qb/R1`` ... with a ``querybank``).
    """

    full_state_update = False
    higher_is_better = None  # R@K: higher is better; MdR / MnR: lower is better

    def __init__(
        self,
        captions_per_video: Sequence[int] | None = None,
        dsl: bool = False,
        dsl_temperature: float = DSL_TEMPERATURE,
        querybank: Tensor | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.captions_per_video = None if captions_per_video is None else list(captions_per_video)
        self.dsl, self.dsl_temperature = dsl, dsl_temperature
        self.querybank = querybank  # the same on every rank: not a synced state
        self.add_state("rows", default=[], dist_reduce_fx="cat")
        self.add_state("text_index", default=[], dist_reduce_fx="cat")

    def update(self, sim_rows: Tensor, text_index: Tensor) -> None:
        self.rows.append(sim_rows.detach().float())
        self.text_index.append(text_index.detach().long())

    def compute(self) -> dict[str, Tensor]:
        rows, index = dim_zero_cat(self.rows), dim_zero_cat(self.text_index)
        rows = rows[first_of_each_index(index, "texts")]
        result = retrieval_metrics(rows, self.captions_per_video, self.dsl, self.dsl_temperature, self.querybank)
        return {f"{group}/{name}": torch.tensor(v) for group, vals in result.items() for name, v in vals.items()}
