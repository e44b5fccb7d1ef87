"""Two-stage ranking of indexed videos for one text query: a coarse video-sentence score over every video (a torch
matrix product, or the approximate FAISS IVF index of ``ann.py``), then the full multi-grained X-CLIP score on the
candidates.
``rank_videos`` is right for every ``k`` and ``candidates`` (tests/test_search_ranking.py checks it against
exhaustive scoring)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from xclip_lightning.index.defaults import DEFAULT_CANDIDATES
from xclip_lightning.model.head import TextFeatures, VideoFeatures, XCLIPHead

EXHAUSTIVE_BLOCK = 65536  # rows gathered and fully scored at a time when every video is scored
CoarseBackend = Literal["auto", "torch", "faiss"]


def coarse_query(head: XCLIPHead, text: TextFeatures) -> Tensor:
    """The query side of the video-sentence score sentence^T G video: sentence @ G [Q,D] (G = global_mat_weight,
    or the identity when the head has no video-sentence contrast)."""
    weight = getattr(head, "global_mat_weight", None)
    return text.sentence @ weight if weight is not None else text.sentence


class CoarseSearch:
    """Top K videos by the coarse video-sentence score: a torch matrix product ("auto", "torch"), or an exact FAISS
    inner-product index (``IndexFlatIP``, "faiss"). Both return the same rows; the matrix product is the faster here
    (bench/search.py: 12.6 vs 22.9 ms a query at 100,000 videos), so "auto" takes it."""

    def __init__(self, video: Tensor, backend: CoarseBackend = "auto") -> None:
        self.video = video
        self.index = None
        if backend == "faiss":
            try:
                import faiss
            except ImportError:
                raise ImportError("backend='faiss' needs faiss: pip install faiss-cpu") from None
            self.index = faiss.IndexFlatIP(video.shape[1])
            self.index.add(video.detach().float().cpu().contiguous().numpy())

    @property
    def backend(self) -> str:
        """ "torch" or "faiss"."""
        return "torch" if self.index is None else "faiss"

    def topk(self, query: Tensor, k: int) -> Tensor:
        """query [Q,D] (from ``coarse_query``) -> rows [Q,k], best first."""
        if self.index is None:
            return (query @ self.video.T).topk(k, dim=1).indices
        _, rows = self.index.search(query.detach().float().cpu().contiguous().numpy(), k)
        return torch.from_numpy(rows).to(self.video.device)


def rank_videos(
    head: XCLIPHead,
    logit_scale: Tensor | float,
    text: TextFeatures,
    features: VideoFeatures,
    k: int,
    candidates: int | None = DEFAULT_CANDIDATES,
    coarse: CoarseSearch | None = None,
) -> tuple[Tensor, Tensor]:
    """One query (``text`` of batch 1) against every video: (rows [min(k, N)] best first, full X-CLIP scores).

    Two stages: the coarse score picks ``max(candidates, k)`` rows (with ``coarse``, or a torch matrix product),
    the full score ranks them; ``candidates=None``, or a first stage that would keep every video, scores every
    video fully. Each returned score is the full score of the returned row, whatever ``k`` and ``candidates``.
    """
    if k < 1:
        raise ValueError(f"k (the number of results) must be at least 1, got {k}")
    n = features.video.shape[0]
    k = min(k, n)
    if candidates is None or max(candidates, k) >= n:  # every video, a block at a time (memory stays bounded)
        blocks = [
            torch.arange(s, min(n, s + EXHAUSTIVE_BLOCK), device=features.video.device)
            for s in range(0, n, EXHAUSTIVE_BLOCK)
        ]
    else:
        coarse = coarse or CoarseSearch(features.video, backend="torch")
        blocks = [coarse.topk(coarse_query(head, text), max(candidates, k))[0]]
    best_rows, best_scores = [], []
    for rows in blocks:
        subset = VideoFeatures(*(x[rows] for x in features))  # [len(rows),...], row i of subset is video rows[i]
        scores = head.score_matrix(text, subset, logit_scale)[0]
        order = scores.argsort(descending=True, stable=True)[:k]
        best_rows.append(rows[order])
        best_scores.append(scores[order])
    rows, scores = torch.cat(best_rows), torch.cat(best_scores)
    order = scores.argsort(descending=True, stable=True)[:k]  # blocks are in row order: ties stay by row
    return rows[order], scores[order]
