"""CLIP encoders read the X-CLIP way, and the official token layout."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer

from xclip_lightning.inputs.tokenize import PAD_ID, tokenize
from xclip_lightning.model.encoders import CLIPEncoders


@pytest.fixture(scope="module")
def encoders(tiny_clip_dir) -> CLIPEncoders:
    return CLIPEncoders.from_pretrained(tiny_clip_dir).eval()


@pytest.fixture(scope="module")
def tokenizer(tiny_clip_dir):
    return AutoTokenizer.from_pretrained(tiny_clip_dir)


def test_official_token_layout(tokenizer):
    tok = tokenize(tokenizer, ["a red circle moves left", "a blue square"], max_words=8)
    sot, eot = tokenizer.bos_token_id, tokenizer.eos_token_id
    content = tokenizer("a blue square", add_special_tokens=False)["input_ids"]
    assert tok.input_ids[1].tolist() == [sot, *content, eot] + [PAD_ID] * (8 - len(content) - 2)
    assert tok.word_mask[1].tolist() == [True] * (len(content) + 2) + [False] * (8 - len(content) - 2)
    long = tokenize(tokenizer, ["a red circle moves left, then a blue square appears " * 3], max_words=8)
    assert long.input_ids[0, 0] == sot and long.input_ids[0, -1] == eot  # at most L-2 caption tokens survive
    assert bool(long.word_mask.all())
    with pytest.raises(TypeError):
        tokenize(tokenizer, "a single string", 8)


def test_text_features_are_causal_and_unmasked(encoders, tokenizer):
    tok = tokenize(tokenizer, ["a red circle moves left", "a red circle spins"], max_words=12)
    with torch.no_grad():
        sentence, words = encoders.encode_text(tok.input_ids, tok.word_mask)
    eot = tok.word_mask.sum(1) - 1
    torch.testing.assert_close(sentence, words[torch.arange(2), eot])
    # causal: the shared prefix "SOT a red circle" has identical features in both captions
    torch.testing.assert_close(words[0, :4], words[1, :4])
    # no key-padding mask: padded slots see the caption, so their features differ between captions
    assert (words[0, -1] - words[1, -1]).abs().max() > 1e-4
    # word features are the text projection of the final-layernormed states at every slot
    hidden = encoders.clip.text_model(input_ids=tok.input_ids).last_hidden_state
    torch.testing.assert_close(words, encoders.clip.text_projection(hidden))


def test_frame_features_match_clip_image_features_and_padding_shortcut(encoders):
    torch.manual_seed(0)
    size = encoders.image_size
    frames = torch.randint(0, 256, (2, 4, 3, size, size), dtype=torch.uint8)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]]).bool()
    with torch.no_grad():
        pixels = encoders.normalize_pixels(frames, mask)
        ours = encoders.encode_frames(pixels, mask)
        clip = encoders.clip
        pooled = clip.vision_model(pixel_values=pixels.flatten(0, 1)).pooler_output
        reference = clip.visual_projection(pooled).view(2, 4, -1)  # every slot encoded, zero frames included
    assert bool((pixels[1, 2:] == 0).all())  # padded frames are all-zero normalised tensors (official)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours[1, 2], ours[1, 3])
