"""Captions to token ids in the official CLIP4Clip / X-CLIP layout (xclip-spec.md §2).

``[SOT] + at most L-2 caption tokens + [EOT]``, then padding with id 0 up to L. The text encoder then runs with the
causal mask only (no key-padding mask), so word features at every slot equal the official code's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

PAD_ID = 0  # official: input_ids padded with 0 (the token "!" in CLIP's vocabulary), not the tokenizer's pad id


class TokenizedText(NamedTuple):
    """input_ids [N,L] long; word_mask [N,L] bool, True on SOT, the caption tokens and EOT."""

    input_ids: Tensor
    word_mask: Tensor


def tokenize(tokenizer: PreTrainedTokenizerBase, captions: Sequence[str], max_words: int) -> TokenizedText:
    """Tokenize ``captions`` into ``max_words`` slots with the official layout.

    Works with any HF tokenizer that defines ``bos_token`` (CLIP's ``<|startoftext|>``) and ``eos_token``
    (``<|endoftext|>``). The EOT slot is always the last valid one: ``word_mask.sum(1) - 1``.
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
    content = tokenizer(list(captions), add_special_tokens=False)["input_ids"]
    input_ids = torch.full((len(content), max_words), PAD_ID, dtype=torch.long)
    lengths = torch.empty(len(content), dtype=torch.long)
    for row, tokens in enumerate(content):
        ids = [sot, *tokens[: max_words - 2], eot]
        input_ids[row, : len(ids)] = torch.tensor(ids)
        lengths[row] = len(ids)
    word_mask = torch.arange(max_words)[None, :] < lengths[:, None]
    return TokenizedText(input_ids, word_mask)
