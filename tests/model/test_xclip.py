"""XCLIP: built from a CLIP folder through from_pretrained, saved and reloaded without Lightning."""

from __future__ import annotations

import json

import pytest
import torch

from xclip_lightning.model.xclip import XCLIP, XCLIP_CONFIG_FILE


@pytest.fixture(scope="module")
def model(tiny_clip_dir) -> XCLIP:
    torch.manual_seed(0)
    return XCLIP.from_clip(tiny_clip_dir, max_words=12, max_frames=4, aggregation="aosm").eval()


def batch(model: XCLIP):
    tok = model.tokenize(["a red circle moves left", "a green triangle spins", "two yellow stars fall down"])
    size = model.encoders.image_size
    frames = torch.randint(0, 256, (2, 4, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]]).bool()
    return tok.input_ids, tok.word_mask, frames, mask


def test_forward_gives_texts_by_videos_logits_at_clip_scale(model):
    logits = model(*batch(model))
    assert logits.shape == (3, 2) and logits.dtype == torch.float32
    assert torch.isfinite(logits).all()
    assert model.logit_scale().item() == pytest.approx(100.0)
    assert logits.abs().max() <= 100.0 + 1e-3  # every contrast is cosine-like at identity AOSM


def test_save_and_load_round_trip(model, tmp_path):
    inputs = batch(model)
    with torch.no_grad():
        model.head.global_mat_weight.add_(0.01)  # a trained (non-initial) value must survive the round trip
        expected = model(*inputs)
    folder = model.save_pretrained(tmp_path / "xclip")
    assert {"model.safetensors", "config.json", XCLIP_CONFIG_FILE, "tokenizer.json"} <= {
        p.name for p in folder.iterdir()
    }
    loaded = XCLIP.from_pretrained(folder).eval()
    assert loaded.head.config() == model.head.config()
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    assert loaded.tokenize(["a blue square"]).input_ids.tolist() == model.tokenize(["a blue square"]).input_ids.tolist()
    with torch.no_grad():
        torch.testing.assert_close(loaded(*inputs), expected, rtol=0, atol=0)


def test_from_pretrained_explains_a_plain_clip_folder(tiny_clip_dir):
    with pytest.raises(FileNotFoundError, match=r"XCLIP\.from_clip"):
        XCLIP.from_pretrained(tiny_clip_dir)


def test_from_pretrained_refuses_an_unknown_format(model, tmp_path):
    folder = model.save_pretrained(tmp_path / "xclip")
    config = json.loads((folder / XCLIP_CONFIG_FILE).read_text())
    (folder / XCLIP_CONFIG_FILE).write_text(json.dumps({**config, "format_version": 99}))
    with pytest.raises(ValueError, match="format_version 99"):
        XCLIP.from_pretrained(folder)


def test_score_matrix_equals_forward(model):
    input_ids, word_mask, frames, mask = batch(model)
    with torch.no_grad():
        text = model.encode_text(input_ids, word_mask)
        video = model.encode_video(frames, mask)
        torch.testing.assert_close(model.score_matrix(text, video, block_elements=1), model(*batch(model)))


def test_gradients_reach_clip_head_and_temporal_encoder(tiny_clip_dir):
    from xclip_lightning.loss import symmetric_infonce

    model = XCLIP.from_clip(tiny_clip_dir, max_words=12, max_frames=4)
    input_ids, word_mask, frames, mask = batch(model)
    logits = model(input_ids[:2], word_mask[:2], frames, mask)
    symmetric_infonce(logits).backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    for name in [
        "head.word_mat_weight2",
        "head.transformerClip.resblocks.0.attn.in_proj_weight",
        "encoders.clip.visual_projection.weight",
        "encoders.clip.text_projection.weight",
    ]:
        assert grads[name] is not None and grads[name].abs().sum() > 0, name
