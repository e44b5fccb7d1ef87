"""``XCLIPHead``: the temporal encoder, the eight learnable AOSM matrices and the multi-grained score.

Parameter names are exactly the official ones (``frame_position_embeddings.weight``, ``transformerClip.*``,
``global_mat_weight`` ...), so the head weights of an official X-CLIP checkpoint load with ``load_state_dict``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xclip_lightning.model import fast_similarity as fast
from xclip_lightning.model import similarity as sim
from xclip_lightning.model.similarity import AOSM_TEMPERATURE, CONTRASTS, Aggregation, Contrast
from xclip_lightning.model.temporal import POSITION_ROWS, TemporalTransformer, temporal_encode

# The official defaults, written once (every class that takes these arguments defaults to them)
DEFAULT_CLIP = "openai/clip-vit-base-patch32"  # the ViT-B/32 CLIP every official script starts from
DEFAULT_MAX_WORDS = 32  # official --max_words (MSR-VTT, MSVD, LSMDC; 64 for DiDeMo and ActivityNet)
DEFAULT_MAX_FRAMES = 12  # official --max_frames (MSR-VTT, MSVD, LSMDC; 64 for DiDeMo and ActivityNet)
DEFAULT_TEMPORAL_LAYERS = 4  # official code (cross_num_hidden_layers default); the paper says 3
DEFAULT_BLOCK_ELEMENTS = 1 << 20  # elements of one [bt,L,T,bv] frame-word block in full-matrix scoring (4 MB fp32)
VIDEO_BLOCK = 128  # videos per block: a long contiguous inner dimension for every reduction (bench/head.py)


class TextFeatures(NamedTuple):
    """Normalised text side of the head: sentence [Nt,D], words [Nt,L,D], word_mask [Nt,L] bool or None."""

    sentence: Tensor
    words: Tensor
    word_mask: Tensor | None


class VideoFeatures(NamedTuple):
    """Normalised video side: video [Nv,D] (after the temporal encoder), frames [Nv,T,D] (raw CLIP), mask [Nv,T]."""

    video: Tensor
    frames: Tensor
    frame_mask: Tensor


def _upcast(x: Tensor) -> Tensor:
    """Half and bfloat16 inputs to float32; float32 and float64 stay as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


@contextmanager
def _no_autocast(device: torch.device) -> Iterator[None]:
    with torch.autocast(device_type=device.type, enabled=False):
        yield


