"""Captions get the ids the official tokenizer gives them: its cleaning (ftfy, HTML entities unescaped twice,
whitespace collapsed) and lower-casing, then byte-level BPE. The reference here is a restatement of the official
``SimpleTokenizer`` run on the same vocabulary and merges as transformers' CLIP tokenizers, loaded through
``from_pretrained`` from the files OpenAI's releases ship."""

from __future__ import annotations

import html
import json

import ftfy
import pytest
import regex
from transformers import AutoTokenizer

from xclip_lightning.inputs.tokenize import tokenize

# raw web text as it occurs in the benchmark captions (real-data-notes.md), with an ASCII twin in mind for each
CAPTIONS = [
    "a man &amp; a woman are talking",  # HTML entity
    "the chef&#39;s knife cuts a tomato",  # numeric entity
    "a &quot;big&quot; dog runs",  # quotes as entities
    "a man &amp;amp; his dog",  # double-escaped: the official code unescapes twice
    "someone\u2019s cat is sleeping",  # curly apostrophe
    "\u201ca man\u201d talks",  # curly double quotes
    "a \ufb01sh swims",  # the fi ligature
    "ＡＢＣ news shows a map",  # full-width letters
    "a cafÃ© in paris",  # mis-decoded UTF-8
    "a  man\t is\n talking  ",  # runs of whitespace
    "a\u00a0man is talking",  # a non-breaking space
    "A MAN IS TALKING",  # upper case
    "a plain caption",
]


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP's reversible byte -> printable character table."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {b: chr(b) for b in printable}, 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


BYTE_CHARS = _bytes_to_unicode()
WORDS = ["a", "man", "woman", "and", "talking", "the", "chef", "knife", "dog", "cat", "fish", "big", "abc", "cafe"]


def _merges() -> list[tuple[str, str]]:
    """Left-to-right merges that build each of WORDS as one token."""
    merges: list[tuple[str, str]] = []
    for word in WORDS:
        parts = [*word[:-1], word[-1] + "</w>"]
        while len(parts) > 1:
            pair = (parts[0], parts[1])
            if pair not in merges:
                merges.append(pair)
            parts = [parts[0] + parts[1], *parts[2:]]
    return merges


MERGES = _merges()
VOCAB_LIST = [*BYTE_CHARS.values(), *(c + "</w>" for c in BYTE_CHARS.values()), *("".join(m) for m in MERGES)]
VOCAB_LIST += ["<|startoftext|>", "<|endoftext|>"]
VOCAB = {token: i for i, token in enumerate(VOCAB_LIST)}


class OfficialSimpleTokenizer:
    """The official ``clip/simple_tokenizer.py`` algorithm, restated: clean, lower-case, split with its pattern,
    map bytes to characters, apply the merges by rank."""

    pattern = regex.compile(
        r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
        regex.IGNORECASE,
    )

    def __init__(self) -> None:
        self.ranks = {pair: i for i, pair in enumerate(MERGES)}

    def bpe(self, token: str) -> list[str]:
        word = [*token[:-1], token[-1] + "</w>"]
        while len(word) > 1:
            pairs = {(word[i], word[i + 1]) for i in range(len(word) - 1)}
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(word):
                if i < len(word) - 1 and (word[i], word[i + 1]) == best:
                    merged.append(word[i] + word[i + 1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        return word

    def encode(self, text: str) -> list[int]:
        text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
        text = regex.sub(r"\s+", " ", text).strip().lower()
        ids = []
        for token in self.pattern.findall(text):
            chars = "".join(BYTE_CHARS[b] for b in token.encode("utf-8"))
            ids.extend(VOCAB[piece] for piece in self.bpe(chars))
        return ids


@pytest.fixture(scope="module", params=[True, False], ids=["fast", "slow"])
def clip_tokenizer(request, tmp_path_factory):
    """A CLIP tokenizer folder as OpenAI's releases have it (vocab.json, merges.txt), loaded through the real
    ``from_pretrained`` path: the fast one, and the slow one where transformers still has it (before 5)."""
    folder = tmp_path_factory.mktemp("clip_tokenizer")
    (folder / "vocab.json").write_text(json.dumps(VOCAB))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in MERGES))
    config = {"tokenizer_class": "CLIPTokenizer", "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>"}
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "unk_token": "<|endoftext|>"}))
    return AutoTokenizer.from_pretrained(folder, use_fast=request.param)


def content_ids(tokenized, row: int) -> list[int]:
    ids = tokenized.input_ids[row][tokenized.word_mask[row]].tolist()
    return ids[1:-1]  # without SOT and EOT


def test_every_kind_of_raw_caption_gets_the_official_ids(clip_tokenizer):
    official = OfficialSimpleTokenizer()
    ours = tokenize(clip_tokenizer, CAPTIONS, max_words=40)
    for row, caption in enumerate(CAPTIONS):
        assert content_ids(ours, row) == official.encode(caption), caption
    assert ours.input_ids[0, 0] == VOCAB["<|startoftext|>"]
    # words of the vocabulary became single tokens, so the comparison exercised the merges, not only bytes
    assert official.encode("a man and a dog") == [VOCAB[w + "</w>"] for w in ("a", "man", "and", "a", "dog")]


def test_without_cleaning_the_raw_captions_get_other_ids(clip_tokenizer):
    """The fast tokenizer does not clean (so 7+ of the captions change); the slow one of transformers 4 runs ftfy
    itself, and then the cleaning is idempotent: the same ids either way."""
    official = OfficialSimpleTokenizer()
    raw = tokenize(clip_tokenizer, CAPTIONS, max_words=40, clean=False)
    differ = [c for row, c in enumerate(CAPTIONS) if content_ids(raw, row) != official.encode(c)]
    if clip_tokenizer.is_fast:
        assert len(differ) >= 7 and "a plain caption" not in differ  # entities, quotes, ligature, width, mojibake
    else:
        assert differ == []


def test_cleaning_applies_to_any_tokenizer_the_model_uses(tiny_clip_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_clip_dir)
    cleaned = tokenize(tokenizer, ["a red &amp;amp; blue\u00a0circle\u2019s  move"], max_words=24)
    plain = tokenize(tokenizer, ["a red & blue circle's move"], max_words=24)
    assert cleaned.input_ids.equal(plain.input_ids)
