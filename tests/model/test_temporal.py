"""The temporal encoder: official attention semantics, key masking and CLIP text-tower initialisation."""

from __future__ import annotations

import inspect

import torch
from torch import nn

from xclip_lightning.model.temporal import MASK_FILL, PackedSelfAttention, TemporalTransformer, init_from_clip_text
from xclip_lightning.model.xclip import XCLIP


def test_packed_attention_equals_nn_multihead_attention_with_the_official_mask():
    """The official block calls nn.MultiheadAttention with a [B*H,T,T] additive mask built from the key mask."""
    torch.manual_seed(0)
    b, t, d, h = 3, 6, 16, 2
    ours = PackedSelfAttention(d, h).double()
    reference = nn.MultiheadAttention(d, h).double()
    reference.load_state_dict(ours.state_dict())  # same parameter names and layout
    x = torch.randn(b, t, d, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0]]).bool()
    key_bias = (~mask).double() * MASK_FILL
    official_mask = key_bias[:, None, :].expand(-1, t, -1).repeat_interleave(h, dim=0)  # [B*H,T,T]
    expected = reference(
        x.transpose(0, 1), x.transpose(0, 1), x.transpose(0, 1), need_weights=False, attn_mask=official_mask
    )[0].transpose(0, 1)
    torch.testing.assert_close(ours(x, key_bias), expected, rtol=0, atol=1e-12)


def test_padded_frames_do_not_reach_valid_outputs():
    torch.manual_seed(0)
    te = TemporalTransformer(16, layers=2).double()
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]).bool()
    y = x.clone()
    y[0, 3:] = 100 * torch.randn(2, 16, dtype=torch.float64)
    out_x, out_y = te(x, mask), te(y, mask)
    torch.testing.assert_close(out_x[0, :3], out_y[0, :3])
    torch.testing.assert_close(out_x[1], out_y[1])


def test_init_copies_clip_text_blocks_and_positions(tiny_clip_dir):
    model = XCLIP.from_clip(tiny_clip_dir, max_words=16, max_frames=6, temporal_layers=3)
    text = model.encoders.clip.text_model
    head = model.head
    torch.testing.assert_close(head.frame_position_embeddings.weight, text.embeddings.position_embedding.weight)
    for block, layer in zip(head.transformerClip.resblocks, text.encoder.layers, strict=False):
        sa = layer.self_attn
        torch.testing.assert_close(
            block.attn.in_proj_weight, torch.cat([sa.q_proj.weight, sa.k_proj.weight, sa.v_proj.weight])
        )
        torch.testing.assert_close(block.mlp.c_proj.weight, layer.mlp.fc2.weight)
        torch.testing.assert_close(block.ln_2.bias, layer.layer_norm2.bias)
    # the copied block computes what the CLIP layer computes without its causal mask (LayerNorm eps aside)
    x = torch.randn(2, 6, head.embed_dim)
    ours = head.transformerClip.resblocks[0](x, torch.zeros(2, 6))
    layer = text.encoder.layers[0]
    # transformers 4 takes a separate causal mask argument (None = no mask), transformers 5 does not
    extra = (
        {"causal_attention_mask": None}
        if "causal_attention_mask" in inspect.signature(layer.forward).parameters
        else {}
    )
    theirs = layer(x, attention_mask=None, **extra)
    theirs = theirs[0] if isinstance(theirs, tuple) else theirs
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def test_init_from_text_refuses_a_width_mismatch(tiny_clip_dir):
    model = XCLIP.from_clip(tiny_clip_dir, max_words=16, max_frames=6, temporal_layers=1)
    te = TemporalTransformer(32, layers=1)
    try:
        init_from_clip_text(nn.Embedding(77, 32), te, model.encoders.clip.text_model)
    except ValueError as err:
        assert "width 32" in str(err)
    else:
        raise AssertionError("a width mismatch must raise")