class XCLIPHead(nn.Module):
    """The X-CLIP similarity head (xclip-spec.md §4-§6).

    Args:
        embed_dim: D, the CLIP joint embedding width (512 for ViT-B/32 and ViT-B/16).
        max_words: L, word slots; the L x L AOSM matrices are sized to it.
        max_frames: T, frame slots; the T x T AOSM matrices are sized to it.
        temporal_layers: blocks of the temporal encoder (official 4, paper 3); 0 = no temporal encoder ("meanP").
        temporal_heads: attention heads; default D // 64.
        contrasts: which of the four contrasts are averaged (paper Tab. 6).
        aggregation: ``aosm`` or ``first_second`` with first, second in mean/max (paper Tab. 7).
        temperature: AOSM softmax temperature (paper Tab. 9; 0.01).
        mask_padding: False reproduces the official code (padded words, SOT/EOT and padded frames take part in
            every softmax and mean); True excludes padded slots everywhere (needs ``word_mask``).

    ``forward`` takes raw (unnormalised) features and the logit-scale *multiplier* (e.g. 100.0) and returns logits
    [Nt,Nv]. It runs in fp32 (or fp64 if given fp64) even under autocast.
    """

    def __init__(
        self,
        embed_dim: int,
        max_words: int,
        max_frames: int,
        temporal_layers: int = DEFAULT_TEMPORAL_LAYERS,
        temporal_heads: int | None = None,
        contrasts: Sequence[Contrast] = CONTRASTS,
        aggregation: Aggregation = "aosm",
        temperature: float = AOSM_TEMPERATURE,
        mask_padding: bool = False,
    ) -> None:
        super().__init__()
        unknown = set(contrasts) - set(CONTRASTS)
        if unknown or not contrasts:
            raise ValueError(f"contrasts must be a non-empty subset of {CONTRASTS}, got {list(contrasts)}")
        if max_frames > POSITION_ROWS:
            raise ValueError(f"max_frames={max_frames} exceeds the {POSITION_ROWS} temporal positions")
        self.embed_dim, self.max_words, self.max_frames = embed_dim, max_words, max_frames
        self.contrasts = tuple(c for c in CONTRASTS if c in contrasts)
        self.aggregation = aggregation
        self.poolings = sim.stage_poolings(aggregation)
        self.temperature = temperature
        self.mask_padding = mask_padding
        uses_video_feature = {"video_sentence", "video_word"} & set(self.contrasts)
        self.temporal_layers = temporal_layers if uses_video_feature else 0
        if self.temporal_layers > 0:
            self.frame_position_embeddings = nn.Embedding(POSITION_ROWS, embed_dim)
            nn.init.normal_(self.frame_position_embeddings.weight, std=0.01)
            self.transformerClip = TemporalTransformer(embed_dim, self.temporal_layers, temporal_heads)
        for name, size in self._aosm_shapes().items():
            self.register_parameter(name, nn.Parameter(torch.eye(size)))  # identity init (official)

    def config(self) -> dict[str, Any]:
        """The constructor arguments, JSON-ready: ``XCLIPHead(**head.config())`` rebuilds the same head."""
        return {
            "embed_dim": self.embed_dim,
            "max_words": self.max_words,
            "max_frames": self.max_frames,
            "temporal_layers": self.temporal_layers,
            "temporal_heads": self.transformerClip.heads if self.temporal_layers > 0 else None,
            "contrasts": list(self.contrasts),
            "aggregation": self.aggregation,
            "temperature": self.temperature,
            "mask_padding": self.mask_padding,
        }

    def _aosm_shapes(self) -> dict[str, int]:
        """The learnable matrices this configuration uses, by official name, with their size (spec §6 table)."""
        first, second = self.poolings
        d, words, frames = self.embed_dim, self.max_words, self.max_frames
        shapes: dict[str, int] = {}
        if "video_sentence" in self.contrasts:
            shapes["global_mat_weight"] = d
        if "video_word" in self.contrasts and second == "aosm":
            shapes["word_logit_weight"] = words
        if "sentence_frame" in self.contrasts and second == "aosm":
            shapes["frame_logit_weight"] = frames
        if "frame_word" in self.contrasts:
            shapes["local_mat_weight"] = d
            if first == "aosm":
                shapes.update(word_mat_weight=words, frame_mat_weight=frames)
            if second == "aosm":
                shapes.update(frame_mat_weight2=frames, word_mat_weight2=words)
        return dict(sorted(shapes.items()))

    def _weight(self, name: str) -> Tensor | None:
        return getattr(self, name, None)

    # ---- the two sides, each computed once per text / per video -------------------------------------------------

    def encode_text(self, sentence_emb: Tensor, word_emb: Tensor, word_mask: Tensor | None = None) -> TextFeatures:
        """Raw sentence [Nt,D] and words [Nt,L,D] -> normalised ``TextFeatures``."""
        if word_emb.shape[1] != self.max_words:
            raise ValueError(
                f"the head was built for max_words={self.max_words} (its L x L AOSM matrices are sized to it), "
                f"got {word_emb.shape[1]} word slots: tokenize with the same max_words"
            )
        if self.mask_padding and word_mask is None:
            raise ValueError("mask_padding=True needs word_mask [Nt,L] (True on SOT, the tokens and EOT)")
        with _no_autocast(word_emb.device):
            sentence = F.normalize(_upcast(sentence_emb), dim=-1)
            words = F.normalize(_upcast(word_emb), dim=-1)
        return TextFeatures(sentence, words, None if word_mask is None else word_mask.bool())

    def encode_video(self, frame_emb: Tensor, frame_mask: Tensor) -> VideoFeatures:
        """Raw CLIP frames [Nv,T,D] + mask [Nv,T] -> ``VideoFeatures`` (runs the temporal encoder once per video)."""
        if frame_emb.shape[1] != self.max_frames:
            raise ValueError(
                f"the head was built for max_frames={self.max_frames} (its T x T AOSM matrices are sized to it), "
                f"got {frame_emb.shape[1]} frame slots: sample with the same max_frames"
            )
        frame_mask = frame_mask.bool()
        with _no_autocast(frame_emb.device):
            frames = _upcast(frame_emb)
            if self.temporal_layers > 0:
                temporal = temporal_encode(frames, frame_mask, self.frame_position_embeddings, self.transformerClip)
            else:
                temporal = frames
            # frame-level contrasts use the raw CLIP frames (official use_original_clip_for_frame_features=True)
            return VideoFeatures(sim.video_feature(temporal, frame_mask), F.normalize(frames, dim=-1), frame_mask)

    # ---- scoring ----------------------------------------------------------------------------------------------

    def score(self, text: TextFeatures, video: VideoFeatures, logit_scale: Tensor | float) -> dict[str, Tensor]:
        """Every enabled contrast times ``logit_scale`` [Nt,Nv], and ``logits`` = their mean (spec §6)."""
        with _no_autocast(text.sentence.device):
            return self._score(text, video, logit_scale, self._word_local(text))

    def _word_local(self, text: TextFeatures) -> Tensor | None:
        """``omega Lambda`` [Nt,L,D]: the text side of the frame-word bilinear form, computed once per text."""
        return text.words @ self.local_mat_weight if "frame_word" in self.contrasts else None

    def _score(
        self,
        text: TextFeatures,
        video: VideoFeatures,
        logit_scale: Tensor | float,
        word_local: Tensor | None,
        frames_slot_major: Tensor | None = None,
    ) -> dict[str, Tensor]:
        second = self.poolings[1]
        if frames_slot_major is None and {"sentence_frame", "frame_word"} & set(self.contrasts):
            frames_slot_major = fast.frames_by_slot(video.frames)  # shared by the two frame-level contrasts
        word_mask = text.word_mask if self.mask_padding else None
        frame_mask = video.frame_mask if self.mask_padding else None
        tau = self.temperature
        parts: dict[str, Tensor] = {}
        if "video_sentence" in self.contrasts:
            parts["video_sentence"] = sim.video_sentence(text.sentence, video.video, self.global_mat_weight)
        if "video_word" in self.contrasts:
            parts["video_word"] = fast.video_word(
                text.words, video.video, self._weight("word_logit_weight"), second, word_mask, tau
            )
        if "sentence_frame" in self.contrasts:
            parts["sentence_frame"] = fast.sentence_frame(
                text.sentence,
                video.frames,
                self._weight("frame_logit_weight"),
                second,
                frame_mask,
                tau,
                frames_slot_major,
            )
        if word_local is not None:
            weights = {n: self._weight(n) for n in self._aosm_shapes()}
            parts["frame_word"] = fast.frame_word(
                word_local, video.frames, weights, self.poolings, word_mask, frame_mask, tau, frames_slot_major
            )
        parts = {name: logit_scale * value for name, value in parts.items()}
        parts["logits"] = sim.xclip_logits(list(parts.values()), 1.0)  # the parts already carry the scale
        return parts

    def forward(
        self,
        sentence_emb: Tensor,
        word_emb: Tensor,
        frame_emb: Tensor,
        frame_mask: Tensor,
        logit_scale: Tensor | float,
        word_mask: Tensor | None = None,
    ) -> Tensor:
        """Raw features -> logits [Nt,Nv] (texts as rows). ``logit_scale`` is the multiplier, e.g. 100.0.

        Without gradients (evaluation, ``torch.no_grad()``) it scores block by block (``score_matrix``: bounded
        memory, the fastest layout); with them, in one piece so that autograd sees the whole graph."""
        text = self.encode_text(sentence_emb, word_emb, word_mask)
        video = self.encode_video(frame_emb, frame_mask)
        if not torch.is_grad_enabled():
            return self.score_matrix(text, video, logit_scale)
        return self.score(text, video, logit_scale)["logits"]

    @torch.no_grad()
    def score_matrix(
        self,
        text: TextFeatures,
        video: VideoFeatures,
        logit_scale: Tensor | float,
        block_elements: int = DEFAULT_BLOCK_ELEMENTS,
    ) -> Tensor:
        """All Nt texts against all Nv videos, block by block, with bounded memory: logits [Nt,Nv].

        Features come from ``encode_text`` / ``encode_video``, so the temporal encoder has already run once per
        video (the official loop re-runs it for every block of texts). One block holds at most about
        ``block_elements`` entries of the [bt,L,T,bv] frame-word tensor. Every entry depends only on its own
        (text, video) pair, so the result does not depend on the block size.
        """
        nt, nv = text.sentence.shape[0], video.video.shape[0]
        per_pair = self.max_words * self.max_frames
        video_block = max(1, min(nv, VIDEO_BLOCK, block_elements // per_pair))
        text_block = max(1, min(nt, block_elements // (per_pair * video_block)))
        out = torch.empty(nt, nv, dtype=text.sentence.dtype, device=text.sentence.device)
        with _no_autocast(text.sentence.device):
            video_parts = [
                VideoFeatures(*(x[v0 : v0 + video_block] for x in video)) for v0 in range(0, nv, video_block)
            ]
            slot_major = [fast.frames_by_slot(part.frames) for part in video_parts]  # one copy of the frames, made once
            for t0 in range(0, nt, text_block):
                text_part = TextFeatures(*(None if x is None else x[t0 : t0 + text_block] for x in text))
                word_local = self._word_local(text_part)
                for i, video_part in enumerate(video_parts):
                    parts = self._score(text_part, video_part, logit_scale, word_local, slot_major[i])
                    v0 = i * video_block
                    out[t0 : t0 + text_block, v0 : v0 + video_block] = parts["logits"]
        return out
