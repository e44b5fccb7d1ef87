"""``XCLIP``: CLIP encoders + the X-CLIP head + the tokenizer, saved and loaded as one folder.

A saved folder holds ``model.safetensors`` (all weights), ``config.json`` (the CLIP config), ``xclip_config.json``
(the head settings) and the tokenizer files; ``XCLIP.from_pretrained(folder)`` needs neither Lightning nor a
download.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from xclip_lightning.inputs.tokenize import TokenizedText, tokenize
from xclip_lightning.model.encoders import Attention, CLIPEncoders, encoders_from_config, load_encoders
from xclip_lightning.model.head import (
    DEFAULT_BLOCK_ELEMENTS,
    DEFAULT_MAX_FRAMES,
    DEFAULT_MAX_WORDS,
    DEFAULT_TEMPORAL_LAYERS,
    TextFeatures,
    VideoFeatures,
    XCLIPHead,
)
from xclip_lightning.model.temporal import init_from_clip_text

WEIGHTS_FILE = "model.safetensors"
XCLIP_CONFIG_FILE = "xclip_config.json"
FORMAT_VERSION = 1


def update_with_tensors(digest: Any, value: Any, name: str = "", everything: bool = False) -> Any:
    """Feed every tensor inside ``value`` (nested dicts, lists, tuples) to ``digest``: names, dtypes, shapes and
    the raw bytes, in a fixed order. Values that are not tensors are skipped, unless ``everything``: then each is fed
    as its type and ``repr`` (strings, numbers, None, dtypes: what a checkpoint holds besides tensors)."""
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(value, dict):
        if everything:
            digest.update(f"{name}|dict|{len(value)}".encode())
        for key in sorted(value, key=str):
            update_with_tensors(digest, value[key], f"{name}/{key}", everything)
    elif isinstance(value, list | tuple):
        if everything:
            digest.update(f"{name}|list|{len(value)}".encode())
        for i, item in enumerate(value):
            update_with_tensors(digest, item, f"{name}/{i}", everything)
    elif everything:
        digest.update(f"{name}|{type(value).__name__}|{value!r}".encode())
    return digest


def tensors_sha256(value: Any, everything: bool = False) -> str:
    """SHA-256 of every tensor inside ``value`` (and of every other value too with ``everything``; see
    ``update_with_tensors``)."""
    return update_with_tensors(hashlib.sha256(), value, everything=everything).hexdigest()


def tokenizer_from_files(files: dict[str, str]) -> PreTrainedTokenizerBase:
    """A tokenizer from the text of its saved files (``{"tokenizer.json": ..., ...}``)."""
    with tempfile.TemporaryDirectory() as folder:
        for name, text in files.items():
            if Path(name).name != name:
                raise ValueError(f"tokenizer file name {name!r} is not a plain file name")
            (Path(folder) / name).write_text(text, encoding="utf-8")
        return AutoTokenizer.from_pretrained(folder)


class XCLIP(nn.Module):
    """X-CLIP for text-video retrieval: ``encoders`` (transformers CLIP) and ``head`` (``XCLIPHead``).

    Build from CLIP weights with ``XCLIP.from_clip(name_or_path, ...)``; save and reload a trained model with
    ``save_pretrained`` / ``from_pretrained``.
    """

    def __init__(self, encoders: CLIPEncoders, head: XCLIPHead, tokenizer: PreTrainedTokenizerBase) -> None:
        super().__init__()
        if head.embed_dim != encoders.embed_dim:
            raise ValueError(f"head width {head.embed_dim} != CLIP projection width {encoders.embed_dim}")
        self.encoders = encoders
        self.head = head
        self.tokenizer = tokenizer

    @classmethod
    def from_clip(
        cls,
        clip_name_or_path: str,
        max_words: int = DEFAULT_MAX_WORDS,
        max_frames: int = DEFAULT_MAX_FRAMES,
        temporal_layers: int = DEFAULT_TEMPORAL_LAYERS,
        init_temporal_from_clip: bool = True,
        clip_spec: dict[str, Any] | None = None,
        attention: Attention = "sdpa",
        **head_kwargs: Any,
    ) -> XCLIP:
        """Start from CLIP weights (a local folder or a hub name): the official initialisation.

        The temporal encoder's blocks and position table are copied from CLIP's text tower (spec §4) unless
        ``init_temporal_from_clip`` is False. ``head_kwargs`` go to ``XCLIPHead`` (contrasts, aggregation, ...).
        With ``clip_spec`` (``XCLIP.clip_spec()`` of a saved model) CLIP is built from that config and tokenizer
        with random weights instead, and ``clip_name_or_path`` is not read: for weights loaded right after.
        ``attention``: torch's scaled-dot-product attention (``sdpa``) or transformers' ``eager`` one.
        """
        if clip_spec is None:
            encoders = load_encoders(clip_name_or_path, attention)  # CLIP, or SigLIP (model_type says)
            tokenizer = AutoTokenizer.from_pretrained(clip_name_or_path)
        else:
            encoders = encoders_from_config(clip_spec["config"], attention)
            tokenizer = tokenizer_from_files(clip_spec["tokenizer"])
        head = XCLIPHead(encoders.embed_dim, max_words, max_frames, temporal_layers=temporal_layers, **head_kwargs)
        if init_temporal_from_clip and head.temporal_layers > 0:
            init_from_clip_text(head.frame_position_embeddings, head.transformerClip, encoders.clip.text_model)
        return cls(encoders, head, tokenizer)

    def clip_spec(self) -> dict[str, Any]:
        """CLIP's config and the tokenizer's files as plain data (strings and numbers): what a checkpoint stores
        so that it can be loaded without the original CLIP folder (``from_clip(..., clip_spec=...)``)."""
        with tempfile.TemporaryDirectory() as folder:
            self.tokenizer.save_pretrained(folder)
            files = {p.name: p.read_text(encoding="utf-8") for p in sorted(Path(folder).iterdir()) if p.is_file()}
        return {"config": self.encoders.clip.config.to_dict(), "tokenizer": files}

    # ---- encoding -----------------------------------------------------------------------------------------------

    def tokenize(self, captions: Sequence[str]) -> TokenizedText:
        """Captions -> ids and word mask in the official layout, sized to the head's max_words."""
        return tokenize(self.tokenizer, captions, self.head.max_words)

    def logit_scale(self) -> Tensor:
        return self.encoders.logit_scale()

    def encode_text(self, input_ids: Tensor, word_mask: Tensor) -> TextFeatures:
        """input_ids, word_mask [Nt,L] -> normalised ``TextFeatures``."""
        sentence, words = self.encoders.encode_text(input_ids, word_mask)
        return self.head.encode_text(sentence, words, word_mask)

    def encode_frames(self, frames: Tensor, frame_mask: Tensor) -> Tensor:
        """uint8 frames [Nv,T,3,S,S] + mask [Nv,T] -> raw CLIP frame features [Nv,T,D]."""
        return self.encoders.encode_frames(self.encoders.normalize_pixels(frames, frame_mask), frame_mask)

    def encode_video(self, frames: Tensor, frame_mask: Tensor) -> VideoFeatures:
        """uint8 frames [Nv,T,3,S,S] + mask [Nv,T] -> normalised ``VideoFeatures`` (temporal encoder included)."""
        return self.head.encode_video(self.encode_frames(frames, frame_mask), frame_mask)

    def forward(self, input_ids: Tensor, word_mask: Tensor, frames: Tensor, frame_mask: Tensor) -> Tensor:
        """Logits [Nt,Nv] (texts as rows) of a batch of captions against a batch of videos."""
        text = self.encode_text(input_ids, word_mask)
        video = self.encode_video(frames, frame_mask)
        return self.head.score(text, video, self.logit_scale())["logits"]

    def score_matrix(
        self, text: TextFeatures, video: VideoFeatures, block_elements: int = DEFAULT_BLOCK_ELEMENTS
    ) -> Tensor:
        """All texts against all videos in blocks (see ``XCLIPHead.score_matrix``)."""
        return self.head.score_matrix(text, video, self.logit_scale(), block_elements)

    # ---- persistence --------------------------------------------------------------------------------------------

    def save_pretrained(self, folder: str | Path) -> Path:
        """Write weights (safetensors), the CLIP config, the head config and the tokenizer to ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {name: tensor.detach().contiguous().cpu() for name, tensor in self.state_dict().items()}
        save_file(state, str(folder / WEIGHTS_FILE), metadata={"format": "pt", "xclip_format": str(FORMAT_VERSION)})
        self.encoders.clip.config.save_pretrained(folder)
        head_config = {"format_version": FORMAT_VERSION, **self.head.config()}
        (folder / XCLIP_CONFIG_FILE).write_text(json.dumps(head_config, indent=2) + "\n")
        self.tokenizer.save_pretrained(folder)
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | Path, map_location: str | torch.device = "cpu") -> XCLIP:
        """Load a folder written by ``save_pretrained`` (no Lightning, no download)."""
        folder = Path(folder)
        config_path = folder / XCLIP_CONFIG_FILE
        if not config_path.is_file():
            raise FileNotFoundError(
                f"{config_path} not found: {folder} is not a saved XCLIP model. To start from CLIP weights, use "
                f"XCLIP.from_clip('{folder}')"
            )
        head_config = json.loads(config_path.read_text())
        version = head_config.pop("format_version", None)
        if version != FORMAT_VERSION:
            raise ValueError(f"{config_path}: format_version {version}, this version of xclip-lightning reads 1")
        encoders = encoders_from_config(str(folder))
        model = cls(encoders, XCLIPHead(**head_config), AutoTokenizer.from_pretrained(folder))
        model.load_state_dict(load_file(str(folder / WEIGHTS_FILE), device=str(map_location)))
        return model
