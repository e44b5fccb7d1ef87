"""Converting OpenAI-named CLIP weights and official X-CLIP checkpoints: the converted model's frame, sentence and
word features and logits against a direct reimplementation of OpenAI's CLIP forward pass."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from xclip_lightning.convert import clip_from_openai, convert_official, openai_clip_config, read_state_dict
from xclip_lightning.model.encoders import CLIPEncoders
from xclip_lightning.model.head import XCLIPHead
from xclip_lightning.model.xclip import XCLIP

WIDTH, VISION, DIM, LAYERS, VOCAB, CONTEXT, PATCH, GRID = 128, 128, 96, 2, 300, 20, 8, 4


def random_openai_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """An OpenAI-format ViT CLIP state dict with random weights (their names and layouts)."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=0.05):
        return torch.randn(*shape, generator=g) * scale

    def block(prefix: str, width: int) -> dict[str, torch.Tensor]:
        return {
            f"{prefix}.attn.in_proj_weight": r(3 * width, width), f"{prefix}.attn.in_proj_bias": r(3 * width),
            f"{prefix}.attn.out_proj.weight": r(width, width), f"{prefix}.attn.out_proj.bias": r(width),
            f"{prefix}.ln_1.weight": 1 + r(width), f"{prefix}.ln_1.bias": r(width),
            f"{prefix}.mlp.c_fc.weight": r(4 * width, width), f"{prefix}.mlp.c_fc.bias": r(4 * width),
            f"{prefix}.mlp.c_proj.weight": r(width, 4 * width), f"{prefix}.mlp.c_proj.bias": r(width),
            f"{prefix}.ln_2.weight": 1 + r(width), f"{prefix}.ln_2.bias": r(width),
        }  # fmt: skip

    state = {
        "positional_embedding": r(CONTEXT, WIDTH, scale=0.01), "text_projection": r(WIDTH, DIM),
        "logit_scale": torch.tensor(4.6052), "token_embedding.weight": r(VOCAB, WIDTH, scale=0.02),
        "ln_final.weight": 1 + r(WIDTH), "ln_final.bias": r(WIDTH),
        "visual.class_embedding": r(VISION), "visual.positional_embedding": r(GRID * GRID + 1, VISION),
        "visual.proj": r(VISION, DIM), "visual.conv1.weight": r(VISION, 3, PATCH, PATCH),
        "visual.ln_pre.weight": 1 + r(VISION), "visual.ln_pre.bias": r(VISION),
        "visual.ln_post.weight": 1 + r(VISION), "visual.ln_post.bias": r(VISION),
    }  # fmt: skip
    for i in range(LAYERS):
        state.update(block(f"transformer.resblocks.{i}", WIDTH))
        state.update(block(f"visual.transformer.resblocks.{i}", VISION))
    return state


# ---- OpenAI's forward pass, written out (clip/model.py: ResidualAttentionBlock, VisionTransformer, encode_text) ----


def ln(x, state, name):
    return F.layer_norm(x, x.shape[-1:], state[f"{name}.weight"], state[f"{name}.bias"], eps=1e-5)


