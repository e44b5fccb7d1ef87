"""Indexing with several processes (Lightning predict under DDP, gloo on the CPU) gives the index one process
gives: the same moments, rows, thumbnails and failures, published once by rank 0."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_video_index import setup  # noqa: F401  (the module fixture: a saved model and a folder of synthetic videos)

from xclip_lightning.index.store import IndexStore, is_index, writer_lock
from xclip_lightning.index.video_index import VideoIndex

WINDOW = 2.0


def index_with_two_processes(model: Path, videos: Path, out: Path) -> str:
    command = [sys.executable, "-m", "xclip_lightning.cli", "index", "--model", str(model), "--videos", str(videos)]
    command += ["--out", str(out), "--window", str(WINDOW), "--devices", "2", "--device", "cpu", "--workers", "1"]
    run = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return run.stdout


def assert_same_index(got: VideoIndex, want: VideoIndex) -> None:
    key = {(e.path, e.moment): i for i, e in enumerate(want.entries)}
    assert sorted(key) == sorted((e.path, e.moment) for e in got.entries)
    for i, entry in enumerate(got.entries):
        j = key[(entry.path, entry.moment)]
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
    assert len(IndexStore.open(tmp_path / "two").shard_names()) == 2  # each rank encoded its share into its own shard
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
    assert "(1 new or changed videos encoded now)" in printed
    assert_same_index(VideoIndex.load(tmp_path / "two"), single)


def test_a_busy_index_stops_every_rank_with_rank_zeros_reason(setup, tmp_path):  # noqa: F811
    model, videos, _ = setup
    out = tmp_path / "index"
    with writer_lock(out):  # another `index` is updating it
        command = [sys.executable, "-m", "xclip_lightning.cli", "index", "--model", str(model), "--videos", str(videos)]
        command += ["--out", str(out), "--devices", "2", "--device", "cpu", "--workers", "0"]
        run = subprocess.run(command, capture_output=True, text=True, timeout=300)  # no rank left waiting
    assert run.returncode != 0 and "is being updated by another `xclip-lightning index`" in run.stderr
    assert not is_index(out)


SLOW_DISTRIBUTED_INDEX = """
import sys, time
from xclip_lightning.index import encode as search
from xclip_lightning.index.video_index import VideoIndex

real = search.sample_frames
def slow(*args, **kwargs):  # 1 s a video: the build is killed half-way
    time.sleep(1.0)
    return real(*args, **kwargs)
search.sample_frames = slow
VideoIndex.build(sys.argv[1], sys.argv[2], sys.argv[3], workers=0, progress=False, flush_every=1, batch_size=1,
                        window=float(sys.argv[4]), device="cpu", devices=2)
"""


@pytest.mark.slow
def test_a_killed_multi_process_build_resumes_from_what_its_ranks_finished(setup, tmp_path):  # noqa: F811
    model, source, _ = setup
    videos = tmp_path / "videos"
    shutil.copytree(source, videos)
    out = tmp_path / "index"
    script = tmp_path / "slow_index.py"  # a file: Lightning launches rank 1 by running it again
    script.write_text(SLOW_DISTRIBUTED_INDEX)
    process = subprocess.Popen(
        [sys.executable, str(script), str(model), str(videos), str(out), str(WINDOW)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 240
    parts = out / "parts"
    while time.monotonic() < deadline and process.poll() is None:  # until each rank has finished a video
        finished = [json.loads(p.read_text())["entries"] for p in parts.glob("*.json")] if parts.is_dir() else []
        if len(finished) == 2 and all(finished):
            break
        time.sleep(0.1)
    os.killpg(process.pid, signal.SIGKILL)  # both ranks, at once
    process.wait()
    assert IndexStore.open(out).version() == 0  # nothing was published
    done = {e["path"] for p in parts.glob("*.json") for e in json.loads(p.read_text())["entries"]}
    assert 2 <= len(done) < 6

    printed = index_with_two_processes(model, videos, out)
    assert f"({6 - len(done)} new or changed videos encoded now)" in printed  # the rest only
    single = VideoIndex.build(model, videos, tmp_path / "one", workers=0, progress=False, window=WINDOW)
    assert_same_index(VideoIndex.load(out), single)
    assert not list(parts.iterdir())
