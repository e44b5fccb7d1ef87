"""Two-stage ranking is right for every ``k`` and ``candidates`` and both first-stage backends: a property test
against exhaustive scoring of every video over random sizes."""

from __future__ import annotations

import importlib.util
import random

import pytest
import torch
import torch.nn.functional as F

from conftest import require_or_skip
from xclip_lightning.index.ranking import CoarseSearch, coarse_query, rank_videos
from xclip_lightning.model.head import TextFeatures, VideoFeatures, XCLIPHead

D, L, T = 16, 6, 4
TOLERANCE = {"rtol": 1e-6, "atol": 1e-4}  # scores ~ 100 x cosine: block-wise fp32 sums differ by a few ulps


def random_case(n: int, seed: int) -> tuple[XCLIPHead, TextFeatures, VideoFeatures]:
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    head = XCLIPHead(D, L, T, temporal_layers=0).eval()
    with torch.no_grad():  # AOSM matrices away from the identity, so the coarse and full orders differ
        for p in head.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=generator))
    text = TextFeatures(
        F.normalize(torch.randn(1, D, generator=generator), dim=-1),
        F.normalize(torch.randn(1, L, D, generator=generator), dim=-1),
        torch.arange(L)[None] < 4,
    )
    lengths = torch.randint(1, T + 1, (n,), generator=generator)
    video = VideoFeatures(
        F.normalize(torch.randn(n, D, generator=generator), dim=-1),
        F.normalize(torch.randn(n, T, D, generator=generator), dim=-1),
        torch.arange(T)[None] < lengths[:, None],
    )
    return head, text, video


@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_every_hit_carries_its_own_full_score_for_any_k_and_candidates(backend):
    if backend == "faiss":
        require_or_skip(importlib.util.find_spec("faiss") is not None, "faiss-cpu (a dev dependency)")
    rng = random.Random(0)
    checked_two_stage = 0
    for case in range(60):
        n = rng.randint(1, 40)
        head, text, video = random_case(n, case)
        with torch.no_grad():
            exhaustive = head.score_matrix(text, video, 100.0)[0]  # [n], the slow reference
            k = rng.choice([1, 2, n - 1, n, n + 1, n + 7, rng.randint(1, n + 3)])
            k = max(k, 1)
            candidates = rng.choice([None, 0, 1, k, n - 1, n, n + 5, rng.randint(1, n + 3)])
            coarse = CoarseSearch(video.video, backend)
            rows, scores = rank_videos(head, 100.0, text, video, k, candidates or None, coarse)
        assert len(rows) == min(k, n) and len(set(rows.tolist())) == len(rows)
        torch.testing.assert_close(scores, exhaustive[rows], **TOLERANCE)  # each score is its row's
        assert bool((scores[:-1] >= scores[1:]).all())
        if candidates is None or candidates == 0 or max(candidates, k) >= n:
            torch.testing.assert_close(scores, exhaustive.sort(descending=True).values[: min(k, n)], **TOLERANCE)
        else:
            checked_two_stage += 1
            pool = (coarse_query(head, text) @ video.video.T)[0].topk(max(candidates, k)).indices
            assert set(rows.tolist()) <= set(pool.tolist())
    assert checked_two_stage >= 10


def test_k_below_one_is_refused():
    head, text, video = random_case(5, 0)
    with pytest.raises(ValueError, match=r"k .* must be at least 1, got 0"):
        rank_videos(head, 100.0, text, video, 0)