def residual_block(x, state, prefix, causal):
    heads = x.shape[-1] // 64
    y = ln(x, state, f"{prefix}.ln_1")
    b, n, w = y.shape
    q, k, v = (y @ state[f"{prefix}.attn.in_proj_weight"].T + state[f"{prefix}.attn.in_proj_bias"]).chunk(3, -1)
    q, k, v = (t.view(b, n, heads, w // heads).transpose(1, 2) for t in (q, k, v))
    scores = q @ k.transpose(-1, -2) / (w // heads) ** 0.5
    if causal:
        scores = scores + torch.full((n, n), float("-inf")).triu(1)
    y = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, n, w)
    x = x + y @ state[f"{prefix}.attn.out_proj.weight"].T + state[f"{prefix}.attn.out_proj.bias"]
    y = ln(x, state, f"{prefix}.ln_2") @ state[f"{prefix}.mlp.c_fc.weight"].T + state[f"{prefix}.mlp.c_fc.bias"]
    y = y * torch.sigmoid(1.702 * y)  # QuickGELU
    return x + y @ state[f"{prefix}.mlp.c_proj.weight"].T + state[f"{prefix}.mlp.c_proj.bias"]


def openai_text(state, ids):
    """-> (sentence [B,D] at EOT = argmax id, as OpenAI's encode_text, and words [B,L,D], as X-CLIP reads them)."""
    x = state["token_embedding.weight"][ids] + state["positional_embedding"][: ids.shape[1]]
    for i in range(LAYERS):
        x = residual_block(x, state, f"transformer.resblocks.{i}", causal=True)
    words = ln(x, state, "ln_final") @ state["text_projection"]
    return words[torch.arange(ids.shape[0]), ids.argmax(-1)], words


def openai_image(state, pixels):
    x = F.conv2d(pixels, state["visual.conv1.weight"], stride=PATCH).flatten(2).transpose(1, 2)  # [N,g*g,W]
    cls = state["visual.class_embedding"].expand(x.shape[0], 1, -1)
    x = ln(torch.cat([cls, x], 1) + state["visual.positional_embedding"], state, "visual.ln_pre")
    for i in range(LAYERS):
        x = residual_block(x, state, f"visual.transformer.resblocks.{i}", causal=False)
    return ln(x[:, 0], state, "visual.ln_post") @ state["visual.proj"]


def inputs(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    lengths = [5, 9, 14]
    ids = torch.zeros(3, 16, dtype=torch.long)
    for row, n in enumerate(lengths):  # SOT, tokens, EOT (the largest id, as in CLIP's vocabulary), 0-padding
        ids[row, : n + 2] = torch.cat([torch.tensor([VOCAB - 2]), torch.randint(1, VOCAB - 2, (n,), generator=g),
                                       torch.tensor([VOCAB - 1])])  # fmt: skip
    word_mask = torch.arange(16)[None] < torch.tensor(lengths)[:, None] + 2
    frames = torch.randint(0, 256, (2, 3, 3, PATCH * GRID, PATCH * GRID), dtype=torch.uint8, generator=g)
    frame_mask = torch.tensor([[True, True, True], [True, True, False]])
    return ids, word_mask, frames, frame_mask


def test_sizes_come_from_the_shapes():
    config = openai_clip_config(random_openai_state())
    assert (config.text_config.hidden_size, config.text_config.num_hidden_layers) == (WIDTH, LAYERS)
    assert (config.vision_config.image_size, config.vision_config.patch_size) == (PATCH * GRID, PATCH)
    assert (config.projection_dim, config.text_config.vocab_size, config.text_config.num_attention_heads) == (
        DIM, VOCAB, WIDTH // 64
    )  # fmt: skip


def test_converted_clip_gives_openais_text_and_frame_features():
    state = random_openai_state()
    encoders = CLIPEncoders(clip_from_openai(state)).eval()
    ids, word_mask, frames, frame_mask = inputs()
    with torch.no_grad():
        sentence, words = encoders.encode_text(ids, word_mask)
        expected_sentence, expected_words = openai_text(state, ids)
        pixels = encoders.normalize_pixels(frames, frame_mask)
        ours = encoders.encode_frames(pixels, frame_mask)
        theirs = openai_image(state, pixels.flatten(0, 1)).view(2, 3, -1)
    torch.testing.assert_close(sentence, expected_sentence, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(words, expected_words, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


def test_an_official_checkpoint_converts_to_an_xclip_folder_with_the_same_logits(tiny_clip_dir, tmp_path):
    state = random_openai_state()
    torch.manual_seed(0)
    head = XCLIPHead(DIM, 16, 3, temporal_layers=2)
    with torch.no_grad():
        for p in head.parameters():
            p.add_(0.05 * torch.randn_like(p))
    official = {**{f"clip.{k}": v.half() for k, v in state.items()}, **head.state_dict()}  # CLIP in fp16, as saved
    torch.save(official, tmp_path / "pytorch_model.bin.4")
    folder = convert_official(tmp_path / "pytorch_model.bin.4", tmp_path / "converted", tokenizer=tiny_clip_dir)
    model = XCLIP.from_pretrained(folder).eval()
    card = (folder / "README.md").read_text()  # a model card in the Hub's layout, saying where it came from
    assert (
        card.startswith("---\nlicense: mit\n")
        and "converted from the official checkpoint `pytorch_model.bin.4`" in card
    )
    assert f"patch {PATCH}, width {VISION}" in card and "No metrics were recorded" in card
    assert (model.head.max_words, model.head.max_frames, model.head.temporal_layers) == (16, 3, 2)
    ids, word_mask, frames, frame_mask = inputs()
    half = {k: v.half().float() for k, v in state.items()}  # what the fp16 checkpoint holds
    with torch.no_grad():
        logits = model(ids, word_mask, frames, frame_mask)
        sentence, words = openai_text(half, ids)
        pixels = model.encoders.normalize_pixels(frames, frame_mask)
        frame_emb = openai_image(half, pixels.flatten(0, 1)).view(2, 3, -1)
        frame_emb = torch.where(frame_mask[..., None], frame_emb, openai_image(half, torch.zeros_like(pixels[:1, 0])))
        expected = head(sentence, words, frame_emb, frame_mask, model.logit_scale())
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-3)


class Holder(torch.nn.Module):
    """A module tree carrying tensors by name, scriptable, like OpenAI's JIT CLIP carries its weights."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def scripted_tree(state: dict[str, torch.Tensor]) -> torch.nn.Module:
    root = Holder()
    for name, tensor in state.items():
        *path, leaf = name.split(".")
        node = root
        for part in path:
            if not hasattr(node, part):
                node.add_module(part, Holder())
            node = getattr(node, part)
        node.register_parameter(leaf, torch.nn.Parameter(tensor.clone(), requires_grad=False))
    return torch.jit.script(root)


def test_a_torchscript_archive_is_read_without_running_its_code(tmp_path):
    state = random_openai_state()
    state = {**state, "visual.conv1.weight": state["visual.conv1.weight"].half()}  # OpenAI's archives are fp16
    scripted_tree(state).save(str(tmp_path / "ViT-B-32.pt"))
    read = read_state_dict(tmp_path / "ViT-B-32.pt")
    assert read.keys() == state.keys()
    assert all(torch.equal(read[k], state[k]) and read[k].dtype == state[k].dtype for k in state)
    encoders = CLIPEncoders(clip_from_openai(read)).eval()  # and it converts
    ids, word_mask, _, _ = inputs()
    with torch.no_grad():
        torch.testing.assert_close(encoders.encode_text(ids, word_mask)[0], openai_text(state, ids)[0])


def test_a_torchscript_archive_with_a_hostile_global_is_refused(tmp_path):
    import os
    import pickle
    import zipfile

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    with zipfile.ZipFile(tmp_path / "evil.pt", "w") as archive:
        archive.writestr("evil/data.pkl", pickle.dumps(Payload(), protocol=2))
        archive.writestr("evil/constants.pkl", pickle.dumps(()))
    with pytest.raises(ValueError, match=r"evil\.pt: not a TorchScript archive of weights .*refusing to load"):
        read_state_dict(tmp_path / "evil.pt")
    assert not (tmp_path / "pwned").exists()


def test_the_convert_command_writes_a_clip_folder_usable_as_clip_name_or_path(tiny_clip_dir, tmp_path):
    from xclip_lightning.cli import main

    torch.save(random_openai_state(), tmp_path / "clip.state_dict.pt")
    main(["convert", "--openai-clip", str(tmp_path / "clip.state_dict.pt"), "--out", str(tmp_path / "clip"),
          "--tokenizer", tiny_clip_dir])  # fmt: skip
    model = XCLIP.from_clip(str(tmp_path / "clip"), max_words=16, max_frames=3, init_temporal_from_clip=False)
    ids, word_mask, _, _ = inputs()
    with torch.no_grad():
        torch.testing.assert_close(
            model.encoders.encode_text(ids, word_mask)[1], openai_text(random_openai_state(), ids)[1], rtol=1e-4,
            atol=1e-5,
        )  # fmt: skip
