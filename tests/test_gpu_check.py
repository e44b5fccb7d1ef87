"""bench/gpu_check.py, the script for the first GPU, runs end to end here on a tiny CLIP on the CPU (its machinery,
not a GPU's numbers): every check reports, and the numbers it can get right on any device are right."""

from __future__ import annotations

import importlib.util
import json

import pytest

from conftest import REPO


@pytest.mark.slow
def test_gpu_check_runs_on_the_cpu_with_a_tiny_clip(capsys):
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "bench" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    report = gpu_check.main(["--device", "cpu", "--tiny"])
    printed = capsys.readouterr().out.strip().splitlines()
    assert json.loads(printed[-1]) == report  # the table, then one JSON line
    assert [row["mode"] for row in report["train_step"]] == list(gpu_check.CPU_MODES)
    assert all("error" not in row and row["samples_per_s"] > 0 for row in report["train_step"]), report["train_step"]
    assert report["index"]["cpu"]["videos_per_s"] > 0
    half = report["half_features"]
    assert half["autocast"] == "bfloat16" and 0 < half["max_abs_video"] < 0.1 and half["min_cosine_video"] > 0.99
    assert report["full_matrix"]["texts"] == report["full_matrix"]["videos"] == 50
    assert any(line.startswith("| train step: fp32 |") for line in printed)
    assert set(gpu_check.TRAIN_MODES) >= {"fp32", "bf16-mixed", "16-mixed", "official fp16 weights"}
