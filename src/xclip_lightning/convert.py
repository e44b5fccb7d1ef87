"""Bring existing checkpoints: OpenAI CLIP state dicts and official X-CLIP / CLIP4Clip checkpoints.

    xclip-lightning convert --openai-clip ViT-B-32.state_dict.pt --out clip-vitb32 [--tokenizer NAME_OR_DIR]
    xclip-lightning convert --official pytorch_model.bin.4 --out xclip-msrvtt [--tokenizer NAME_OR_DIR]

(a) An OpenAI CLIP state dict (OpenAI's names: ``visual.conv1.weight``, ``transformer.resblocks.0.attn.in_proj_weight``
...) becomes a transformers ``CLIPModel`` folder, usable as ``clip_name_or_path``. (b) An official checkpoint (the
whole state dict: CLIP under ``clip.*`` in OpenAI's names, the head under the official names) becomes an ``XCLIP``
folder that ``XCLIP.from_pretrained`` loads. Every size (widths, layers, heads, patch, image size, context, vocabulary,
word and frame slots, temporal layers) is read from the tensor shapes. The tokenizer (CLIP's BPE, which the
checkpoints do not contain) comes from ``--tokenizer``: a CLIP folder or hub name (default
``openai/clip-vit-base-patch32``, which needs the Hub), or OpenAI's ``bpe_simple_vocab_16e6.txt.gz`` as the CLIP and
X-CLIP repositories ship it, from which the tokenizer is built here (``tokenizer_from_bpe``): no download at all.

Loading never executes pickled code: plain checkpoints go through ``torch.load(weights_only=True)``; OpenAI's
released ``.pt`` files are TorchScript archives, whose ``data.pkl`` is read by a restricted unpickler that builds
only tensors and stand-ins for the archive's classes (``read_torchscript_weights``), never loading its code.
"""

from __future__ import annotations

import collections
import gzip
import io
import math
import pickle
import zipfile
from pathlib import Path

import torch
from torch import Tensor
from transformers import AutoTokenizer, CLIPConfig, CLIPModel, CLIPTokenizer, PreTrainedTokenizerBase

from xclip_lightning.card import model_card, write_card
from xclip_lightning.errors import UserError
from xclip_lightning.model.encoders import CLIPEncoders
from xclip_lightning.model.head import DEFAULT_CLIP, XCLIPHead
from xclip_lightning.model.xclip import XCLIP

HEAD_WIDTH = 64  # OpenAI CLIP: attention heads = width // 64, in both towers
OPENAI_BPE = "bpe_simple_vocab_16e6.txt.gz"
OPENAI_MERGES = 49152 - 256 - 2  # the merges OpenAI's tokenizer uses of its file: 49,408 tokens in all


class ConversionError(UserError, ValueError):
    """A file that cannot be converted, or a tokenizer that cannot be found or does not fit the weights."""


def _byte_symbols() -> list[str]:
    """The printable stand-in of each byte value in the order CLIP's vocabulary lists them (GPT-2's scheme): the
    bytes that print as themselves first, then the others mapped to 256, 257, ..."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(others))]


def tokenizer_from_bpe(path: str | Path) -> CLIPTokenizer:
    """CLIP's tokenizer from OpenAI's merges file (``bpe_simple_vocab_16e6.txt.gz``; also plain text): the vocabulary
    is the 256 byte symbols, the same with ``</w>``, one token per merge in the file's order, then
    ``<|startoftext|>`` and ``<|endoftext|>``, as in OpenAI's ``simple_tokenizer.py``."""
    try:
        raw = Path(path).read_bytes()
        text = (gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw).decode("utf-8")
    except (OSError, UnicodeDecodeError, EOFError, gzip.BadGzipFile) as err:
        raise ConversionError(f"{path}: not a readable BPE merges file ({type(err).__name__}: {err})") from None
    lines = text.split("\n")[1 : 1 + OPENAI_MERGES]  # the first line is a version header
    merges = [tuple(line.split()) for line in lines if line.strip()]
    if not merges or any(len(pair) != 2 for pair in merges):
        raise ConversionError(f"{path}: not OpenAI's BPE merges file (expected a header line, then 'a b' per line)")
    symbols = _byte_symbols()
    words = [*symbols, *(s + "</w>" for s in symbols), *("".join(pair) for pair in merges)]
    vocab = {token: i for i, token in enumerate([*words, "<|startoftext|>", "<|endoftext|>"])}
    if len(vocab) != len(words) + 2:
        raise ConversionError(f"{path}: two merges give the same token; not OpenAI's BPE merges file")
    return CLIPTokenizer(vocab=vocab, merges=merges)


