"""The video index under faults: killed updates, two writers at once, a manifest edited by hand, hostile names."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from xclip_lightning.cli import main
from xclip_lightning.data.synthetic import make_synthetic_clip, make_synthetic_dataset
from xclip_lightning.index.store import IndexBusyError
from xclip_lightning.index.video_index import VideoIndex, VideoIndexError
from xclip_lightning.model.xclip import XCLIP

VIDEOS = 12
WINDOW = 2.0  # seconds: each 4-6 s video is 2-3 moments, so a kill can land between the moments of one video

SLOW_INDEX = """
import sys, time
from xclip_lightning.index import encode as search
from xclip_lightning.index.video_index import VideoIndex

real = search.sample_frames
def slow(*args, **kwargs):  # 0.15 s a video: a kill lands anywhere in the update
    time.sleep(0.15)
    return real(*args, **kwargs)
search.sample_frames = slow
print("started", flush=True)
index = VideoIndex.build(
    sys.argv[1], sys.argv[2], sys.argv[3], workers=0, progress=False, flush_every=2, window=float(sys.argv[4])
)
print("done", index.encoded, flush=True)
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, Path, dict[str, dict[str, torch.Tensor]]]:
    """A saved model, a folder of videos, and each video's features from a clean index (the reference)."""
    root = tmp_path_factory.mktemp("index_faults")
    annotations = make_synthetic_dataset(root / "data", train=VIDEOS, val=0, test=0, seed=21)
    clip = make_synthetic_clip(root / "clip", annotations)
    torch.manual_seed(0)
    XCLIP.from_clip(str(clip), max_words=32, max_frames=4).save_pretrained(root / "model")
    videos = root / "videos"
    shutil.copytree(annotations.parent / "videos", videos)
    clean = VideoIndex.build(root / "model", videos, root / "clean", workers=0, progress=False, window=WINDOW)
    reference = {  # by file name and moment: the tests index copies of these videos
        (Path(e.path).name, e.window): {k: getattr(clean.features, k)[i] for k in ("video", "frames")}
        for i, e in enumerate(clean.entries)
    }
    assert len(reference) > VIDEOS  # long videos: several moments
    return root / "model", videos, reference


def assert_complete_and_right(folder: Path, reference: dict, expected: set[str] | None = None) -> VideoIndex:
    """The index loads, every video has all its moments, and every entry holds its own moment's features."""
    index = VideoIndex.load(folder)
    assert len({(e.path, e.window) for e in index.entries}) == len(index.entries)
    by_video: dict[str, list[int]] = {}
    for e in index.entries:
        by_video.setdefault(e.path, []).append(e.window)
    for path, windows in by_video.items():
        assert sorted(windows) == list(range(len(windows))) and len(windows) == reference_moments(reference, path)
    for i, entry in enumerate(index.entries):
        own = reference[(Path(entry.path).name, entry.window)]
        assert torch.allclose(index.features.video[i], own["video"], atol=1e-6), entry.path
        assert torch.allclose(index.features.frames[i], own["frames"], atol=1e-6), entry.path
    if expected is not None:
        assert {e.path for e in index.entries} == expected
    hits = index.search(["a red circle moves left"], k=3)[0]
    assert len(hits) == min(3, len(index.entries))
    return index


def reference_moments(reference: dict, path: str) -> int:
    return sum(name == Path(path).name for name, _ in reference)


