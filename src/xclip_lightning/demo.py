"""The demo: train and test X-CLIP on the embedded synthetic dataset, on the CPU, in about 80 s.

    xclip-lightning demo                                 # what `make demo` runs (works from a pip install too)
    xclip-lightning demo --trainer.max_epochs 2          # any LightningCLI override of the packaged synthetic.yaml
    xclip-lightning demo --videos 40 10 10 --data-only   # a smaller dataset; only write it and the tiny CLIP

Writes the synthetic dataset and a tiny random CLIP under ``.cache/synthetic`` of the current folder (both reused
on later runs), trains with the packaged ``configs/synthetic.yaml`` through the same LightningCLI as
``xclip-lightning fit``, tests the checkpoint with the best validation text->video R@1, and prints the retrieval
table and where the logs and checkpoints are.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from xclip_lightning.packaged import CONFIGS

if TYPE_CHECKING:
    from xclip_lightning.lightning_cli import XCLIPCLI

CONFIG = CONFIGS / "synthetic.yaml"
ROOT = Path(".cache/synthetic")  # synthetic.yaml reads the dataset and the CLIP from here (relative to the cwd)
VIDEOS = (600, 100, 100)  # train / val / test videos of the demo dataset
METRICS = ("R1", "R5", "R10", "MdR", "MnR")


def retrieval_table(metrics: dict[str, float], stage: str, num_videos: int) -> str:
    """A markdown table of t2v / v2t metrics logged as ``{stage}/{t2v,v2t}_{R1,...}``, with chance R@1."""
    lines = ["| direction | R@1 | R@5 | R@10 | MdR | MnR |", "|---|---|---|---|---|---|"]
    for direction, name in (("t2v", "text -> video"), ("v2t", "video -> text")):
        values = [float(metrics[f"{stage}/{direction}_{m}"]) for m in METRICS]
        lines.append(f"| {name} | " + " | ".join(f"{v:.1f}" for v in values) + " |")
    lines.append(
        f"| chance | {100 / num_videos:.1f} | {500 / num_videos:.1f} | {1000 / num_videos:.1f} | "
        f"{(num_videos + 1) / 2:.1f} | {(num_videos + 1) / 2:.1f} |"
    )
    return "\n".join(lines)


def best_checkpoint(trainer) -> str:
    """The path the monitoring checkpoint callback saved (the CLI also has a ``last.ckpt`` one without monitor)."""
    return next((c.best_model_path for c in trainer.checkpoint_callbacks if c.monitor), "")


def prepare(videos: Sequence[int] = VIDEOS) -> Path:
    """Write (or reuse) the dataset and the tiny CLIP under ``ROOT``; returns the annotations file."""
    from xclip_lightning.data.synthetic import make_synthetic_clip, make_synthetic_dataset

    train, val, test = videos
    annotations = make_synthetic_dataset(ROOT / "data", train=train, val=val, test=test)
    make_synthetic_clip(ROOT / "clip", annotations)
    return annotations


def train_and_test(overrides: Sequence[str] = (), videos: Sequence[int] = VIDEOS) -> tuple[dict[str, float], XCLIPCLI]:
    """Fit with the packaged ``synthetic.yaml`` (plus LightningCLI ``overrides``), then test the best checkpoint."""
    from xclip_lightning.lightning_cli import run_cli

    prepare(videos)
    cli = run_cli(["--config", str(CONFIG), *overrides], run=False)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    best = best_checkpoint(cli.trainer)
    cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=best or None, verbose=False)
    return {k: float(v) for k, v in cli.trainer.callback_metrics.items()}, cli


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    """``xclip-lightning demo [--videos TRAIN VAL TEST] [--data-only] [LightningCLI overrides ...]``."""
    parser = argparse.ArgumentParser(
        prog="xclip-lightning demo",
        description=__doc__.split("\n\n")[0]
        + " Other options go to LightningCLI, as for fit (--trainer.max_epochs 2).",
    )
    parser.add_argument(
        "--videos",
        type=int,
        nargs=3,
        default=VIDEOS,
        metavar=("TRAIN", "VAL", "TEST"),
        help=f"videos of each split of the synthetic dataset (default: {' '.join(map(str, VIDEOS))})",
    )
    parser.add_argument("--data-only", action="store_true", help="write the dataset and the tiny CLIP, then stop")
    options, overrides = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    start = time.perf_counter()
    if options.data_only:
        annotations = prepare(options.videos)
        print(f"synthetic dataset: {annotations}; tiny CLIP: {ROOT / 'clip'}")
        return {}
    metrics, cli = train_and_test(overrides, options.videos)
    num_videos = len(cli.datamodule.dataset_records("test"))
    t2v_r1 = metrics["test/t2v_R1"]
    print(f"\nX-CLIP on the synthetic test split ({num_videos} videos, 2 captions each), best val checkpoint:\n")
    print(retrieval_table(metrics, "test", num_videos))
    print(f"\ntext->video R@1 {t2v_r1:.1f}% = {t2v_r1 / (100 / num_videos):.1f}x chance ({100 / num_videos:.1f}%)")
    print(f"logs and resolved config: {cli.trainer.log_dir}")
    best = best_checkpoint(cli.trainer)
    print(f"best checkpoint: {best}")
    print(
        f"search with it: xclip-lightning export --ckpt-path {best} --out models/synthetic && xclip-lightning index "
        f"--model models/synthetic --videos {ROOT / 'data' / 'videos'} --out models/synthetic.xindex"
    )
    print(f"total time: {time.perf_counter() - start:.0f} s")
    return metrics


if __name__ == "__main__":
    main()
