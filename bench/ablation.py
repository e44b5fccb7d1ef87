"""Paper Tab. 7 (aggregation) and Tab. 8 (temporal encoder) on the synthetic dataset, same seed and settings.

    python bench/ablation.py                       # AOSM, Mean-Mean, Max-Max, no temporal encoder (~6 min on 2 cores)
    python bench/ablation.py --trainer.max_epochs 4  # any override of configs/synthetic.yaml, applied to every row

Each row trains ``configs/synthetic.yaml`` from the same tiny random CLIP with one head option changed, selects
the checkpoint with the best val text->video R@1 and reports the test split (100 videos, chance R@1 = 1%). One
seed per row: differences of a few points are within seed noise on 100 test videos. Prints a table and one JSON
line.
"""

from __future__ import annotations

import json
import sys

from xclip_lightning.demo import train_and_test

VARIANTS = {
    "AOSM (official)": [],
    "Mean-Mean": ["--model.aggregation=mean_mean"],
    "Max-Max": ["--model.aggregation=max_max"],
    "AOSM, no temporal encoder": ["--model.temporal_layers=0"],
}


def main(argv: list[str]) -> dict:
    rows = {}
    for name, overrides in VARIANTS.items():
        metrics, _ = train_and_test([*overrides, *argv, "--trainer.enable_progress_bar=false"])
        rows[name] = {k.removeprefix("test/"): round(v, 2) for k, v in metrics.items() if k.startswith("test/")}
    print(f"\n{'variant':28s} {'t2v R@1':>8s} {'t2v R@5':>8s} {'t2v MnR':>8s} {'v2t R@1':>8s} {'v2t R@5':>8s}")
    for name, m in rows.items():
        t2v = f"{m['t2v_R1']:8.1f} {m['t2v_R5']:8.1f} {m['t2v_MnR']:8.2f}"
        print(f"{name:28s} {t2v} {m['v2t_R1']:8.1f} {m['v2t_R5']:8.1f}")
    print(json.dumps({"bench": "ablation", "rows": rows}))
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
