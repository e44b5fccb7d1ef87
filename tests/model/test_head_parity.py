"""The head against the float64 vectors of the official implementation (../shared/parity/head_*.safetensors)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from xclip_lightning.loss import symmetric_infonce
from xclip_lightning.model import XCLIPHead

CASES = ["head_seqtransf", "head_meanp", "head_identity_init"]
PARTS = ["video_sentence", "video_word", "sentence_frame", "frame_word"]
TOL = 1e-8  # parity/README.md: compare in float64 with absolute tolerance 1e-8


def load_case(shared_dir, case: str) -> tuple[XCLIPHead, dict[str, torch.Tensor]]:
    vectors = load_file(str(shared_dir / "parity" / f"{case}.safetensors"))
    params = {key.removeprefix("param."): value for key, value in vectors.items() if key.startswith("param.")}
    _, num_words, dim = vectors["input.words"].shape
    num_frames = vectors["input.frames"].shape[1]
    layers = 4 if "frame_position_embeddings.weight" in params else 0
    head = XCLIPHead(dim, num_words, num_frames, temporal_layers=layers).double()
    head.load_state_dict(params, strict=True)  # every param.* by its official name, nothing missing or extra
    return head, vectors


@pytest.mark.parametrize("case", CASES)
def test_head_reproduces_official_logits_parts_and_loss(shared_dir, case):
    head, v = load_case(shared_dir, case)
    scale = v["input.logit_scale"].exp()
    text = head.encode_text(v["input.sentence"], v["input.words"])
    video = head.encode_video(v["input.frames"], v["input.frame_mask"].bool())
    parts = head.score(text, video, scale)
    assert parts["logits"].dtype == torch.float64
    torch.testing.assert_close(parts["logits"], v["expected.logits"], rtol=0, atol=TOL)
    for name in PARTS:
        torch.testing.assert_close(parts[name], v[f"expected.{name}"], rtol=0, atol=TOL)
    torch.testing.assert_close(video.video, v["expected.video_feat"], rtol=0, atol=TOL)
    torch.testing.assert_close(symmetric_infonce(parts["logits"]), v["expected.loss"], rtol=0, atol=TOL)
    # forward() is the same computation in one call
    logits = head(v["input.sentence"], v["input.words"], v["input.frames"], v["input.frame_mask"], scale)
    torch.testing.assert_close(logits, v["expected.logits"], rtol=0, atol=TOL)


@pytest.mark.parametrize("case", CASES)
def test_block_wise_full_matrix_equals_parity(shared_dir, case):
    head, v = load_case(shared_dir, case)
    text = head.encode_text(v["input.sentence"], v["input.words"])
    video = head.encode_video(v["input.frames"], v["input.frame_mask"])
    per_pair = head.max_words * head.max_frames
    for block in (per_pair, 2 * per_pair, 5 * per_pair, 1 << 22):  # 1x1, 1x2, 2x2 and one block
        full = head.score_matrix(text, video, v["input.logit_scale"].exp(), block_elements=block)
        torch.testing.assert_close(full, v["expected.logits"], rtol=0, atol=TOL)


def test_masked_variant_differs_from_official_on_the_parity_inputs(shared_dir):
    """The parity inputs have padded frames and words: masking them must change the numbers (spec §6)."""
    head, v = load_case(shared_dir, "head_seqtransf")
    masked = XCLIPHead(head.embed_dim, head.max_words, head.max_frames, mask_padding=True).double()
    masked.load_state_dict(head.state_dict())
    logits = masked(
        v["input.sentence"],
        v["input.words"],
        v["input.frames"],
        v["input.frame_mask"],
        v["input.logit_scale"].exp(),
        word_mask=v["input.word_mask"].bool(),
    )
    assert (logits - v["expected.logits"]).abs().max() > 1e-3
