"""The head's fast layout (``fast_similarity.py``) gives the values of the plain equations (``similarity.py``): every
contrast, every aggregation, with and without padding masks, on odd sizes; and the plain equations reproduce the
official parity vectors themselves."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_head_parity import CASES, PARTS, TOL, load_case

from xclip_lightning.model import XCLIPHead
from xclip_lightning.model import similarity as sim
from xclip_lightning.model.head import TextFeatures, VideoFeatures

AGGREGATIONS = ["aosm", "mean_mean", "mean_max", "max_mean", "max_max"]


def plain_parts(head: XCLIPHead, text: TextFeatures, video: VideoFeatures) -> dict[str, torch.Tensor]:
    """Each contrast from the plain equations, with the head's matrices (before the logit scale)."""
    second = head.poolings[1]
    word_mask = text.word_mask if head.mask_padding else None
    frame_mask = video.frame_mask if head.mask_padding else None
    w = {name: getattr(head, name, None) for name in head._aosm_shapes()}
    tau = head.temperature
    return {
        "video_sentence": sim.video_sentence(text.sentence, video.video, w["global_mat_weight"]),
        "video_word": sim.video_word(text.words, video.video, w.get("word_logit_weight"), second, word_mask, tau),
        "sentence_frame": sim.sentence_frame(
            text.sentence, video.frames, w.get("frame_logit_weight"), second, frame_mask, tau
        ),
        "frame_word": sim.frame_word(
            text.words,
            video.frames,
            w["local_mat_weight"],
            w.get("word_mat_weight"),
            w.get("frame_mat_weight"),
            w.get("frame_mat_weight2"),
            w.get("word_mat_weight2"),
            head.poolings,
            word_mask,
            frame_mask,
            tau,
        ),
    }


@pytest.mark.parametrize("mask_padding", [False, True])
@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_fast_layout_equals_the_plain_equations(aggregation, mask_padding):
    generator = torch.Generator().manual_seed(AGGREGATIONS.index(aggregation))
    nt, nv, words, frames, dim = 7, 9, 6, 5, 16
    head = XCLIPHead(dim, words, frames, temporal_layers=0, aggregation=aggregation, mask_padding=mask_padding)
    head = head.double()
    with torch.no_grad():  # matrices away from the identity, so every mixing matters
        for p in head.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=generator, dtype=torch.float64))
    word_mask = torch.arange(words)[None] < torch.randint(2, words + 1, (nt, 1), generator=generator)
    frame_mask = torch.arange(frames)[None] < torch.randint(1, frames + 1, (nv, 1), generator=generator)
    text = head.encode_text(
        torch.randn(nt, dim, generator=generator, dtype=torch.float64),
        torch.randn(nt, words, dim, generator=generator, dtype=torch.float64),
        word_mask,
    )
    video = head.encode_video(torch.randn(nv, frames, dim, generator=generator, dtype=torch.float64), frame_mask)
    fast = head.score(text, video, 100.0)
    plain = plain_parts(head, text, video)
    for name in PARTS:
        torch.testing.assert_close(fast[name], 100.0 * plain[name], rtol=0, atol=1e-10, msg=name)
    torch.testing.assert_close(fast["logits"], sim.xclip_logits(list(plain.values()), 100.0), rtol=0, atol=1e-10)
    torch.testing.assert_close(head.score_matrix(text, video, 100.0, block_elements=60), fast["logits"])


@pytest.mark.parametrize("case", CASES)
def test_the_plain_equations_reproduce_the_parity_vectors(shared_dir, case):
    head, v = load_case(shared_dir, case)
    scale = v["input.logit_scale"].exp()
    text = head.encode_text(v["input.sentence"], v["input.words"])
    video = head.encode_video(v["input.frames"], v["input.frame_mask"].bool())
    plain = plain_parts(head, text, video)
    for name in PARTS:
        torch.testing.assert_close(scale * plain[name], v[f"expected.{name}"], rtol=0, atol=TOL, msg=name)
    torch.testing.assert_close(sim.xclip_logits(list(plain.values()), scale), v["expected.logits"], rtol=0, atol=TOL)


def test_aosm_is_softmax_weighted_mixing():
    x = torch.tensor([[1.0, 3.0, 2.0]], dtype=torch.float64)
    mixing = torch.tensor([[1.0, 0, 0], [0.5, 0.5, 0], [0, 0, 2.0]], dtype=torch.float64)
    expected = (F.softmax(x / 0.5, dim=1) * (x @ mixing.T)).sum(1)
    torch.testing.assert_close(sim.aosm(x, mixing, dim=1, temperature=0.5), expected)
    masked = sim.aosm(x, mixing, dim=1, mask=torch.tensor([[True, False, True]]), temperature=0.5)
    keep = torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64)
    weights = F.softmax((x / 0.5).masked_fill(keep == 0, float("-inf")), dim=1)
    torch.testing.assert_close(masked, (weights * ((x * keep) @ mixing.T)).sum(1))
