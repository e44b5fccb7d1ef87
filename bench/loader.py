"""Videos per second through ``VideoTextDataModule``: from the frame cache vs decoding on the fly, same workers.

    python bench/loader.py                 # 48 generated 360p H.264 videos (10 and 30 s, GOP 12 and 250), 224 px
    python bench/loader.py --workers 1

Both rows iterate the same training DataLoader (one caption per video, so one item per video: 12 frames, resized
and center-cropped to 224, padded, collated; persistent workers) with the same number of workers, one warm-up
epoch and then the median of timed epochs; the cache row reads the memory-mapped frames that ``prepare_data``
wrote, the other samples and resizes every video again. The one-off cost of building the cache is reported too.
Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from fractions import Fraction
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from decode import RESOLUTIONS, generate
from xclip_lightning.data.datamodule import VideoTextDataModule
from xclip_lightning.model.tiny import build_tiny_clip

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / ".cache" / "bench" / "loader"


def dataset(count: int) -> Path:
    """A generic-format split of ``count`` 360p videos (4 kinds, cycled; each a distinct file)."""
    videos = WORK / "videos"
    kinds = [(10, 12), (10, 250), (30, 12), (30, 250)]
    lines = []
    for i in range(count):
        seconds, gop = kinds[i % len(kinds)]
        name = f"{i:03d}-{seconds}s-gop{gop}.mp4"
        generate(videos / name, RESOLUTIONS["360p"], seconds, gop + i // len(kinds), Fraction(30))
        lines.append(json.dumps({"video": f"videos/{name}", "caption": f"video number {i}", "split": "train"}))
    annotations = WORK / "annotations.jsonl"
    annotations.write_text("\n".join(lines) + "\n")
    return annotations


def epoch_seconds(loader) -> float:
    start = time.perf_counter()
    seen = sum(len(batch["video_index"]) for batch in loader)
    assert seen == len(loader.dataset)
    return time.perf_counter() - start


def main(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=48)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3, help="timed passes per row (median)")
    args = parser.parse_args(argv)
    annotations = dataset(args.videos)
    clip = build_tiny_clip(WORK / "clip", ["video number"] * 4, image_size=224, patch_size=32)
    cache_dir = WORK / "cache"
    shutil.rmtree(cache_dir, ignore_errors=True)

    def module(cache: Path | None) -> VideoTextDataModule:
        dm = VideoTextDataModule(
            benchmark="generic",
            annotations=str(annotations),
            videos=str(WORK),
            clip_name_or_path=str(clip),
            batch_size=8,
            val_split="train",  # setup("fit") reads a val split too; this bench only iterates training
            num_workers=args.workers,
            max_frames=12,
            cache_dir=None if cache is None else str(cache),
        )
        return dm

    cached = module(cache_dir)
    start = time.perf_counter()
    cached.prepare_data()
    build_s = time.perf_counter() - start
    cached.setup("fit")
    live = module(None)
    live.setup("fit")
    times = {}
    for name, dm in (("cache", cached), ("live", live)):
        loader = dm.train_dataloader()
        epoch_seconds(loader)  # warm-up: starts the persistent workers
        times[name] = statistics.median(epoch_seconds(loader) for _ in range(args.epochs))
    t_cache, t_live = times["cache"], times["live"]
    n = args.videos
    print(f"{n} videos (360p H.264, 10/30 s), 12 frames at 224 px, {args.workers} DataLoader workers, 2-core CPU")
    print(f"{'source':28s} {'s/epoch':>8s} {'videos/s':>9s} {'/ on the fly':>13s}")
    print(f"{'on the fly (decode+resize)':28s} {t_live:8.2f} {n / t_live:9.1f} {1:12.1f}x")
    print(f"{'frame cache (memory-mapped)':28s} {t_cache:8.2f} {n / t_cache:9.1f} {t_live / t_cache:12.1f}x")
    print(f"building the cache once: {build_s:.2f} s ({n / build_s:.1f} videos/s, {args.workers} processes)")
    result = {
        "bench": "loader",
        "videos": n,
        "workers": args.workers,
        "on_the_fly_videos_per_s": round(n / t_live, 2),
        "cache_videos_per_s": round(n / t_cache, 2),
        "cache_speedup": round(t_live / t_cache, 2),
        "cache_build_s": round(build_s, 2),
        "targets_met": {"cache>=20x": t_live / t_cache >= 20},
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