def load_tokenizer(name_or_path: str, vocab_size: int | None = None) -> PreTrainedTokenizerBase:
    """The tokenizer of ``--tokenizer``: OpenAI's BPE file, a tokenizer folder or a hub name; refused when it has
    more tokens than the text tower's ``vocab_size`` (its ids would fall outside the embedding)."""
    how = (
        f"give --tokenizer a local CLIP folder (with tokenizer.json, or vocab.json and merges.txt) or OpenAI's "
        f"{OPENAI_BPE}, which the CLIP and X-CLIP repositories ship"
    )
    if Path(name_or_path).is_file():
        tokenizer = tokenizer_from_bpe(name_or_path)
    else:
        try:
            tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        except (OSError, ValueError) as err:
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ConversionError(
                f"the tokenizer {name_or_path!r} cannot be loaded ({reason[:200]}): the checkpoints do not contain "
                f"CLIP's tokenizer, so {how}"
            ) from None
    if vocab_size is not None and len(tokenizer) > vocab_size:
        raise ConversionError(
            f"the tokenizer {name_or_path!r} has {len(tokenizer)} tokens, more than the {vocab_size} of the weights' "
            f"text tower: {how} (CLIP's has 49,408)"
        )
    return tokenizer


_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "HalfStorage": torch.float16, "DoubleStorage": torch.float64,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
}  # fmt: skip


class _ScriptObject:
    """Stands in for a TorchScript class instance: keeps its attributes, runs none of its code."""

    def __setstate__(self, state: dict) -> None:
        self.__dict__["attributes"] = state


def _rebuild_tensor(storage: Tensor, offset: int, size: tuple, stride: tuple, *_: object) -> Tensor:
    return torch.as_strided(storage, size, stride, offset).clone()


class _TorchScriptUnpickler(pickle.Unpickler):
    """Reads a TorchScript archive's ``data.pkl`` with tensors and plain containers only: any other global (a
    function, a class outside ``__torch__``) is refused, and ``__torch__`` classes become ``_ScriptObject``."""

    def __init__(self, archive: zipfile.ZipFile, prefix: str) -> None:
        super().__init__(io.BytesIO(archive.read(f"{prefix}data.pkl")))
        self.archive, self.prefix = archive, prefix

    def find_class(self, module: str, name: str) -> object:
        if module == "__torch__" or module.startswith("__torch__."):
            return _ScriptObject
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch" and name in _STORAGE_DTYPES:
            return name
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a TorchScript archive")

    def persistent_load(self, pid: tuple) -> Tensor:
        _, storage_type, key, _, numel = pid
        data = bytearray(self.archive.read(f"{self.prefix}data/{key}"))
        return torch.frombuffer(data, dtype=_STORAGE_DTYPES[storage_type])[:numel] if numel else torch.empty(0)


def _flatten(value: object, name: str, out: dict[str, Tensor]) -> dict[str, Tensor]:
    if isinstance(value, Tensor):
        out[name] = value
    elif isinstance(value, _ScriptObject):
        for key, item in value.attributes.items():
            _flatten(item, f"{name}.{key}" if name else key, out)
    return out


def read_torchscript_weights(path: str | Path) -> dict[str, Tensor]:
    """Every tensor attribute of a TorchScript archive (OpenAI's ``ViT-B-32.pt``), by its module path, without
    running the archive's code."""
    with zipfile.ZipFile(path) as archive:
        (data,) = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
        prefix = data.removesuffix("data.pkl")
        try:
            root = _TorchScriptUnpickler(archive, prefix).load()
        except (pickle.UnpicklingError, KeyError, ValueError, TypeError) as err:
            raise ValueError(f"{path}: not a TorchScript archive of weights that can be read safely ({err})") from err
    return _flatten(root, "", {})


