"""XCLIPRetrieval: DDP gradients equal single-process ones, optimiser and schedule, resume, evaluation protocol."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader

from xclip_lightning.data.dataset import collate
from xclip_lightning.lightning_module import MAX_LOGIT_SCALE, XCLIPRetrieval, warmup_cosine

WORDS, FRAMES = 16, 4


def pairs(tiny_clip_dir: str, count: int) -> list[dict[str, torch.Tensor]]:
    """``count`` (caption, video) training items with varied lengths (padding on both sides)."""
    from conftest import CAPTIONS

    model = XCLIPRetrieval(tiny_clip_dir, max_words=WORDS, max_frames=FRAMES)
    tokens = model.model.tokenize([CAPTIONS[i % len(CAPTIONS)] for i in range(count)])
    generator = torch.Generator().manual_seed(0)
    size = model.model.encoders.image_size
    items = []
    for i in range(count):
        frames = torch.randint(0, 256, (FRAMES, 3, size, size), dtype=torch.uint8, generator=generator)
        mask = torch.arange(FRAMES) < 1 + i % FRAMES
        items.append(
            {
                "input_ids": tokens.input_ids[i],
                "word_mask": tokens.word_mask[i],
                "frames": frames * mask[:, None, None, None],
                "frame_mask": mask,
                "video_index": torch.tensor(i),
            }
        )
    return items


class GradCapture(Callback):
    """Saves rank 0's gradients (after DDP's averaging, before clipping and the step) to a file."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if trainer.global_rank == 0:
            grads = {n: p.grad.detach().clone() for n, p in pl_module.named_parameters() if p.grad is not None}
            torch.save(grads, self.path)


def one_step_grads(
    tiny_clip_dir, items, path, devices: int, batch_size: int, **model_kwargs
) -> dict[str, torch.Tensor]:
    """Gradients of one training step in float64 (so that only the arithmetic, not rounding, can differ)."""
    L.seed_everything(0)
    model = XCLIPRetrieval(tiny_clip_dir, max_words=WORDS, max_frames=FRAMES, **model_kwargs)
    trainer = L.Trainer(
        accelerator="cpu",
        precision="64-true",
        devices=devices,
        strategy="ddp_spawn" if devices > 1 else "auto",
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[GradCapture(str(path))],
    )
    trainer.fit(model, DataLoader(items, batch_size=batch_size, shuffle=False, collate_fn=collate))
    return torch.load(path)


@pytest.mark.slow
def test_ddp_gradients_equal_single_process_on_the_global_batch(tiny_clip_dir, tmp_path):
    items = pairs(tiny_clip_dir, 4)
    # the two ranks see different halves of the 4 items (with different frame padding); the global batch is the
    # same 4 pairs in some order, and the symmetric loss does not depend on the order
    ddp = one_step_grads(tiny_clip_dir, items, tmp_path / "ddp.pt", devices=2, batch_size=2)
    single = one_step_grads(tiny_clip_dir, items, tmp_path / "one.pt", devices=1, batch_size=4)
    assert ddp.keys() == single.keys() and len(single) > 50
    assert "model.encoders.clip.text_model.embeddings.token_embedding.weight" not in single  # frozen (official)
    worst = max((ddp[n] - single[n]).abs().max().item() for n in single)
    assert worst < 1e-6, worst
    scale = max(single[n].abs().max().item() for n in single)
    assert scale > 1e-3  # the gradients are not trivially zero


@pytest.mark.parametrize("chunk", [1, 3])
def test_gradient_caching_gives_the_gradients_of_plain_training(tiny_clip_dir, tmp_path, chunk):
    """One process, float64: chunks of 1 or 3 pairs (the last one short) against the whole batch of 5 at once."""
    items = pairs(tiny_clip_dir, 5)
    plain = one_step_grads(tiny_clip_dir, items, tmp_path / "plain.pt", 1, 5, max_grad_norm=None)
    cached = one_step_grads(tiny_clip_dir, items, tmp_path / "gc.pt", 1, 5, max_grad_norm=None, grad_cache_chunk=chunk)
    assert cached.keys() == plain.keys() and len(plain) > 50
    worst = max((cached[n] - plain[n]).abs().max().item() for n in plain)
    assert worst < 1e-10, worst
    assert max(plain[n].abs().max().item() for n in plain) > 1e-3


def test_activation_checkpointing_gives_the_same_gradients(tiny_clip_dir, tmp_path):
    items = pairs(tiny_clip_dir, 4)
    plain = one_step_grads(tiny_clip_dir, items, tmp_path / "plain.pt", 1, 4)
    checkpointed = one_step_grads(tiny_clip_dir, items, tmp_path / "ckpt.pt", 1, 4, gradient_checkpointing=True)
    model = XCLIPRetrieval(tiny_clip_dir, max_words=WORDS, max_frames=FRAMES, gradient_checkpointing=True)
    assert model.model.encoders.clip.text_model.encoder.gradient_checkpointing  # really on
    assert checkpointed.keys() == plain.keys()
    assert max((checkpointed[n] - plain[n]).abs().max().item() for n in plain) < 1e-10


