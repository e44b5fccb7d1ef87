"""``xclip-lightning check-data`` on every benchmark's miniature (its released layout and quirks) and on broken
folders: counts against a plain reading of the files, missing and undecodable videos, the cache estimate against the
cache really built, the global batch, the exit code."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from conftest import CAPTIONS, REPO
from miniatures import BUILDERS, Miniature
from xclip_lightning.check_data import run
from xclip_lightning.data.frame_cache import FrameCache, SamplerSettings, VideoSource
from xclip_lightning.model.tiny import build_tiny_clip

SIZE = 32


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return build_tiny_clip(tmp_path_factory.mktemp("clip"), CAPTIONS * 4, seed=0)


def arguments(mini: Miniature, clip: Path, cache: Path, *extra: str) -> list[str]:
    return [
        "--config",
        str(REPO / "configs" / mini.name / "vitb32.yaml"),
        f"--data.annotations={mini.annotations}",
        f"--data.videos={mini.videos}",
        f"--data.cache_dir={cache}",
        f"--model.clip_name_or_path={clip}",
        f"--data.image_size={SIZE}",
        "--data.batch_size=1",
        "--trainer.devices=1",
        *extra,
    ]


def check(mini: Miniature, clip: Path, cache: Path, *extra: str, probe: str = "header") -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the readers' notes on the quirks are in the report itself
        return run(arguments(mini, clip, cache, *extra), probe=probe, workers=2, progress=False)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_every_miniature_passes_with_the_counts_its_files_give(name, clip, tmp_path):
    mini = BUILDERS[name](tmp_path / "data")
    report = check(mini, clip, tmp_path / "cache")
    assert report["ok"], report["problems"]
    for split, count in mini.expected.items():
        s = report["splits"][split]
        assert (s["videos"], s["missing"], s["undecodable"]) == (count, [], {}), split
        assert s["duration"]["min"] == pytest.approx(2.0, abs=0.3)  # the miniatures' videos are 2 s
    assert not (tmp_path / "cache").exists()  # a check builds nothing


def test_msrvtt_counts_against_a_plain_reading_of_the_files(clip, tmp_path):
    mini = BUILDERS["msrvtt"](tmp_path / "data")
    report = check(mini, clip, tmp_path / "cache")
    with open(mini.annotations / "MSRVTT_train.9k.csv") as f:
        train_ids = {row["video_id"] for row in csv.DictReader(f)}
    sentences = json.loads((mini.annotations / "MSRVTT_data.json").read_text())["sentences"]
    with open(mini.annotations / "MSRVTT_JSFUSION_test.csv") as f:
        test_rows = list(csv.DictReader(f))
    train = report["splits"]["train"]
    assert train["videos"] == len(train_ids)
    assert train["captions"] == sum(s["video_id"] in train_ids for s in sentences)
    assert train["official"] == {"videos": 9000, "captions": 180000}
    assert (report["splits"]["test"]["videos"], report["splits"]["test"]["captions"]) == (len(test_rows),) * 2
    # a miniature is not the released split: said, as a warning, and fit can still run
    assert any("do not compare with the published tables" in w for w in report["warnings"])


def test_broken_folder_names_the_missing_and_the_undecodable(clip, tmp_path):
    mini = BUILDERS["msrvtt"](tmp_path / "data")
    test_video, train_video = mini.split_videos["test"][1], mini.split_videos["train"][2]
    test_video.unlink()
    train_video.write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(4000))  # a damaged download
    report = check(mini, clip, tmp_path / "cache")
    assert not report["ok"]
    assert report["splits"]["test"]["missing"] == [test_video.stem]
    assert report["splits"]["val"]["missing"] == [test_video.stem]  # val = test (JSFUSION)
    assert list(report["splits"]["train"]["undecodable"]) == [train_video.stem]
    assert report["splits"]["train"]["videos"] == len(mini.split_videos["train"]) - 1
    problems = " ".join(report["problems"])
    assert test_video.stem in problems and train_video.stem in problems and "missing_videos skip" in problems
    # --probe none opens no video: the damaged one is not seen, the missing one is
    quick = check(mini, clip, tmp_path / "cache", probe="none")
    assert quick["splits"]["train"]["undecodable"] == {} and quick["splits"]["test"]["missing"] == [test_video.stem]
    # with both policies at skip, fit and test run without them: ok, with the losses said
    lenient = check(mini, clip, tmp_path / "cache", "--data.missing_videos=skip", "--data.bad_videos=skip")
    assert lenient["ok"] and any(test_video.stem in w for w in lenient["warnings"])


def test_malformed_annotations_name_the_file_and_line(clip, tmp_path):
    mini = BUILDERS["msrvtt"](tmp_path / "data")
    path = mini.annotations / "MSRVTT_JSFUSION_test.csv"
    lines = path.read_text().splitlines()
    lines[2] = lines[2] + ',"unbalanced'
    path.write_text("\n".join(lines) + "\n")
    report = check(mini, clip, tmp_path / "cache")
    assert not report["ok"] and report["splits"]["test"]["error"]
    assert any(f"{path}:3" in p for p in report["problems"])
    assert report["splits"]["train"]["error"] is None  # the other splits are still checked


def test_frames_probe_estimate_matches_the_cache_fit_builds(clip, tmp_path):
    mini = BUILDERS["msvd"](tmp_path / "data")
    cache = tmp_path / "cache"
    report = check(mini, clip, cache, probe="frames")
    estimate = report["frame_cache"]
    videos = sorted({p for paths in mini.split_videos.values() for p in paths})
    assert (estimate["videos"], estimate["cached"], estimate["to_build"]) == (len(videos), 0, len(videos))
    assert estimate["estimated_seconds"] > 0
    # build it as prepare_data does (the config's 12 frames at 1 fps), then measure it
    store = FrameCache(cache, SamplerSettings(1.0, 12, "timestamp", SIZE))
    assert store.build([VideoSource(p) for p in videos], workers=1, progress=False) == {}
    frames = sum(f.stat().st_size for f in store.folder.glob("*.npy"))
    written = frames + sum(f.stat().st_size for f in store.folder.glob("*.json"))
    assert frames <= estimate["estimated_bytes"] <= written + 1024 * len(videos)
    assert str(store.folder) == estimate["folder"]
    again = check(mini, clip, cache, probe="header")["frame_cache"]
    assert (again["cached"], again["to_build"], again["estimated_bytes"]) == (len(videos), 0, 0)


def test_global_batch_and_steps(clip, tmp_path):
    mini = BUILDERS["msvd"](tmp_path / "data")
    settings = ["--data.batch_size=3", "--trainer.devices=2", "--trainer.num_nodes=2"]
    report = check(mini, clip, tmp_path / "cache", *settings, probe="none")
    batch, captions = report["batch"], report["splits"]["train"]["captions"]
    assert (batch["global"], batch["devices"], batch["nodes"]) == (12, 2, 2)
    assert batch["steps_per_epoch"] == captions // 12
    too_big = check(mini, clip, tmp_path / "cache", f"--data.batch_size={captions + 1}", probe="none")
    assert not too_big["ok"] and "no full batch" in " ".join(too_big["problems"])


def test_a_clip_that_cannot_be_loaded_is_a_problem(clip, tmp_path):
    mini = BUILDERS["msvd"](tmp_path / "data")
    report = check(mini, tmp_path / "no-such-clip", tmp_path / "cache", probe="none")
    assert not report["ok"] and "cannot be loaded" in report["problems"][0]


def test_wrong_folders_are_named(clip, tmp_path):
    mini = BUILDERS["msrvtt"](tmp_path / "data")
    report = check(mini, clip, tmp_path / "cache", f"--data.videos={tmp_path / 'nowhere'}", probe="none")
    assert not report["ok"] and f"--data.videos {tmp_path / 'nowhere'}: no such folder" in report["problems"][0]
    assert report["splits"]["test"]["missing"] == ["video9770", "video7020", "video9731"]
    report = check(mini, clip, tmp_path / "cache", f"--data.annotations={tmp_path / 'nowhere'}", probe="none")
    assert all(report["splits"][s]["error"] and "not found" in report["splits"][s]["error"] for s in report["splits"])


def command(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    cli = Path(sys.executable).with_name("xclip-lightning")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([str(cli), "check-data", *args], capture_output=True, text=True, cwd=cwd, env=env)


def test_the_command_exit_codes_json_and_report(clip, tmp_path):
    mini = BUILDERS["didemo"](tmp_path / "data")
    args = arguments(mini, clip, tmp_path / "cache")
    done = command(*args, "--json", "--workers", "2", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] and report["splits"]["test"]["videos"] == mini.expected["test"]
    mini.split_videos["val"][0].unlink()
    done = command(*args, cwd=tmp_path)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "NOT OK" in done.stdout and Path(mini.split_videos["val"][0]).name.split(".mp4")[0][:20] in done.stdout
    wrong = command(*args, "--data.batch_size=abc", cwd=tmp_path)
    assert wrong.returncode == 2 and len(wrong.stderr.strip().splitlines()) == 1 and "check-data" in wrong.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # nothing written where it ran
