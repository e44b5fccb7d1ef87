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
    """Tokenize ``captions`` into ``max_words`` slots with the official layout.

    Works with any HF tokenizer that defines ``bos_token`` (CLIP's ``<|startoftext|>``) and ``eos_token``
    (``<|endoftext|>``). The EOT slot is always the last valid one: ``word_mask.sum(1) - 1``. ``clean`` applies
    ``clean_caption`` first (official); False passes the text as it is.
    """
    if max_words < 2:
        raise ValueError(f"max_words must be at least 2 (SOT and EOT), got {max_words}")
    sot, eot = tokenizer.bos_token_id, tokenizer.eos_token_id
    if sot is None or eot is None:
        raise ValueError(
            f"{type(tokenizer).__name__} has no bos/eos token; X-CLIP needs CLIP's <|startoftext|> and <|endoftext|>"
        )
    if isinstance(captions, str):
        raise TypeError("tokenize expects a sequence of captions, got a single string")
    texts = [clean_caption(c) for c in captions] if clean else list(captions)
    content = tokenizer(texts, add_special_tokens=False)["input_ids"]
    input_ids = torch.full((len(content), max_words), PAD_ID, dtype=torch.long)
    lengths = torch.empty(len(content), dtype=torch.long)
    for row, tokens in enumerate(content):
        ids = [sot, *tokens[: max_words - 2], eot]
        input_ids[row, : len(ids)] = torch.tensor(ids)
        lengths[row] = len(ids)
    word_mask = torch.arange(max_words)[None, :] < lengths[:, None]
    return TokenizedText(input_ids, word_mask)
