"""Captions to token ids in the official CLIP4Clip / X-CLIP layout (xclip-spec.md §2).

``[SOT] + at most L-2 caption tokens + [EOT]``, then padding with id 0 up to L. The text encoder then runs with the
causal mask only (no key-padding mask), so word features at every slot equal the official code's.

Captions are cleaned first as the official ``SimpleTokenizer`` cleans them (``clean_caption``): benchmark captions
are raw web text with HTML entities, curly quotes, ligatures, full-width letters and mis-decoded UTF-8, and without
the cleaning 7 of 22 such captions get other ids than the official code (real-data-notes.md).
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from typing import NamedTuple

import ftfy
import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

PAD_ID = 0  # official: input_ids padded with 0 (the token "!" in CLIP's vocabulary), not the tokenizer's pad id
CLIP_BOS = "<|startoftext|>"  # a tokenizer with this start token gets CLIP's layout; any other, its own padding


def clean_caption(text: str) -> str:
    """The official ``basic_clean`` + ``whitespace_clean``: ftfy, HTML entities unescaped twice, runs of whitespace
    collapsed, stripped. (The official tokenizer lower-cases afterwards; CLIP's HF tokenizers do that themselves.)

    Example:
        >>> clean_caption("  a  man &amp;amp; his dog&#39;s ball ")
        "a man & his dog's ball"
    """
    text = html.unescape(html.unescape(ftfy.fix_text(text)))
    return re.sub(r"\s+", " ", text.strip()).strip()


class TokenizedText(NamedTuple):
    """input_ids [N,L] long; word_mask [N,L] bool, True on SOT, the caption tokens and EOT."""

    input_ids: Tensor
    word_mask: Tensor


def tokenize(
    tokenizer: PreTrainedTokenizerBase, captions: Sequence[str], max_words: int, clean: bool = True
) -> TokenizedText:
    """Tokenize ``captions`` into ``max_words`` slots.

    A CLIP tokenizer (start token ``<|startoftext|>``) gets the official layout: ``[SOT] tokens [EOT]`` padded with
    0, the EOT slot always the last valid one (``word_mask.sum(1) - 1``). Any other tokenizer (SigLIP's, SigLIP 2's
    Gemma) gets its own special tokens and its own padding to ``max_words`` (``padding="max_length"``, as SigLIP is
    used), the mask marking the caption's tokens; SigLIP 2's Gemma tokenizer gets lower-cased text, as the model was
    trained. ``clean`` applies ``clean_caption`` first (official); False passes the text as it is.
    """
    if isinstance(captions, str):
        raise TypeError("tokenize expects a sequence of captions, got a single string")
    texts = [clean_caption(c) for c in captions] if clean else list(captions)
    if tokenizer.bos_token != CLIP_BOS:
        return _tokenize_padded(tokenizer, texts, max_words)
    if max_words < 2:
        raise ValueError(f"max_words must be at least 2 (SOT and EOT), got {max_words}")
    sot, eot = tokenizer.bos_token_id, tokenizer.eos_token_id
    if sot is None or eot is None:
        raise ValueError(
            f"{type(tokenizer).__name__} has no bos/eos token; X-CLIP needs CLIP's <|startoftext|> and <|endoftext|>"
        )
    content = tokenizer(texts, add_special_tokens=False)["input_ids"]
    input_ids = torch.full((len(content), max_words), PAD_ID, dtype=torch.long)
    lengths = torch.empty(len(content), dtype=torch.long)
    for row, tokens in enumerate(content):
        ids = [sot, *tokens[: max_words - 2], eot]
        input_ids[row, : len(ids)] = torch.tensor(ids)
        lengths[row] = len(ids)
    word_mask = torch.arange(max_words)[None, :] < lengths[:, None]
    return TokenizedText(input_ids, word_mask)


def _tokenize_padded(tokenizer: PreTrainedTokenizerBase, texts: list[str], max_words: int) -> TokenizedText:
    """The tokenizer's own layout, padded (on its own side) and truncated to ``max_words``; the mask is its
    attention mask."""
    if tokenizer.pad_token_id is None:
        raise ValueError(f"{type(tokenizer).__name__} has no pad token: cannot pad captions to max_words")
    if "gemma" in type(tokenizer).__name__.lower():
        texts = [t.lower() for t in texts]  # SigLIP 2 (its tokenizer files name Gemma's class, which keeps case)
    if not texts:
        empty = torch.zeros(0, max_words, dtype=torch.long)
        return TokenizedText(empty, empty.bool())
    encoded = tokenizer(
        texts,
        padding="max_length",
        truncation=True,
        max_length=max_words,
        return_attention_mask=True,
        return_tensors="pt",
    )
    return TokenizedText(encoded["input_ids"].long(), encoded["attention_mask"].bool())
