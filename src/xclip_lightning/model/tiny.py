"""A tiny random CLIP (or SigLIP) and a tokenizer trained on a caption corpus, saved as a ``from_pretrained`` folder.

Nothing here downloads anything: the demo, the tests and the benchmarks build this folder locally and then load it
through the same ``from_pretrained`` path as a real CLIP checkpoint.
"""

from __future__ import annotations

import json
import math
import string
from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import CLIPConfig, CLIPModel, GemmaTokenizer, PreTrainedTokenizerFast, SiglipConfig, SiglipModel

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


def _towers(
    vocab_size: int,
    embed_dim: int = 64,
    text_layers: int = 4,
    vision_width: int = 64,
    vision_layers: int = 2,
    image_size: int = 32,
    patch_size: int = 8,
) -> tuple[dict, dict]:
    """The text and vision tower sizes both tiny configs share (text width = joint width = ``embed_dim``)."""
    text = {
        "vocab_size": vocab_size,
        "hidden_size": embed_dim,
        "intermediate_size": 4 * embed_dim,
        "num_hidden_layers": text_layers,
        "num_attention_heads": max(1, embed_dim // 64),  # as in CLIP ViT-B (512 // 64 = 8 text heads)
    }
    vision = {
        "hidden_size": vision_width,
        "intermediate_size": 4 * vision_width,
        "num_hidden_layers": vision_layers,
        "num_attention_heads": max(1, vision_width // 32),
        "image_size": image_size,
        "patch_size": patch_size,
    }
    return text, vision


def tiny_clip_config(vocab_size: int, bos_token_id: int = 1, eos_token_id: int = 2, **sizes: int) -> CLIPConfig:
    """A small ``CLIPConfig`` whose text width equals the joint width, so the temporal-encoder init from the text
    tower (spec §4) runs exactly as with ViT-B CLIP. ``sizes``: those of ``_towers`` (embed_dim, image_size, ...)."""
    text, vision = _towers(vocab_size, **sizes)
    return CLIPConfig(
        text_config={
            **text,
            "max_position_embeddings": 77,
            "bos_token_id": bos_token_id,
            "eos_token_id": eos_token_id,
            "pad_token_id": 0,
        },
        vision_config=vision,
        projection_dim=text["hidden_size"],
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
    return _save_random(CLIPModel, config, tokenizer, folder, seed)


def _save_random(model_class: type, config: object, tokenizer: object, folder: Path, seed: int) -> Path:
    """Random weights of ``config`` (seeded, leaving the global RNG alone) and the tokenizer, saved to ``folder``."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = model_class(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _metaspace_bpe(corpus: Iterable[str], vocab_size: int, special_tokens: list[str]) -> Tokenizer:
    """A SentencePiece-style BPE (``▁`` marks a word start), as SigLIP's and Gemma's tokenizers are."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=list(string.ascii_letters + string.digits + string.punctuation),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    return tok


def siglip_tokenizer(corpus: Iterable[str], vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """SigLIP's layout: the caption's pieces then ``</s>``, padded with ``</s>`` (its pad token is its eos)."""
    tok = _metaspace_bpe(corpus, vocab_size, ["<pad>", "</s>", "<unk>"])
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="</s>", unk_token="<unk>")


def gemma_tokenizer(corpus: Iterable[str], vocab_size: int = 512) -> GemmaTokenizer:
    """SigLIP 2's tokenizer class (Gemma's), on a small vocabulary learnt from ``corpus``."""
    tok = _metaspace_bpe((c.lower() for c in corpus), vocab_size, ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"])
    model = json.loads(tok.to_str())["model"]
    return GemmaTokenizer(vocab=model["vocab"], merges=[tuple(m) for m in model["merges"]])


def tiny_siglip_config(vocab_size: int, pad_token_id: int, eos_token_id: int, **sizes: int) -> SiglipConfig:
    """A small ``SiglipConfig``: text width = joint width (the temporal encoder starts from the text blocks)."""
    text, vision = _towers(vocab_size, **sizes)
    return SiglipConfig(
        text_config={
            **text,
            "max_position_embeddings": 64,  # SigLIP's text length
            "projection_size": text["hidden_size"],
            "pad_token_id": pad_token_id,
            "eos_token_id": eos_token_id,
            "bos_token_id": None,  # SigLIP adds none (Gemma's <bos>, when added, is an ordinary slot)
        },
        vision_config=vision,
    )


def build_tiny_siglip(
    folder: str | Path,
    corpus: Iterable[str],
    seed: int = 0,
    vocab_size: int = 512,
    gemma: bool = False,
    **config_kwargs: int,
) -> Path:
    """Write a random tiny SigLIP (``gemma``: with SigLIP 2's Gemma tokenizer class) and its tokenizer to ``folder``,
    loadable wherever a CLIP name is. Deterministic for a seed."""
    folder = Path(folder)
    corpus = list(corpus)
    tokenizer = gemma_tokenizer(corpus, vocab_size) if gemma else siglip_tokenizer(corpus, vocab_size)
    config = tiny_siglip_config(len(tokenizer), tokenizer.pad_token_id, tokenizer.eos_token_id, **config_kwargs)
    return _save_random(SiglipModel, config, tokenizer, folder, seed)
