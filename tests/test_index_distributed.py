"""Indexing with several processes (Lightning predict under DDP, gloo on the CPU) gives the index one process
gives: the same moments, rows, thumbnails and failures, published once by rank 0."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from test_search import setup  # noqa: F401  (the module fixture: a saved model and a folder of synthetic videos)
from xclip_lightning.index_store import writer_lock
from xclip_lightning.search import VideoIndex

WINDOW = 2.0


def index_with_two_processes(model: Path, videos: Path, out: Path) -> str:
    command = [sys.executable, "-m", "xclip_lightning.cli", "index", "--model", str(model), "--videos", str(videos)]
    command += ["--out", str(out), "--window", str(WINDOW), "--devices", "2", "--device", "cpu", "--workers", "1"]
    run = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return run.stdout


def assert_same_index(got: VideoIndex, want: VideoIndex) -> None:
    key = {(e.path, e.window): i for i, e in enumerate(want.entries)}
    assert sorted(key) == sorted((e.path, e.window) for e in got.entries)
    for i, entry in enumerate(got.entries):
        j = key[(entry.path, entry.window)]
        other = want.entries[j]
        for field in ("id", "start", "end", "timestamps", "duration", "size", "mtime_ns", "moments", "thumbnail"):
            assert getattr(entry, field) == getattr(other, field), field
        for name in ("video", "frames", "frame_mask"):  # other batches, same rows up to float reassociation
            assert torch.allclose(getattr(got.features, name)[i].float(), getattr(want.features, name)[j].float(),
                                  atol=1e-5), name  # fmt: skip
        thumb = (got.folder / "thumbs" / entry.thumbnail).read_bytes()
        assert thumb == (want.folder / "thumbs" / other.thumbnail).read_bytes()
    assert got.failures.keys() == want.failures.keys()


@pytest.mark.slow
def test_two_processes_build_and_update_the_index_one_process_builds(setup, tmp_path):  # noqa: F811
    model, source, captions = setup
    videos = tmp_path / "videos"
    shutil.copytree(source, videos)
    single = VideoIndex.build(model, videos, tmp_path / "one", workers=0, progress=False, window=WINDOW)
    printed = index_with_two_processes(model, videos, tmp_path / "two")
    assert printed.count("videos indexed as") == 1, printed  # rank 0 reports, once
    assert "6 videos indexed as" in printed and "1 file(s) could not be indexed" in printed
    assert not (tmp_path / "two" / "parts").exists() or not list((tmp_path / "two" / "parts").iterdir())
    two = VideoIndex.load(tmp_path / "two")
    manifest = json.loads((tmp_path / "two" / "manifest.json").read_text())
    assert len(manifest["shards"]) == 2  # each rank encoded its share into its own shard
    assert_same_index(two, single)
    for got, want in zip(two.search(captions, k=4), single.search(captions, k=4), strict=True):
        assert [(h.path, h.start) for h in got] == [(h.path, h.start) for h in want]
        assert [h.score for h in got] == pytest.approx([h.score for h in want], abs=1e-4)

    # an update: one video gone, one new; both ways encode only the new one
    (videos / "clip2.mp4").unlink()
    shutil.copy(videos / "clip3.mp4", videos / "clip3 again.mp4")
    single = VideoIndex.build(model, videos, tmp_path / "one", workers=0, progress=False, window=WINDOW)
    assert single.encoded == 1
    printed = index_with_two_processes(model, videos, tmp_path / "two")
    assert "(1 new, changed or repaired videos encoded now)" in printed
    assert_same_index(VideoIndex.load(tmp_path / "two"), single)


def test_a_busy_index_stops_every_rank_with_rank_zeros_reason(setup, tmp_path):  # noqa: F811
    model, videos, _ = setup
    out = tmp_path / "index"
    with writer_lock(out):  # another `index` is updating it
        command = [sys.executable, "-m", "xclip_lightning.cli", "index", "--model", str(model), "--videos", str(videos)]
        command += ["--out", str(out), "--devices", "2", "--device", "cpu", "--workers", "0"]
        run = subprocess.run(command, capture_output=True, text=True, timeout=300)  # no rank left waiting
    assert run.returncode != 0 and "is being updated by another `xclip-lightning index`" in run.stderr
    assert not (out / "manifest.json").exists()
