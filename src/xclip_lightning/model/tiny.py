"""A tiny random CLIP and a tokenizer trained on a caption corpus, saved as a ``from_pretrained`` folder.

Nothing here downloads anything: the demo, the tests and the benchmarks build this folder locally and then load it
through the same ``from_pretrained`` path as a real CLIP checkpoint.
"""

from __future__ import annotations

import math
import string
from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import CLIPConfig, CLIPModel, PreTrainedTokenizerFast

# CLIP's special tokens; "!" is placed at id 0 as in CLIP's vocabulary, so the official 0-padding reads the same
SPECIAL_TOKENS = ("!", "<|startoftext|>", "<|endoftext|>", "<|unk|>")


def train_tokenizer(corpus: Iterable[str], vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """A lower-casing BPE tokenizer with CLIP's bos/eos tokens, trained on ``corpus``."""
    tok = Tokenizer(models.BPE(unk_token="<|unk|>"))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.BPEDecoder()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=list(string.ascii_lowercase + string.digits + string.punctuation),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|startoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|unk|>",
        pad_token="!",
    )


def tiny_clip_config(
    vocab_size: int,
    embed_dim: int = 64,
    text_layers: int = 4,
    vision_width: int = 64,
    vision_layers: int = 2,
    image_size: int = 32,
    patch_size: int = 8,
    bos_token_id: int = 1,
    eos_token_id: int = 2,
) -> CLIPConfig:
    """A small ``CLIPConfig`` whose text width equals the joint width, so the temporal-encoder init from the text
    tower (spec §4) runs exactly as with ViT-B CLIP."""
    return CLIPConfig(
        text_config={
            "vocab_size": vocab_size,
            "hidden_size": embed_dim,
            "intermediate_size": 4 * embed_dim,
            "num_hidden_layers": text_layers,
            "num_attention_heads": max(1, embed_dim // 64),  # as in CLIP ViT-B (512 // 64 = 8 text heads)
            "max_position_embeddings": 77,
            "bos_token_id": bos_token_id,
            "eos_token_id": eos_token_id,
            "pad_token_id": 0,
        },
        vision_config={
            "hidden_size": vision_width,
            "intermediate_size": 4 * vision_width,
            "num_hidden_layers": vision_layers,
            "num_attention_heads": max(1, vision_width // 32),
            "image_size": image_size,
            "patch_size": patch_size,
        },
        projection_dim=embed_dim,
        logit_scale_init_value=math.log(100.0),  # OpenAI CLIP's trained value, so logits have the real scale
    )


def build_tiny_clip(
    folder: str | Path, corpus: Iterable[str], seed: int = 0, vocab_size: int = 512, **config_kwargs: int
) -> Path:
    """Write a random tiny CLIP (weights, config) and a tokenizer trained on ``corpus`` to ``folder``.

    The result is usable anywhere a CLIP name is, e.g. ``XCLIP.from_clip(str(folder))``. Deterministic for a seed.
    """
    folder = Path(folder)
    tokenizer = train_tokenizer(corpus, vocab_size)
    config = tiny_clip_config(
        len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **config_kwargs,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = CLIPModel(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