def _is_torchscript(path: Path) -> bool:
    return zipfile.is_zipfile(path) and any(n.endswith("constants.pkl") for n in zipfile.ZipFile(path).namelist())


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """A state dict from a plain checkpoint (weights-only load) or a TorchScript archive (a restricted reader);
    nothing in the file is executed."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"{path}: no such file")
    try:
        if _is_torchscript(path):
            return read_torchscript_weights(path)
        state = torch.load(path, map_location="cpu", weights_only=True)
    except ValueError as err:
        raise ConversionError(str(err)) from None
    except Exception as err:  # truncated, flipped, or not a torch file (torch's advice to unpickle it is not given)
        raise ConversionError(f"{path}: not a readable checkpoint ({type(err).__name__})") from None
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ConversionError(f"{path} does not hold a state dict of tensors")
    return state


def _layers(state: dict[str, Tensor], prefix: str) -> int:
    """How many blocks ``prefix.<i>.*`` the state dict holds."""
    return len({k[len(prefix) :].split(".")[0] for k in state if k.startswith(prefix)})


def openai_clip_config(state: dict[str, Tensor]) -> CLIPConfig:
    """Every size of an OpenAI CLIP (ViT) from its tensors' shapes."""
    text_width = state["ln_final.weight"].shape[0]
    vision_width, _, patch, _ = state["visual.conv1.weight"].shape
    grid = math.isqrt(state["visual.positional_embedding"].shape[0] - 1)
    return CLIPConfig(
        text_config={
            "vocab_size": state["token_embedding.weight"].shape[0],
            "hidden_size": text_width,
            "intermediate_size": state["transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
            "num_hidden_layers": _layers(state, "transformer.resblocks."),
            "num_attention_heads": text_width // HEAD_WIDTH,
            "max_position_embeddings": state["positional_embedding"].shape[0],
            "hidden_act": "quick_gelu",
            "bos_token_id": state["token_embedding.weight"].shape[0] - 2,  # <|startoftext|>
            "eos_token_id": state["token_embedding.weight"].shape[0] - 1,  # <|endoftext|>
        },
        vision_config={
            "hidden_size": vision_width,
            "intermediate_size": state["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
            "num_hidden_layers": _layers(state, "visual.transformer.resblocks."),
            "num_attention_heads": vision_width // HEAD_WIDTH,
            "image_size": grid * patch,
            "patch_size": patch,
            "hidden_act": "quick_gelu",
        },
        projection_dim=state["text_projection"].shape[1],
    )


def _block(state: dict[str, Tensor], src: str, dst: str) -> dict[str, Tensor]:
    """One residual block: OpenAI's fused in_proj -> q, k, v; c_fc / c_proj -> fc1 / fc2; ln_1 / ln_2."""
    q, k, v = state[f"{src}.attn.in_proj_weight"].chunk(3)
    qb, kb, vb = state[f"{src}.attn.in_proj_bias"].chunk(3)
    out = {
        f"{dst}.self_attn.q_proj.weight": q, f"{dst}.self_attn.k_proj.weight": k, f"{dst}.self_attn.v_proj.weight": v,
        f"{dst}.self_attn.q_proj.bias": qb, f"{dst}.self_attn.k_proj.bias": kb, f"{dst}.self_attn.v_proj.bias": vb,
    }  # fmt: skip
    pairs = {"attn.out_proj": "self_attn.out_proj", "ln_1": "layer_norm1", "ln_2": "layer_norm2"}
    pairs.update({"mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"})
    for a, b in pairs.items():
        for p in ("weight", "bias"):
            out[f"{dst}.{b}.{p}"] = state[f"{src}.{a}.{p}"]
    return out


def openai_to_transformers(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """OpenAI CLIP names -> transformers ``CLIPModel`` names (projections transposed, attention unfused)."""
    out = {
        "text_model.embeddings.token_embedding.weight": state["token_embedding.weight"],
        "text_model.embeddings.position_embedding.weight": state["positional_embedding"],
        "text_model.final_layer_norm.weight": state["ln_final.weight"],
        "text_model.final_layer_norm.bias": state["ln_final.bias"],
        "text_projection.weight": state["text_projection"].T,
        "vision_model.embeddings.class_embedding": state["visual.class_embedding"],
        "vision_model.embeddings.patch_embedding.weight": state["visual.conv1.weight"],
        "vision_model.embeddings.position_embedding.weight": state["visual.positional_embedding"],
        "vision_model.pre_layrnorm.weight": state["visual.ln_pre.weight"],
        "vision_model.pre_layrnorm.bias": state["visual.ln_pre.bias"],
        "vision_model.post_layernorm.weight": state["visual.ln_post.weight"],
        "vision_model.post_layernorm.bias": state["visual.ln_post.bias"],
        "visual_projection.weight": state["visual.proj"].T,
        "logit_scale": state["logit_scale"],
    }
    for i in range(_layers(state, "transformer.resblocks.")):
        out.update(_block(state, f"transformer.resblocks.{i}", f"text_model.encoder.layers.{i}"))
    for i in range(_layers(state, "visual.transformer.resblocks.")):
        out.update(_block(state, f"visual.transformer.resblocks.{i}", f"vision_model.encoder.layers.{i}"))
    return {k: v.float().contiguous() for k, v in out.items()}


def clip_from_openai(state: dict[str, Tensor]) -> CLIPModel:
    model = CLIPModel(openai_clip_config(state))
    missing, unexpected = model.load_state_dict(openai_to_transformers(state), strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]  # a buffer, not a weight
    if missing or unexpected:
        raise ValueError(f"the OpenAI state dict does not map onto CLIP: missing {missing}, unexpected {unexpected}")
    return model


def convert_openai_clip(path: str | Path, out: str | Path, tokenizer: str = DEFAULT_CLIP) -> Path:
    """(a): an OpenAI CLIP state dict -> a transformers CLIP folder (weights, config, tokenizer)."""
    state = read_state_dict(path)
    if "visual.conv1.weight" not in state or "token_embedding.weight" not in state:
        raise ConversionError(f"{path}: not an OpenAI CLIP (ViT) state dict (no visual.conv1.weight, token_embedding)")
    text_tokens = load_tokenizer(tokenizer, state["token_embedding.weight"].shape[0])
    model = clip_from_openai(state)
    model.save_pretrained(out)
    text_tokens.save_pretrained(out)
    return Path(out)


def convert_official(path: str | Path, out: str | Path, tokenizer: str = DEFAULT_CLIP, license: str = "mit") -> Path:
    """(b): an official X-CLIP / CLIP4Clip checkpoint -> an ``XCLIP`` folder, with its model card."""
    state = read_state_dict(path)
    clip_state = {k.removeprefix("clip."): v for k, v in state.items() if k.startswith("clip.")}
    head_state = {k: v for k, v in state.items() if not k.startswith("clip.") and not k.startswith("loss_fct")}
    if not clip_state or "global_mat_weight" not in head_state:
        raise ConversionError(f"{path}: expected CLIP under clip.* and the X-CLIP head (global_mat_weight, ...)")
    text_tokens = load_tokenizer(tokenizer, clip_state["token_embedding.weight"].shape[0])
    words = head_state["word_logit_weight"].shape[0]
    frames = head_state["frame_logit_weight"].shape[0]
    layers = _layers(head_state, "transformerClip.resblocks.")
    head = XCLIPHead(clip_state["text_projection"].shape[1], words, frames, temporal_layers=layers)
    head.load_state_dict({k: v.float() for k, v in head_state.items()}, strict=True)
    clip = clip_from_openai(clip_state)
    folder = XCLIP(CLIPEncoders(clip), head, text_tokens).save_pretrained(out)
    vision = clip.config.vision_config
    base = f"OpenAI CLIP ViT (patch {vision.patch_size}, width {vision.hidden_size}), the weights in the checkpoint"
    source = (
        f"converted from the official checkpoint `{Path(path).name}` (xuguohai/X-CLIP or CLIP4Clip) by "
        f"`xclip-lightning convert --official`"
    )
    write_card(folder, model_card(f"X-CLIP: {Path(out).name}", source, base, head.config(), license=license))
    return folder
