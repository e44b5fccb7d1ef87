"""Peak memory of `xclip-lightning index` (the main process) against the size of the collection.

    .venv/bin/python bench/index_memory.py                      # 200 and 1,600 videos
    .venv/bin/python bench/index_memory.py --videos 100 400 --src /path/to/other/checkout/src   # another version

Features are ViT-B sized (D = 512, 12 frames) from a model whose vision tower is tiny (so encoding is fast on a
CPU); the videos are copies of synthetic clips under distinct names, decoded for real. The main process's
resident memory is sampled from /proc every 50 ms; DataLoader workers are not counted (their memory does not grow
with the collection). Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from xclip_lightning.data.synthetic import make_synthetic_dataset, synthetic_captions
from xclip_lightning.model.tiny import build_tiny_clip
from xclip_lightning.model.xclip import XCLIP

INDEX = "from xclip_lightning.cli import main; import sys; main(sys.argv[1:])"


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def peak_rss(args: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(peak resident MB of the process, seconds)."""
    start = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-c", INDEX, *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    peak = 0.0
    while process.poll() is None:
        try:
            peak = max(peak, rss_mb(process.pid))
        except OSError:
            break
        time.sleep(0.05)
    if process.returncode:
        raise SystemExit(f"index failed ({process.returncode})")
    return peak, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, nargs="+", default=[200, 1600])
    parser.add_argument("--src", help="run the package from this source folder instead (e.g. an older checkout)")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    env = dict(os.environ)
    if args.src:
        env["PYTHONPATH"] = str(Path(args.src).resolve())
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        annotations = make_synthetic_dataset(root / "data", train=20, val=0, test=0, seed=3)
        clip = build_tiny_clip(root / "clip", synthetic_captions(annotations), embed_dim=512, text_layers=4)
        torch.manual_seed(0)
        XCLIP.from_clip(str(clip), max_words=32, max_frames=12).save_pretrained(root / "model")
        clips = sorted((root / "data" / "videos").glob("*.mp4"))
        for count in args.videos:
            folder = root / f"videos{count}"
            for i in range(count):
                target = folder / f"{i // 500:03d}" / f"video{i:06d}.mp4"
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(clips[i % len(clips)], target)
            out = root / f"index{count}"
            cmd = ["index", "--model", str(root / "model"), "--videos", str(folder), "--out", str(out)]
            peak, seconds = peak_rss([*cmd, "--workers", str(args.workers)], env)
            rows.append({"videos": count, "peak_rss_mb": round(peak), "seconds": round(seconds, 1)})
    print("| videos | peak RSS of the index process (MB) | time (s) |")
    print("|---|---|---|")
    for row in rows:
        print(f"| {row['videos']:,} | {row['peak_rss_mb']} | {row['seconds']} |")
    print(json.dumps({"bench": "index_memory", "src": args.src or "installed", "rows": rows}))


if __name__ == "__main__":
    main()
