"""The first thing to run on a GPU (under 8 minutes on one): one table and one JSON line.

    .venv/bin/python bench/gpu_check.py                       # on a CUDA machine
    .venv/bin/python bench/gpu_check.py --device cpu --tiny   # the same machinery on a tiny CLIP (what the tests run)

1. the training step of every mode at ViT-B/32 size (random weights, 12 frames x 224 px, batch 32): fp32,
   bf16-mixed, 16-mixed, the official fp16 weights, gradient caching, torch.compile; samples/s and peak GPU memory,
   each in a fresh process (``bench/train_step.py``'s step: two optimiser steps, the second timed);
2. ``index`` throughput (videos/s) with the model on the GPU against the CPU, on the same generated videos;
3. video features under fp16 autocast against fp32 (the largest difference of the normalised features);
4. full-matrix evaluation of 1,000 texts x 1,000 videos (the head's score matrix, then the metrics).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from train_step import STEP, vitb32_clip  # a sibling script

TRAIN_MODES = {  # name: (XCLIPRetrieval options, Trainer precision)
    "fp32": ({}, "32-true"),
    "bf16-mixed": ({}, "bf16-mixed"),
    "16-mixed": ({}, "16-mixed"),
    "official fp16 weights": ({"clip_fp16_weights": True}, "32-true"),
    "gradient caching, chunk 8": ({"grad_cache_chunk": 8}, "32-true"),
    "compile, bf16-mixed": ({"compile": True}, "bf16-mixed"),
}
CPU_MODES = ("fp32", "gradient caching, chunk 8")  # what --device cpu runs (no half precision kernels to time)


def tiny_clip(folder: Path) -> Path:
    from xclip_lightning.model.tiny import build_tiny_clip

    return build_tiny_clip(folder, ["a man is playing a guitar", "a dog runs on the grass"] * 20, seed=0)


def train_steps(folder: Path, device: str, batch: int, frames: int, modes: list[str]) -> list[dict]:
    rows = []
    for mode in modes:
        options, precision = TRAIN_MODES[mode]
        cmd = [sys.executable, "-c", STEP, str(folder), str(batch), str(frames), device, json.dumps(options), precision]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            rows.append({"mode": mode, "error": (done.stderr.strip().splitlines() or ["failed"])[-1][:200]})
        else:
            rows.append({"mode": mode, **json.loads(done.stdout.strip().splitlines()[-1])})
    return rows


def index_throughput(model_folder: Path, root: Path, device: str, videos: int, seconds: int, size: int) -> dict:
    """videos/s of ``index`` with the model on ``device`` and on the CPU (a fresh index each)."""
    import numpy as np

    from xclip_lightning.data.synthetic import write_video
    from xclip_lightning.index.build import build_index

    folder = root / "videos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(videos):
        frames = np.repeat(rng.integers(0, 256, (seconds, size, size, 3), dtype=np.uint8), 4, axis=0)
        write_video(folder / f"clip{i:03d}.mp4", frames, 4)
    out = {}
    for where in dict.fromkeys([device, "cpu"]):
        start = time.perf_counter()
        _, report = build_index(str(model_folder), folder, root / f"index-{where}", device=where, progress=False)
        elapsed = time.perf_counter() - start
        out[where] = {"videos_per_s": round(report.encoded / elapsed, 2), "seconds": round(elapsed, 1)}
    return out


def half_features(model_folder: Path, device: str, frames: int, size: int) -> dict:
    """The largest difference between fp16-autocast and fp32 video features (normalised), on random frames."""
    import torch

    from xclip_lightning.model.xclip import XCLIP

    torch.manual_seed(0)
    model = XCLIP.from_pretrained(model_folder).to(device).eval()
    pixels = torch.randint(0, 256, (8, frames, 3, size, size), dtype=torch.uint8, device=device)
    mask = torch.ones(8, frames, dtype=torch.bool, device=device)
    with torch.no_grad():
        full = model.encode_video(pixels, mask)
        dtype = torch.float16 if device == "cuda" else torch.bfloat16
        with torch.autocast(device_type=device, dtype=dtype):
            half = model.encode_video(pixels, mask)
    video, frame = (full.video - half.video.float()).abs().max(), (full.frames - half.frames.float()).abs().max()
    cosine = torch.nn.functional.cosine_similarity(full.video, half.video.float(), dim=-1).min()
    return {"autocast": str(dtype).removeprefix("torch."), "max_abs_video": float(video),
            "max_abs_frames": float(frame), "min_cosine_video": float(cosine)}  # fmt: skip


def full_matrix(device: str, n: int, words: int, frames: int, dim: int) -> dict:
    """Seconds to score n texts x n videos through the head and to compute the metrics."""
    import torch

    from xclip_lightning.metrics import retrieval_metrics
    from xclip_lightning.model.head import TextFeatures, VideoFeatures, XCLIPHead

    torch.manual_seed(0)
    head = XCLIPHead(dim, words, frames).to(device).eval()
    unit = lambda *shape: torch.nn.functional.normalize(torch.randn(*shape, device=device), dim=-1)  # noqa: E731
    text = TextFeatures(unit(n, dim), unit(n, words, dim), torch.ones(n, words, dtype=torch.bool, device=device))
    video = VideoFeatures(unit(n, dim), unit(n, frames, dim), torch.ones(n, frames, dtype=torch.bool, device=device))
    scale = torch.tensor(100.0, device=device)
    timings = []
    with torch.no_grad():
        for _ in range(2):  # the first pass warms the kernels up
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            sim = head.score_matrix(text, video, scale)
            if device == "cuda":
                torch.cuda.synchronize()
            timings.append(time.perf_counter() - start)
    start = time.perf_counter()
    retrieval_metrics(sim)
    return {"texts": n, "videos": n, "score_seconds": round(timings[-1], 3),
            "metrics_seconds": round(time.perf_counter() - start, 3)}  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--tiny", action="store_true", help="a tiny CLIP and small sizes: checks the script, not a GPU")
    args = parser.parse_args(argv)
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            parser.exit(2, "bench/gpu_check.py: no CUDA device here (run it on a GPU, or --device cpu --tiny)\n")
    tiny = args.tiny
    batch, frames, size = (4, 2, 32) if tiny else (32, 12, 224)
    modes = list(CPU_MODES if args.device == "cpu" else TRAIN_MODES)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        clip = tiny_clip(root / "clip") if tiny else vitb32_clip(root / "clip")
        train = train_steps(clip, args.device, batch, frames, modes)
        from xclip_lightning.model.xclip import XCLIP

        XCLIP.from_clip(str(clip), max_words=32, max_frames=frames).save_pretrained(root / "model")
        index = index_throughput(root / "model", root, args.device, 4 if tiny else 32, 3 if tiny else 20, size)
        half = half_features(root / "model", args.device, frames, size)
    matrix = full_matrix(args.device, 50 if tiny else 1000, 32, frames if tiny else 12, 64 if tiny else 512)
    seconds = round(time.perf_counter() - started, 1)
    report = {"bench": "gpu_check", "device": args.device, "tiny": tiny, "train_step": train, "index": index,
              "half_features": half, "full_matrix": matrix, "seconds": seconds}  # fmt: skip
    size_note = "tiny CLIP" if tiny else "ViT-B/32-sized CLIP (random weights)"
    print(f"{size_note}, {frames} frames x {size} px, batch {batch}, {args.device}")
    print("| check | value |\n|---|---|")
    for row in train:
        value = row.get("error") or f"{row['samples_per_s']} samples/s, peak {row['peak_mb']:,} MB"
        print(f"| train step: {row['mode']} | {value} |")
    for where, numbers in index.items():
        print(f"| index, model on {where} | {numbers['videos_per_s']} videos/s ({numbers['seconds']} s) |")
    print(f"| {half['autocast']} autocast vs fp32 video features | max |diff| {half['max_abs_video']:.2e}, "
          f"min cosine {half['min_cosine_video']:.6f} |")  # fmt: skip
    print(f"| full matrix {matrix['texts']} x {matrix['videos']} | score {matrix['score_seconds']} s, metrics "
          f"{matrix['metrics_seconds']} s |")  # fmt: skip
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