def run_index(model: Path, videos: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", SLOW_INDEX, str(model), str(videos), str(out), str(WINDOW)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow
def test_killed_updates_always_leave_a_complete_version(setup, tmp_path):
    model, source, reference = setup
    videos = tmp_path / "videos"
    shutil.copytree(source, videos)
    out = tmp_path / "index"
    rng = random.Random(0)
    everything = {str(p.resolve()) for p in videos.glob("*.mp4")}
    for _ in range(4):
        process = run_index(model, videos, out)
        assert process.stdout.readline().strip() == "started"
        time.sleep(rng.uniform(0.2, 1.6))
        process.send_signal(signal.SIGKILL)
        process.wait()
        if (out / "manifest.json").is_file():
            kept = assert_complete_and_right(out, reference)
            assert {e.path for e in kept.entries} <= everything
    finished = run_index(model, videos, out)
    assert finished.wait(timeout=120) == 0, finished.stderr.read()
    assert "done" in finished.stdout.read()
    assert_complete_and_right(out, reference, expected=everything)
    assert len(list((out / "thumbs").iterdir())) == len(reference)  # the garbage of killed runs is gone
    assert not list((out / "shards").glob(".*.tmp"))


def test_a_second_writer_stops_with_a_message_and_nothing_is_lost(setup, tmp_path):
    model, videos, reference = setup
    out = tmp_path / "index"
    first = run_index(model, videos, out)
    assert first.stdout.readline().strip() == "started"
    time.sleep(0.3)
    with pytest.raises(IndexBusyError, match=rf"{out} is being updated by another `xclip-lightning index` \(pid \d+\)"):
        VideoIndex.build(model, videos, out, workers=0, progress=False, window=WINDOW)
    assert first.wait(timeout=120) == 0, first.stderr.read()
    everything = {str(p.resolve()) for p in videos.glob("*.mp4")}
    assert_complete_and_right(out, reference, expected=everything)
    assert len(list((out / "thumbs").iterdir())) == len(reference)


def edit_manifest(folder: Path, change) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    change(manifest["entries"])
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_swapped_or_deleted_manifest_entries_are_caught_and_repaired(setup, tmp_path):
    model, videos, reference = setup
    out = tmp_path / "index"
    VideoIndex.build(model, videos, out, workers=0, progress=False, flush_every=5, window=WINDOW)
    everything = {e.path for e in VideoIndex.load(out).entries}

    def swap(entries):  # moments of two different videos
        other = next(e for e in entries if e["path"] != entries[0]["path"])
        entries[0]["path"], other["path"] = other["path"], entries[0]["path"]

    edit_manifest(out, swap)
    with pytest.raises(
        VideoIndexError, match=r"does not agree.*its id is not that of its path, file version and window.*Repair: run"
    ):
        VideoIndex.load(out)
    repaired = VideoIndex.build(model, videos, out, workers=0, progress=False, window=WINDOW)
    assert len(repaired.repaired) == 2 and repaired.encoded == 2
    assert_complete_and_right(out, reference, expected=everything)

    edit_manifest(out, lambda entries: entries.pop(3))  # a deleted moment: loading keeps the rest right ...
    with pytest.raises(AssertionError):  # ... but its video is incomplete,
        assert_complete_and_right(out, reference)
    assert len(VideoIndex.load(out).entries) == len(reference) - 1
    assert VideoIndex.build(model, videos, out, workers=0, progress=False, window=WINDOW).encoded == 1  # redone
    assert_complete_and_right(out, reference, expected=everything)


@pytest.mark.parametrize("thumbnail", ["../../../../etc/passwd", "/etc/passwd", "thumbs/../../x.jpg"])
def test_thumbnails_are_read_only_from_inside_the_index(setup, tmp_path, thumbnail):
    model, videos, _ = setup
    out = tmp_path / "index"
    VideoIndex.build(model, videos, out, workers=0, progress=False, window=WINDOW)

    def point_outside(entries):
        entries[0]["thumbnail"] = thumbnail

    edit_manifest(out, point_outside)
    with pytest.raises(VideoIndexError, match="is not a file name of thumbs/"):
        VideoIndex.load(out)
    page = tmp_path / "page.html"
    with pytest.raises(SystemExit, match="1"):  # one line naming the problem, no traceback
        main(["search", "--index", str(out), "a red circle", "--html", str(page)])
    assert not page.exists()


def test_file_names_reach_the_terminal_made_safe(setup, tmp_path, capsys):
    model, videos, _ = setup
    hostile = tmp_path / "videos"
    hostile.mkdir()
    name = "clip\x1b[2J\x1b]0;pwned\x07.mp4"
    shutil.copyfile(next(videos.glob("*.mp4")), hostile / name)
    (hostile / "bad\x1b[31m.mp4").write_bytes(b"\x00" * 100)
    main(["index", "--model", str(model), "--videos", str(hostile), "--out", str(tmp_path / "ix"), "--workers", "0"])
    main(["search", "--index", str(tmp_path / "ix"), "a red circle"])
    printed = capsys.readouterr().out
    assert "\x1b" not in printed and "\x07" not in printed
    assert "clip\\x1b[2J\\x1b]0;pwned\\x07.mp4" in printed and "bad\\x1b[31m.mp4" in printed


def test_unreadable_subfolders_are_reported(setup, tmp_path, capsys, monkeypatch):
    model, videos, _ = setup
    folder = tmp_path / "videos"
    shutil.copytree(videos, folder)
    (folder / "private").mkdir()
    real_scandir = os.scandir

    def scandir(path="."):  # as root every folder is readable: refuse one the way the OS does
        if Path(path).name == "private":
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    main(["index", "--model", str(model), "--videos", str(folder), "--out", str(tmp_path / "ix"), "--workers", "0"])
    printed = capsys.readouterr().out
    assert f"1 folder(s) could not be read:\n  {folder / 'private'}: Permission denied" in printed
