"""The official "seqTransf" temporal encoder (xclip-spec.md §4).

``Z = TE(X + P[0:T], mask) + X``: pre-LN residual blocks (LayerNorm eps 1e-12, QuickGELU MLP of width 4·D, no
dropout, no final LayerNorm), an additive key-padding mask of -1e6, learnable position embeddings. Parameter names
follow the official code (``attn.in_proj_weight`` is nn.MultiheadAttention's packed q/k/v layout) so its
checkpoints load directly. The blocks and the position table can be initialised from a CLIP text tower.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

TEMPORAL_LAYERNORM_EPS = 1e-12  # official module_cross.LayerNorm (TF style); CLIP's own LayerNorm uses 1e-5
MASK_FILL = -1e6  # official additive key mask: (1 - mask) * -1000000.0
HEAD_WIDTH = 64  # official: heads = width // 64
POSITION_ROWS = 77  # official frame_position_embeddings: nn.Embedding(77, D), copied from CLIP's text positions


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x), CLIP's activation."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


class PackedSelfAttention(nn.Module):
    """Self-attention with nn.MultiheadAttention's parameter names, an additive key mask and SDPA inside."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by {heads} heads")
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)  # nn.MultiheadAttention's default
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: Tensor, key_bias: Tensor) -> Tensor:
        """x [B,T,D], key_bias [B,T] additive (0 or MASK_FILL) -> [B,T,D]."""
        b, t, d = x.shape
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        # [B,T,D] -> [B,H,T,D/H]
        q, k, v = (y.view(b, t, self.heads, d // self.heads).transpose(1, 2) for y in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=key_bias[:, None, None, :].to(q.dtype))
        return self.out_proj(out.transpose(1, 2).reshape(b, t, d))


class ResidualAttentionBlock(nn.Module):
    """Pre-LN block: x += attn(ln_1(x)); x += mlp(ln_2(x))."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.attn = PackedSelfAttention(width, heads)
        self.ln_1 = nn.LayerNorm(width, eps=TEMPORAL_LAYERNORM_EPS)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(width, 4 * width))
        self.mlp.add_module("gelu", QuickGELU())
        self.mlp.add_module("c_proj", nn.Linear(4 * width, width))
        self.ln_2 = nn.LayerNorm(width, eps=TEMPORAL_LAYERNORM_EPS)

    def forward(self, x: Tensor, key_bias: Tensor) -> Tensor:
        x = x + self.attn(self.ln_1(x), key_bias)
        return x + self.mlp(self.ln_2(x))


class TemporalTransformer(nn.Module):
    """The official ``transformerClip``: a stack of ``ResidualAttentionBlock`` under ``resblocks``."""

    def __init__(self, width: int, layers: int, heads: int | None = None) -> None:
        super().__init__()
        self.heads = heads or max(1, width // HEAD_WIDTH)
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(width, self.heads) for _ in range(layers))

    def forward(self, x: Tensor, frame_mask: Tensor) -> Tensor:
        """x [B,T,D], frame_mask [B,T] bool (True = real frame) -> [B,T,D]. Padded frames still give outputs."""
        key_bias = (~frame_mask).to(x.dtype) * MASK_FILL  # [B,T]
        for block in self.resblocks:
            x = block(x, key_bias)
        return x


def temporal_encode(
    frame_emb: Tensor, frame_mask: Tensor, position_embeddings: nn.Embedding, transformer: TemporalTransformer
) -> Tensor:
    """``TE(X + P[0:T], mask) + X``: frame_emb [B,T,D], frame_mask [B,T] -> [B,T,D]."""
    num_frames = frame_emb.shape[1]
    if num_frames > position_embeddings.num_embeddings:
        raise ValueError(f"{num_frames} frames exceed the {position_embeddings.num_embeddings} temporal positions")
    positions = position_embeddings.weight[:num_frames]  # [T,D]
    return transformer(frame_emb + positions, frame_mask) + frame_emb


@torch.no_grad()
def init_from_clip_text(
    position_embeddings: nn.Embedding, transformer: TemporalTransformer, text_model: nn.Module
) -> None:
    """Copy CLIP text blocks 0..n-1 and the text positional table into the temporal encoder (spec §4).

    ``text_model`` is a transformers ``CLIPTextModel``. Its width must equal the temporal width (true for
    ViT-B/32 and ViT-B/16, whose text width and joint embedding are both 512).
    """
    layers = text_model.encoder.layers
    width = position_embeddings.embedding_dim
    if text_model.config.hidden_size != width:
        raise ValueError(
            f"cannot initialise a temporal encoder of width {width} from a CLIP text tower of width "
            f"{text_model.config.hidden_size}; build the head with the default initialisation instead"
        )
    if len(transformer.resblocks) > len(layers):
        raise ValueError(f"{len(transformer.resblocks)} temporal layers but the CLIP text tower has {len(layers)}")
    table = text_model.embeddings.position_embedding.weight
    rows = min(table.shape[0], position_embeddings.num_embeddings)
    position_embeddings.weight[:rows].copy_(table[:rows])
    for block, layer in zip(transformer.resblocks, layers, strict=False):
        sa = layer.self_attn
        block.attn.in_proj_weight.copy_(torch.cat([sa.q_proj.weight, sa.k_proj.weight, sa.v_proj.weight]))
        block.attn.in_proj_bias.copy_(torch.cat([sa.q_proj.bias, sa.k_proj.bias, sa.v_proj.bias]))
        block.attn.out_proj.load_state_dict(sa.out_proj.state_dict())
        block.ln_1.load_state_dict(layer.layer_norm1.state_dict())
        block.mlp.c_fc.load_state_dict(layer.mlp.fc1.state_dict())
        block.mlp.c_proj.load_state_dict(layer.mlp.fc2.state_dict())
        block.ln_2.load_state_dict(layer.layer_norm2.state_dict())