def test_sdpa_and_eager_attention_give_the_same_gradients(tiny_clip_dir, tmp_path):
    items = pairs(tiny_clip_dir, 4)
    sdpa = one_step_grads(tiny_clip_dir, items, tmp_path / "sdpa.pt", 1, 4, attention="sdpa")
    eager = one_step_grads(tiny_clip_dir, items, tmp_path / "eager.pt", 1, 4, attention="eager")
    implementations = {
        a: XCLIPRetrieval(tiny_clip_dir, max_words=WORDS, max_frames=FRAMES, attention=a).model.encoders.clip.config
        for a in ("sdpa", "eager")
    }
    assert {a: c._attn_implementation for a, c in implementations.items()} == {"sdpa": "sdpa", "eager": "eager"}
    # transformers' eager attention takes its softmax in float32 even in a float64 run: 1e-7, not 1e-15
    worst = max((sdpa[n] - eager[n]).abs().max().item() for n in eager)
    assert worst < 1e-5 and max(eager[n].abs().max().item() for n in eager) > 1e-3, worst


@pytest.mark.slow
def test_compiled_towers_give_the_same_outputs_and_gradients(tiny_clip_dir):
    batch = collate(pairs(tiny_clip_dir, 2))
    results = []
    for compiled in (False, True):
        torch.manual_seed(0)
        module = XCLIPRetrieval(tiny_clip_dir, max_words=WORDS, max_frames=FRAMES, compile=compiled)
        logits = module(batch)
        logits.sum().backward()
        grads = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
        results.append((logits.detach(), grads))
    (plain, plain_grads), (compiled_logits, compiled_grads) = results
    torch.testing.assert_close(compiled_logits, plain, rtol=1e-4, atol=1e-4)
    assert compiled_grads.keys() == plain_grads.keys() and len(plain_grads) > 50  # same parameter names
    for name, grad in plain_grads.items():
        torch.testing.assert_close(compiled_grads[name], grad, rtol=1e-3, atol=1e-4, msg=name)


@pytest.mark.slow
def test_gradient_caching_under_ddp_equals_one_process_on_the_global_batch(tiny_clip_dir, tmp_path):
    items = pairs(tiny_clip_dir, 4)
    ddp = one_step_grads(tiny_clip_dir, items, tmp_path / "ddp.pt", 2, 2, max_grad_norm=None, grad_cache_chunk=1)
    single = one_step_grads(tiny_clip_dir, items, tmp_path / "one.pt", 1, 4, max_grad_norm=None)
    assert ddp.keys() == single.keys()
    worst = max((ddp[n] - single[n]).abs().max().item() for n in single)
    assert worst < 1e-6, worst


def test_forward_needs_no_process_group(tiny_clip_dir):
    model = XCLIPRetrieval(tiny_clip_dir, max_words=WORDS, max_frames=FRAMES)
    batch = collate(pairs(tiny_clip_dir, 3))
    assert not torch.distributed.is_initialized()
    assert model(batch).shape == (3, 3)


def test_optimizer_groups_schedule_and_frozen_parameters(tiny_clip_dir):
    model = XCLIPRetrieval(tiny_clip_dir, max_words=WORDS, max_frames=FRAMES, lr=1e-4, clip_lr_scale=1e-3)
    trainer = L.Trainer(max_steps=100, logger=False, enable_checkpointing=False)
    model.trainer = trainer
    config = model.configure_optimizers()
    optimizer = config["optimizer"]
    names = {id(p): n for n, p in model.model.named_parameters()}
    for group in optimizer.param_groups:
        group_names = [names[id(p)] for p in group["params"]]
        is_clip = {n.startswith("encoders.clip.") for n in group_names}
        assert len(is_clip) == 1
        assert group["initial_lr"] == pytest.approx(1e-7 if is_clip.pop() else 1e-4)  # lr = this x schedule
        assert group["weight_decay"] == (0.0 if all("bias" in n for n in group_names) else 0.2)
    assert optimizer.defaults["betas"] == (0.9, 0.98) and optimizer.defaults["eps"] == 1e-6
    decayed = {names[id(p)] for g in optimizer.param_groups if g["weight_decay"] for p in g["params"]}
    assert "head.global_mat_weight" in decayed and "encoders.clip.logit_scale" in decayed  # official set
    assert "encoders.clip.text_model.final_layer_norm.weight" in decayed  # only biases are exempt (official)
    frozen = {n for n, p in model.model.named_parameters() if not p.requires_grad}
    assert frozen == {
        "encoders.clip.text_model.embeddings.token_embedding.weight",
        "encoders.clip.text_model.embeddings.position_embedding.weight",
        "encoders.clip.vision_model.embeddings.class_embedding",
        "encoders.clip.vision_model.embeddings.patch_embedding.weight",
        "encoders.clip.vision_model.embeddings.position_embedding.weight",
        "encoders.clip.vision_model.pre_layrnorm.weight",
        "encoders.clip.vision_model.pre_layrnorm.bias",
    }
    # official warmup_cosine: linear to p = 0.1, then 0.5 (1 + cos(pi p)) of the *total* progress
    assert [warmup_cosine(s, 100) for s in (0, 5, 9)] == pytest.approx([0.0, 0.5, 0.9])
    assert warmup_cosine(10, 100) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.1)))
    assert warmup_cosine(100, 100) == pytest.approx(0.0)


def test_logit_scale_is_clamped_after_each_step(tiny_clip_dir):
    model = XCLIPRetrieval(tiny_clip_dir, max_words=WORDS, max_frames=FRAMES)
    with torch.no_grad():
        model.model.encoders.clip.logit_scale.fill_(5.0)
    model.on_train_batch_end(None, None, 0)
    assert model.model.encoders.clip.logit_scale.item() == pytest.approx(MAX_LOGIT_SCALE)
