"""CLIP encoders from transformers, giving X-CLIP's per-frame, sentence and word features (xclip-spec.md §2-§3)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn
from transformers import CLIPModel

from xclip_lightning.inputs.transforms import normalize

Attention = Literal["sdpa", "eager"]


class CLIPEncoders(nn.Module):
    """A transformers ``CLIPModel`` read the X-CLIP way.

    - frames: visual projection of the post-layernorm CLS token, one vector per frame -> [B,T,D];
    - sentence: text projection of the final-layernormed hidden state at the EOT slot -> [B,D];
    - words: text projection of the final-layernormed hidden states at all L slots -> [B,L,D].

    The text tower runs with its causal mask only, never a key-padding mask (the official behaviour).
    """

    def __init__(self, clip: CLIPModel) -> None:
        super().__init__()
        self.clip = clip

    @classmethod
    def from_pretrained(cls, clip_name_or_path: str, attention: Attention = "sdpa") -> CLIPEncoders:
        """Load CLIP weights from a local folder or a hub name (``CLIPModel.from_pretrained``), in fp32, with
        torch's scaled-dot-product attention (``sdpa``) or transformers' ``eager`` one (same values)."""
        return cls(CLIPModel.from_pretrained(clip_name_or_path, dtype=torch.float32, attn_implementation=attention))

    @property
    def embed_dim(self) -> int:
        return self.clip.config.projection_dim

    @property
    def image_size(self) -> int:
        return self.clip.config.vision_config.image_size

    def logit_scale(self) -> Tensor:
        """The logit-scale multiplier ``exp(clip.logit_scale)`` (100 for OpenAI CLIP)."""
        return self.clip.logit_scale.exp()

    def encode_text(self, input_ids: Tensor, word_mask: Tensor) -> tuple[Tensor, Tensor]:
        """input_ids [B,L], word_mask [B,L] (only used to find EOT = the last valid slot) -> sentence [B,D], words
        [B,L,D], both raw (unnormalised)."""
        hidden = self.clip.text_model(input_ids=input_ids).last_hidden_state  # final_layer_norm on every slot
        words = self.clip.text_projection(hidden)  # [B,L,D]
        eot = word_mask.long().sum(1) - 1  # [B]
        sentence = words[torch.arange(words.shape[0], device=words.device), eot]  # [B,D]
        return sentence, words

    def normalize_pixels(self, frames: Tensor, frame_mask: Tensor) -> Tensor:
        """uint8 frames [B,T,3,S,S] -> CLIP-normalised pixels in the vision tower's dtype; padded frames become
        all-zero tensors (the official padding: the image at the dataset mean)."""
        pixels = normalize(frames, self.clip.vision_model.embeddings.patch_embedding.weight.dtype)
        return pixels * frame_mask[:, :, None, None, None].to(pixels.dtype)

    def encode_frames(self, pixels: Tensor, frame_mask: Tensor) -> Tensor:
        """CLIP-normalised pixels [B,T,3,S,S] (padded frames all zero) -> raw frame features [B,T,D].

        Padded frames all give the same vector, so the ViT runs on the valid frames plus one zero frame only.
        """
        b, t = frame_mask.shape
        valid = frame_mask.reshape(-1).bool()  # [B*T]
        flat = pixels.reshape(b * t, *pixels.shape[2:])
        batch = flat[valid]
        has_padding = not bool(valid.all())
        if has_padding:
            batch = torch.cat([batch, torch.zeros_like(flat[:1])])
        pooled = self.clip.vision_model(pixel_values=batch).pooler_output  # post_layernorm(CLS)
        features = self.clip.visual_projection(pooled)  # [n_valid (+1), D]
        if not has_padding:
            return features.view(b, t, -1)
        out = features[-1:].expand(b * t, -1).clone()
        out[valid] = features[:-1]
        return out.view(b, t, -1)

    def use_fp16_weights(self) -> None:
        """The official ``convert_weights`` run: CLIP's weights in fp16, updated in place (no fp32 master copy),
        every LayerNorm computed in fp32 on fp32 weights and its output cast back, ``logit_scale`` in fp32.
        Activations then flow in fp16 through both towers; the X-CLIP head upcasts to fp32 (spec §9)."""
        for module in self.clip.modules():
            if isinstance(module, nn.LayerNorm):
                module.register_forward_pre_hook(_layer_norm_input_to_fp32)
                module.register_forward_hook(_layer_norm_output_to_input_dtype)
                continue
            for name, parameter in module.named_parameters(recurse=False):
                if not (module is self.clip and name == "logit_scale"):
                    parameter.data = parameter.data.half()


def _layer_norm_input_to_fp32(module: nn.Module, args: tuple) -> tuple:
    module._input_dtype = args[0].dtype
    return (args[0].float(), *args[1:])


def _layer_norm_output_to_input_dtype(module: nn.Module, args: tuple, output: Tensor) -> Tensor:
    return output.to(module._input_dtype)
