"""The image-text backbones from transformers, giving X-CLIP's per-frame, sentence and word features
(xclip-spec.md §2-§3): OpenAI CLIP (the paper's), and SigLIP / SigLIP 2 (fixed-resolution checkpoints).

``backbone_of(config)`` picks the encoder class from a config's ``model_type``; both classes keep the transformers
model as ``.clip``, so freezing, parameter groups and checkpoints name the weights the same way.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor, nn
from transformers import AutoConfig, CLIPConfig, CLIPModel, PretrainedConfig, SiglipConfig, SiglipModel

from xclip_lightning.errors import UserError
from xclip_lightning.inputs.transforms import CLIP_MEAN, CLIP_STD, SIGLIP_MEAN, SIGLIP_STD, Resize, normalize

Attention = Literal["sdpa", "eager"]


class BackboneError(UserError, ValueError):
    """A model folder or name whose ``model_type`` X-CLIP cannot read as a backbone."""


class CLIPEncoders(nn.Module):
    """A transformers ``CLIPModel`` read the X-CLIP way.

    - frames: visual projection of the post-layernorm CLS token, one vector per frame -> [B,T,D];
    - sentence: text projection of the final-layernormed hidden state at the EOT slot -> [B,D];
    - words: text projection of the final-layernormed hidden states at all L slots -> [B,L,D].

    The text tower runs with its causal mask only, never a key-padding mask (the official behaviour).
    """

    model_class: Any = CLIPModel
    config_class: Any = CLIPConfig
    resize: Resize = "crop"  # the short side to S, then a center crop (OpenAI's preprocessing)
    pixel_mean, pixel_std = CLIP_MEAN, CLIP_STD
    clamp_logit_scale = True  # the official clamp to ln(100) after every step

    def __init__(self, clip: nn.Module) -> None:
        super().__init__()
        self.clip = clip

    @classmethod
    def from_pretrained(cls, clip_name_or_path: str, attention: Attention = "sdpa") -> CLIPEncoders:
        """Load the weights from a local folder or a hub name (``from_pretrained`` of the transformers model), in
        fp32, with torch's scaled-dot-product attention (``sdpa``) or transformers' ``eager`` one (same values)."""
        model = cls.model_class.from_pretrained(clip_name_or_path, dtype=torch.float32, attn_implementation=attention)
        return cls(model)

    @classmethod
    def from_config(cls, config: PretrainedConfig, attention: Attention = "sdpa") -> CLIPEncoders:
        """Random weights of the architecture ``config`` describes (for weights loaded right after)."""
        return cls(cls.model_class._from_config(config, attn_implementation=attention))

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
        dtype = self.clip.vision_model.embeddings.patch_embedding.weight.dtype
        pixels = normalize(frames, dtype, self.pixel_mean, self.pixel_std)
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
        features = self._image_features(batch)  # [n_valid (+1), D]
        if not has_padding:
            return features.view(b, t, -1)
        out = features[-1:].expand(b * t, -1).clone()
        out[valid] = features[:-1]
        return out.view(b, t, -1)

    def _image_features(self, pixels: Tensor) -> Tensor:
        pooled = self.clip.vision_model(pixel_values=pixels).pooler_output  # post_layernorm(CLS)
        return self.clip.visual_projection(pooled)

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


class SiglipEncoders(CLIPEncoders):
    """A transformers ``SiglipModel`` (SigLIP, and the fixed-resolution SigLIP 2 checkpoints) read the X-CLIP way.

    - frames: the vision tower's pooled output (its attention-pooling head), one vector per frame -> [B,T,D];
    - sentence: the text tower's pooled output, its ``head`` on the final-layernormed hidden state of the *last*
      slot (SigLIP pools there, padding or not: captions are padded to ``max_words``, as SigLIP is used with
      ``padding="max_length"``; with ``max_words`` = the text config's 64 this is exactly ``get_text_features``);
    - words: the same ``head`` on every slot -> [B,L,D]; the word mask marks the caption's own tokens.

    No attention mask reaches the text tower (SigLIP was trained without one). Frames are resized whole to S x S and
    normalised with mean = std = 0.5, as SigLIP's image processor does. The logit scale is SigLIP's own (its bias
    shifts every score alike: rankings and the InfoNCE loss do not see it); it is not clamped to CLIP's 100.
    """

    model_class = SiglipModel
    config_class = SiglipConfig
    resize: Resize = "squash"
    pixel_mean, pixel_std = SIGLIP_MEAN, SIGLIP_STD
    clamp_logit_scale = False

    @property
    def embed_dim(self) -> int:
        return self.clip.config.text_config.projection_size

    def encode_text(self, input_ids: Tensor, word_mask: Tensor) -> tuple[Tensor, Tensor]:
        text = self.clip.text_model
        hidden = text(input_ids=input_ids).last_hidden_state  # final_layer_norm on every slot
        words = text.head(hidden)  # [B,L,D]
        return words[:, -1], words

    def _image_features(self, pixels: Tensor) -> Tensor:
        return self.clip.vision_model(pixel_values=pixels).pooler_output  # the attention-pooling head's output


BACKBONES: dict[str, type[CLIPEncoders]] = {"clip": CLIPEncoders, "siglip": SiglipEncoders}


def backbone_of(config: PretrainedConfig | dict | str) -> type[CLIPEncoders]:
    """The encoder class of a config (a config object, its dict, or a folder / hub name to read it from)."""
    if isinstance(config, str):
        config = AutoConfig.from_pretrained(config)
    model_type = config.get("model_type") if isinstance(config, dict) else getattr(config, "model_type", None)
    if model_type in BACKBONES:
        return BACKBONES[model_type]
    hint = (
        " SigLIP 2's NaFlex checkpoints (variable resolution) are not supported; its fixed-resolution ones "
        "(google/siglip2-base-patch16-224, ...) are."
        if model_type == "siglip2"
        else ""
    )
    raise BackboneError(
        f"model_type {model_type!r} is not a backbone X-CLIP can use: use a CLIP or SigLIP model.{hint}"
    )


def load_encoders(name_or_path: str, attention: Attention = "sdpa") -> CLIPEncoders:
    """CLIP or SigLIP weights from a folder or a hub name, through the model's own ``from_pretrained``."""
    return backbone_of(name_or_path).from_pretrained(name_or_path, attention)


def encoders_from_config(config: dict | str, attention: Attention = "sdpa") -> CLIPEncoders:
    """Random weights from a config dict (a checkpoint's) or a folder's config.json (a saved model's)."""
    backbone = backbone_of(config)
    if isinstance(config, dict):
        built = backbone.config_class.from_dict(config)
    else:
        built = backbone.config_class.from_pretrained(config)
    return backbone.from_config(built, attention)


def _layer_norm_input_to_fp32(module: nn.Module, args: tuple) -> tuple:
    module._input_dtype = args[0].dtype
    return (args[0].float(), *args[1:])


def _layer_norm_output_to_input_dtype(module: nn.Module, args: tuple, output: Tensor) -> Tensor:
    return output.to(module._input_dtype)
