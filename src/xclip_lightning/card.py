"""The model card (``README.md`` in the Hub's layout) that ``export`` and ``convert --official`` write beside the
weights, so that ``huggingface-cli upload USER/NAME DIR`` publishes a folder that says what it is: the base CLIP,
the data, the settings of the head, the run's metrics when there are any, where it came from, and its licence."""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

CARD = "README.md"
HEAD_SETTINGS = ("max_words", "max_frames", "temporal_layers", "aggregation", "contrasts", "temperature")


def model_card(
    title: str,
    source: str,
    base_clip: str | None,
    head: Mapping[str, Any],
    data: Mapping[str, Any] | None = None,
    metrics: Mapping[str, float] | None = None,
    license: str = "mit",
) -> str:
    """The card's text: YAML front matter the Hub reads (licence, library, tags, base model, dataset), then what a
    reader needs to trust and load the model."""
    benchmark = (data or {}).get("benchmark")
    front = [
        "---",
        f"license: {license}",
        "library_name: xclip-lightning",
        "tags:",  # the Hub has no pipeline tag for text-video retrieval
        "- video-text-retrieval",
        "- x-clip",
        "- clip",
    ]
    if base_clip and not Path(base_clip).is_absolute() and base_clip.count("/") == 1:
        front.append(f"base_model: {base_clip}")  # a hub name; a local folder is named in the text only
    if benchmark and benchmark != "generic":
        front.append(f"datasets:\n- {benchmark}")
    front.append("---")
    lines = [
        *front,
        "",
        f"# {title}",
        "",
        "X-CLIP text-video retrieval (Ma et al., ACM MM 2022, *End-to-End Multi-grained Contrastive Learning for "
        "Video-Text Retrieval*), as xclip-lightning implements it: CLIP encoders, a temporal encoder and the "
        "multi-grained AOSM score. Not Microsoft's X-CLIP for video recognition.",
        "",
        f"- Source: {source}",
        f"- Base CLIP: {base_clip or 'unknown'}",
    ]
    if data:
        lines.append(
            f"- Data: {data.get('benchmark', 'unknown')} (annotations `{data.get('annotations')}`, train split "
            f"`{data.get('train_split', 'train')}`, {data.get('fps', 1.0):g} frame(s) per second)"
        )
    settings = ", ".join(f"{k} {json.dumps(head[k])}" for k in HEAD_SETTINGS if k in head)
    lines += [f"- Head: {settings}", ""]
    if metrics:
        lines += ["## Metrics of the run", "", "| metric | value |", "|---|---|"]
        lines += [f"| {name} | {value:.2f} |" for name, value in sorted(metrics.items())]
        lines.append("")
    else:
        lines += ["No metrics were recorded with this model.", ""]
    lines += [
        "## Use",
        "",
        "```python",
        "from xclip_lightning import XCLIP",
        'model = XCLIP.from_pretrained("THIS_FOLDER").eval()',
        "```",
        "",
        "or `xclip-lightning index --model THIS_FOLDER --videos VIDEOS --out INDEX` to search your videos.",
        "",
        f"Licence: {license} for the weights as released here; the base CLIP's and the training data's own terms "
        "apply too (MSR-VTT, MSVD, LSMDC, DiDeMo and ActivityNet are released for research).",
        "",
    ]
    return "\n".join(lines)


def run_metrics(checkpoint_path: str | Path, checkpoint: Mapping[str, Any]) -> dict[str, float]:
    """What a checkpoint's run measured: the monitored score of its best-checkpoint callback (``val/t2v_R1``), and
    the test metrics the run logged beside it (``runs/NAME/version_N/metrics.csv``), when there are any."""
    found: dict[str, float] = {}
    for state in checkpoint.get("callbacks", {}).values():
        score, monitor = state.get("best_model_score"), state.get("monitor")
        if monitor and score is not None:
            found[f"best {monitor}"] = float(score)
    log = Path(checkpoint_path).resolve().parent.parent / "metrics.csv"
    if log.is_file():
        with open(log, newline="") as f:
            for row in csv.DictReader(f):
                found.update({k: float(v) for k, v in row.items() if k and k.startswith("test/") and v})
    return found


def write_card(folder: str | Path, text: str) -> Path:
    path = Path(folder) / CARD
    path.write_text(text, encoding="utf-8")
    return path
