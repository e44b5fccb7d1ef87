"""XCLIPHead options: official names, ablations, masking, precision and block-wise scoring."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from xclip_lightning.model import XCLIPHead
from xclip_lightning.model.similarity import CONTRASTS

D, L, T = 32, 8, 5
AOSM_NAMES = [
    "frame_logit_weight",
    "frame_mat_weight",
    "frame_mat_weight2",
    "global_mat_weight",
    "local_mat_weight",
    "word_logit_weight",
    "word_mat_weight",
    "word_mat_weight2",
]
BLOCK_KEYS = [
    "attn.in_proj_weight",
    "attn.in_proj_bias",
    "attn.out_proj.weight",
    "attn.out_proj.bias",
    "ln_1.weight",
    "ln_1.bias",
    "mlp.c_fc.weight",
    "mlp.c_fc.bias",
    "mlp.c_proj.weight",
    "mlp.c_proj.bias",
    "ln_2.weight",
    "ln_2.bias",
]


def random_inputs(nt: int = 4, nv: int = 3, seed: int = 0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    sentence = torch.randn(nt, D, generator=g, dtype=dtype)
    words = torch.randn(nt, L, D, generator=g, dtype=dtype)
    frames = torch.randn(nv, T, D, generator=g, dtype=dtype)
    lengths = torch.randint(1, T + 1, (nv,), generator=g)
    frame_mask = torch.arange(T)[None] < lengths[:, None]
    word_lengths = torch.randint(2, L + 1, (nt,), generator=g)
    word_mask = torch.arange(L)[None] < word_lengths[:, None]
    return sentence, words, frames, frame_mask, word_mask


def perturbed_head(seed: int = 1, **kwargs) -> XCLIPHead:
    head = XCLIPHead(D, L, T, **kwargs).double()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in head.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return head


def test_state_dict_uses_exactly_the_official_names():
    keys = set(XCLIPHead(D, L, T, temporal_layers=4).state_dict())
    expected = {"frame_position_embeddings.weight", *AOSM_NAMES}
    expected |= {f"transformerClip.resblocks.{i}.{k}" for i in range(4) for k in BLOCK_KEYS}
    assert keys == expected
    assert set(XCLIPHead(D, L, T, temporal_layers=0).state_dict()) == set(AOSM_NAMES)
    head = XCLIPHead(D, L, T)
    assert head.frame_position_embeddings.weight.shape == (77, D)
    assert head.word_mat_weight.shape == (L, L) and head.frame_mat_weight2.shape == (T, T)
    assert torch.equal(head.local_mat_weight, torch.eye(D))  # identity initialisation


def test_head_config_rebuilds_the_same_head():
    head = XCLIPHead(D, L, T, temporal_layers=3, contrasts=["video_sentence", "frame_word"], aggregation="max_mean")
    clone = XCLIPHead(**head.config())
    assert clone.config() == head.config()
    assert set(clone.state_dict()) == set(head.state_dict())


def test_temporal_heads_default_to_width_over_64():
    assert XCLIPHead(512, L, T).transformerClip.heads == 8
    assert XCLIPHead(128, L, T).transformerClip.heads == 2


def test_logits_are_the_mean_of_the_enabled_contrasts():
    head = perturbed_head()
    s, w, f, fm, _ = random_inputs()
    parts = head.score(head.encode_text(s, w), head.encode_video(f, fm), 100.0)
    torch.testing.assert_close(parts["logits"], sum(parts[c] for c in CONTRASTS) / 4)
    subset = XCLIPHead(D, L, T, contrasts=["video_sentence", "sentence_frame"]).double()
    subset.load_state_dict({k: v for k, v in head.state_dict().items() if k in subset.state_dict()})
    sub_parts = subset.score(subset.encode_text(s, w), subset.encode_video(f, fm), 100.0)
    assert set(sub_parts) == {"video_sentence", "sentence_frame", "logits"}
    torch.testing.assert_close(sub_parts["video_sentence"], parts["video_sentence"])
    torch.testing.assert_close(sub_parts["logits"], (parts["video_sentence"] + parts["sentence_frame"]) / 2)


def test_contrast_subset_builds_only_the_parameters_it_uses():
    head = XCLIPHead(D, L, T, contrasts=["sentence_frame", "frame_word"])
    names = set(dict(head.named_parameters()))
    assert "global_mat_weight" not in names and "word_logit_weight" not in names
    assert not any(n.startswith("transformerClip") for n in names)  # no video-level contrast: no temporal encoder
    head = XCLIPHead(D, L, T, aggregation="mean_max")
    assert set(dict(head.named_parameters())) & set(AOSM_NAMES) == {"global_mat_weight", "local_mat_weight"}


def test_mean_and_max_aggregations_match_a_direct_computation():
    s, w, f, fm, _ = random_inputs()
    for aggregation, first, second in [
        ("mean_mean", "mean", "mean"),
        ("max_max", "amax", "amax"),
        ("mean_max", "mean", "amax"),
        ("max_mean", "amax", "mean"),
    ]:
        head = XCLIPHead(D, L, T, temporal_layers=0, aggregation=aggregation).double()
        parts = head.score(head.encode_text(s, w), head.encode_video(f, fm), 1.0)
        sn, wn, fn = F.normalize(s, dim=-1), F.normalize(w, dim=-1), F.normalize(f, dim=-1)
        video = F.normalize((fn * fm[..., None]).sum(1) / fm.sum(1, keepdim=True), dim=-1)
        fine = torch.einsum("tld,vfd->tlvf", wn, fn)
        per_frame = getattr(fine, first)(1)  # over words -> [Nt,Nv,T]
        per_word = getattr(fine, first)(3)  # over frames -> [Nt,L,Nv]
        expected_fw = (getattr(per_frame, second)(-1) + getattr(per_word, second)(1)) / 2
        torch.testing.assert_close(parts["frame_word"], expected_fw)
        torch.testing.assert_close(parts["video_word"], getattr(torch.einsum("tld,vd->tvl", wn, video), second)(-1))
        torch.testing.assert_close(parts["sentence_frame"], getattr(torch.einsum("td,vfd->tvf", sn, fn), second)(-1))


def test_aosm_approaches_max_as_temperature_falls_and_mean_as_it_rises():
    s, w, f, fm, _ = random_inputs()
    scores = {}
    for name, kwargs in {
        "cold": {"temperature": 1e-6},
        "hot": {"temperature": 1e6},
        "max": {"aggregation": "max_max"},
        "mean": {"aggregation": "mean_mean"},
    }.items():
        head = XCLIPHead(D, L, T, temporal_layers=0, **kwargs).double()
        scores[name] = head(s, w, f, fm, 1.0)
    torch.testing.assert_close(scores["cold"], scores["max"], rtol=0, atol=1e-6)
    torch.testing.assert_close(scores["hot"], scores["mean"], rtol=0, atol=1e-6)


def test_mask_padding_ignores_padded_slots_and_official_mode_does_not():
    s, w, f, fm, wm = random_inputs()
    w2, f2 = w.clone(), f.clone()
    w2[~wm] = 10 * torch.randn_like(w2[~wm])
    f2[~fm] = 10 * torch.randn_like(f2[~fm])
    masked = perturbed_head(mask_padding=True)
    official = perturbed_head(mask_padding=False)
    torch.testing.assert_close(masked(s, w, f, fm, 100.0, word_mask=wm), masked(s, w2, f2, fm, 100.0, word_mask=wm))
    assert (official(s, w, f, fm, 100.0) - official(s, w2, f2, fm, 100.0)).abs().max() > 1e-3
    with pytest.raises(ValueError, match="word_mask"):
        masked(s, w, f, fm, 100.0)


def test_temporal_encoder_changes_only_the_video_level_contrasts():
    s, w, f, fm, _ = random_inputs()
    with_te = perturbed_head(temporal_layers=2)
    without = XCLIPHead(D, L, T, temporal_layers=0).double()
    without.load_state_dict({k: v for k, v in with_te.state_dict().items() if k in without.state_dict()})
    a = with_te.score(with_te.encode_text(s, w), with_te.encode_video(f, fm), 100.0)
    b = without.score(without.encode_text(s, w), without.encode_video(f, fm), 100.0)
    torch.testing.assert_close(a["sentence_frame"], b["sentence_frame"])  # raw CLIP frames (official)
    torch.testing.assert_close(a["frame_word"], b["frame_word"])
    assert (a["video_sentence"] - b["video_sentence"]).abs().max() > 1e-3


def test_head_runs_in_fp32_under_autocast():
    s, w, f, fm, _ = random_inputs(dtype=torch.float32)
    head = perturbed_head().float()
    reference = head(s, w, f, fm, 100.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = head(s.bfloat16(), w.bfloat16(), f.bfloat16(), fm, 100.0)
    assert logits.dtype == torch.float32
    expected = head(s.bfloat16().float(), w.bfloat16().float(), f.bfloat16().float(), fm, 100.0)
    torch.testing.assert_close(logits, expected)  # same numbers as fp32 on the bf16-rounded inputs
    assert (logits - reference).abs().max() < 1.0  # only input rounding separates it from the fp32 run


@pytest.mark.parametrize("mask_padding", [False, True])
def test_block_wise_scoring_equals_one_shot_on_odd_sizes(mask_padding):
    s, w, f, fm, wm = random_inputs(nt=37, nv=23, seed=3, dtype=torch.float32)
    head = perturbed_head(mask_padding=mask_padding).float()
    text, video = head.encode_text(s, w, wm), head.encode_video(f, fm)
    one_shot = head.score(text, video, 100.0)["logits"]
    for block in (L * T, 7 * L * T, 50 * L * T):
        torch.testing.assert_close(
            head.score_matrix(text, video, 100.0, block_elements=block), one_shot, rtol=0, atol=1e-5
        )


def test_mismatched_sizes_are_named():
    head = XCLIPHead(D, L, T)
    s, w, f, fm, _ = random_inputs(dtype=torch.float32)
    with pytest.raises(ValueError, match="max_words=8"):
        head.encode_text(s, w[:, :5])
    with pytest.raises(ValueError, match="max_frames=5"):
        head.encode_video(f[:, :3], fm[:, :3])
    with pytest.raises(ValueError, match="aggregation"):
        XCLIPHead(D, L, T, aggregation="median_max")
    with pytest.raises(ValueError, match="contrasts"):
        XCLIPHead(D, L, T, contrasts=["video_text"])
