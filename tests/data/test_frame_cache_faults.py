"""The frame cache under faults: files broken behind its back, a killed build, Ctrl-C, orphaned workers."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from xclip_lightning.data.frame_cache import FrameCache, FrameCacheError, SamplerSettings, VideoSource, _entry_name
from xclip_lightning.data.synthetic import make_synthetic_dataset

SETTINGS = SamplerSettings(fps=1.0, max_frames=4, image_size=32)
COPIES = 30

SLOW_BUILD = """
import signal, sys, time
from pathlib import Path
from xclip_lightning.data import frame_cache as fc

# A process started from a background job inherits SIGINT as ignored, and Python then installs no KeyboardInterrupt
# handler: this child stands for a process in a terminal's foreground, where Ctrl-C reaches it, so it installs one.
signal.signal(signal.SIGINT, signal.default_int_handler)

real = fc.decode_video
def slow(source, settings):  # 0.3 s a video: the build lasts long enough to be interrupted
    time.sleep(0.3)
    return real(source, settings)
fc.decode_video = slow
sources = [fc.VideoSource(Path(p)) for p in sys.argv[2:]]
print("started", flush=True)
fc.FrameCache(sys.argv[1], fc.SamplerSettings(1.0, 4, "timestamp", 32)).build(sources, workers=2, progress=False)
print("finished", flush=True)
"""


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("videos")
    make_synthetic_dataset(root, train=3, val=0, test=0, seed=4)
    originals = sorted((root / "videos").glob("*.mp4"))
    copies = []
    for i in range(COPIES):
        copies.append(root / "copies" / f"clip{i:02d}.mp4")
        copies[-1].parent.mkdir(exist_ok=True)
        shutil.copyfile(originals[i % len(originals)], copies[-1])
    return copies


def test_a_truncated_or_deleted_npy_is_named_and_rebuilt(tmp_path, videos):
    sources = [VideoSource(p) for p in videos[:3]]
    cache = FrameCache(tmp_path, SETTINGS)
    cache.build(sources, workers=1, progress=False)
    truncated, deleted = (cache.folder / f"{_entry_name(s)}.npy" for s in sources[:2])
    expected = cache.load(sources[0]).frames
    truncated.write_bytes(truncated.read_bytes()[:200])
    deleted.unlink()
    for source, path in zip(sources[:2], (truncated, deleted), strict=True):
        assert source not in cache
        with pytest.raises(FrameCacheError, match=rf"{path.name} \(frames of .*{source.path.name}\).*prepare_data"):
            cache.frames_array(source)
    assert cache.build(sources, workers=1, progress=False) == {}  # what prepare_data() runs
    assert all(s in cache for s in sources)
    assert (cache.load(sources[0]).frames == expected).all()


def test_temporary_files_of_a_killed_writer_are_removed(tmp_path, videos):
    cache = FrameCache(tmp_path, SETTINGS)
    cache.folder.mkdir(parents=True)
    finished = subprocess.Popen(["true"])
    finished.wait()  # a pid that no longer runs
    stale = cache.folder / f".clip-0123.npy.{finished.pid}.tmp"
    live = cache.folder / f".clip-4567.npy.{os.getpid()}.tmp"  # a writer still at work
    stale.write_bytes(b"half")
    live.write_bytes(b"half")
    cache.build([VideoSource(videos[0])], workers=1, progress=False)
    assert not stale.exists() and live.exists()


def children_of(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.add(int(entry.name))
    return found


def alive(pids: set[int]) -> set[int]:
    return {p for p in pids if Path(f"/proc/{p}").exists() and "(zombie)" not in Path(f"/proc/{p}/status").read_text()}


def start_slow_build(folder: Path, videos: list[Path]) -> tuple[subprocess.Popen, set[int]]:
    process = subprocess.Popen(
        [sys.executable, "-c", SLOW_BUILD, str(folder), *map(str, videos)],
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),  # as when the suite runs in a background job
    )
    assert process.stdout.readline().strip() == "started"
    deadline = time.monotonic() + 30
    while len(children_of(process.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)  # a few videos finish
    return process, children_of(process.pid)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc to find the worker processes")
def test_workers_exit_when_the_build_is_killed(tmp_path, videos):
    process, workers = start_slow_build(tmp_path, videos)
    assert len(workers) >= 2
    process.kill()  # kill -9: no clean-up code runs in the parent
    process.wait()
    deadline = time.monotonic() + 10
    while alive(workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(workers), "cache workers outlived their killed parent"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc to find the worker processes")
def test_ctrl_c_stops_at_once_and_keeps_what_is_finished(tmp_path, videos):
    process, workers = start_slow_build(tmp_path, videos)
    process.send_signal(signal.SIGINT)
    process.wait(timeout=60)
    assert process.returncode != 0 and "finished" not in process.stdout.read()
    cache = FrameCache(tmp_path, SETTINGS)
    sources = [VideoSource(p) for p in videos]
    done = [s for s in sources if s in cache]
    # the finished entries are kept, and the build stopped: before, Ctrl-C first decoded every remaining video
    assert 0 < len(done) < COPIES
    before = {s: (cache.folder / f"{_entry_name(s)}.json").stat().st_mtime_ns for s in done}
    assert cache.build(sources, workers=2, progress=False) == {}
    assert all(s in cache for s in sources)
    assert before == {s: (cache.folder / f"{_entry_name(s)}.json").stat().st_mtime_ns for s in done}  # resumed
    assert not alive(workers)
