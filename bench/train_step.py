"""Peak memory and time of one training step, against the batch size, plain vs gradient caching.

    .venv/bin/python bench/train_step.py                      # every mode at batch 8, ViT-B/32-sized, random weights
    .venv/bin/python bench/train_step.py --batches 4 8 16 --modes fp32 "gradient caching, chunk 2"
    .venv/bin/python bench/train_step.py --device cuda        # the same on a GPU

Each configuration runs in a fresh process (peak resident memory on a CPU, peak allocated memory on a GPU): two
optimiser steps of ``XCLIPRetrieval`` through a Trainer on random frames and captions, the second one timed.
Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

STEP = r"""
import json, resource, sys, time
import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader
from xclip_lightning.data.dataset import collate
from xclip_lightning.lightning_module import XCLIPRetrieval

folder, batch, frames, device = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
options, precision = json.loads(sys.argv[5]), sys.argv[6]
torch.manual_seed(0)
module = XCLIPRetrieval(folder, max_words=32, max_frames=frames, **options)
size, vocab = module.model.encoders.image_size, module.model.encoders.clip.config.text_config.vocab_size
items = [
    {"input_ids": torch.randint(3, vocab, (32,)), "word_mask": torch.ones(32, dtype=torch.bool),
     "frames": torch.randint(0, 256, (frames, 3, size, size), dtype=torch.uint8),
     "frame_mask": torch.ones(frames, dtype=torch.bool), "video_index": torch.tensor(i)}
    for i in range(2 * batch)
]


class Clock(Callback):
    def on_train_batch_start(self, trainer, pl_module, b, batch_idx):
        if device == "cuda":
            torch.cuda.synchronize()
            if batch_idx == 1:
                torch.cuda.reset_peak_memory_stats()
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, b, batch_idx):
        if device == "cuda":
            torch.cuda.synchronize()  # the kernels queued by this step, not only their launch
        self.seconds = time.perf_counter() - self.start  # the second step: after the warm-up


clock = Clock()
trainer = L.Trainer(accelerator=device, devices=1, max_steps=2, logger=False, enable_checkpointing=False,
                    precision=precision,
                    enable_progress_bar=False, enable_model_summary=False, callbacks=[clock])
trainer.fit(module, DataLoader(items, batch_size=batch, collate_fn=collate))
if device == "cuda":
    peak = torch.cuda.max_memory_allocated() / 2**20
else:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
speed = round(batch / clock.seconds, 2)
print(json.dumps({"peak_mb": round(peak), "seconds": round(clock.seconds, 2), "samples_per_s": speed}))
"""  # fmt: skip


def vitb32_clip(folder: Path) -> Path:
    """A CLIP with ViT-B/32's sizes (random weights) and a tiny tokenizer, saved for from_pretrained."""
    from transformers import CLIPConfig, CLIPModel

    from xclip_lightning.model.tiny import train_tokenizer

    tokenizer = train_tokenizer(["a man is playing a guitar", "a dog runs on the grass"] * 20, vocab_size=512)
    config = CLIPConfig(
        text_config={"vocab_size": len(tokenizer), "hidden_size": 512, "intermediate_size": 2048,
                     "num_hidden_layers": 12, "num_attention_heads": 8, "max_position_embeddings": 77,
                     "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id},
        vision_config={"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                       "num_attention_heads": 12, "image_size": 224, "patch_size": 32},
        projection_dim=512,
    )  # fmt: skip
    CLIPModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


MODES = {  # name: (XCLIPRetrieval options, Trainer precision)
    "fp32": ({}, "32-true"),
    "bf16-mixed": ({}, "bf16-mixed"),
    "official fp16 weights": ({"clip_fp16_weights": True}, "32-true"),
    "activation checkpointing": ({"gradient_checkpointing": True}, "32-true"),
    "gradient caching, chunk 2": ({"grad_cache_chunk": 2}, "32-true"),
    "gradient caching, chunk 4": ({"grad_cache_chunk": 4}, "32-true"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, nargs="+", default=[8])
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES), metavar="MODE")
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = vitb32_clip(Path(tmp) / "clip")
        for batch in args.batches:
            for mode in args.modes:
                options, precision = MODES[mode]
                cmd = [sys.executable, "-c", STEP, str(folder), str(batch), str(args.frames), args.device]
                cmd += [json.dumps(options), precision]
                out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
                rows.append({"batch": batch, "mode": mode, **json.loads(out)})
    print(f"ViT-B/32-sized CLIP (random weights), {args.frames} frames x 224 px, {args.device}, one step")
    print("| batch | mode | peak memory (MB) | seconds | samples/s |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['batch']} | {r['mode']} | {r['peak_mb']:,} | {r['seconds']} | {r['samples_per_s']} |")
    print(json.dumps({"bench": "train_step", "device": args.device, "frames": args.frames, "rows": rows}))


if __name__ == "__main__":
    main()
