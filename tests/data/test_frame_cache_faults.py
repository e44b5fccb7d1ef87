"""The frame cache under faults: files broken behind its back, a killed build, Ctrl-C, orphaned workers."""

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


def entry(cache: FrameCache, source: VideoSource, suffix: str) -> Path:
    return cache.folder / f"{_entry_name(source)}{suffix}"


def test_a_damaged_npy_header_of_the_same_size_is_rebuilt(tmp_path, videos):
    sources = [VideoSource(p) for p in videos[:2]]
    cache = FrameCache(tmp_path, SETTINGS)
    cache.build(sources, workers=1, progress=False)
    expected = cache.load(sources[0]).frames
    npy = entry(cache, sources[0], ".npy")
    data = bytearray(npy.read_bytes())
    at = data.index(b"'shape': (") + len(b"'shape': (")
    data[at] = ord("7") if data[at] != ord("7") else ord("8")  # another shape, the same size
    npy.write_bytes(bytes(data))
    assert sources[0] not in cache  # what prepare_data checks: the header is read, not only the size
    assert cache.build(sources, workers=1, progress=False) == {}
    assert sources[0] in cache and (FrameCache(tmp_path, SETTINGS).load(sources[0]).frames == expected).all()


def test_flipped_pixels_or_a_swapped_npy_are_never_returned(tmp_path, videos):
    sources = [VideoSource(p) for p in videos[:3]]  # three different clips
    cache = FrameCache(tmp_path, SETTINGS)
    cache.build(sources, workers=1, progress=False)
    expected = [cache.load(s).frames for s in sources]
    flipped, b, c = (entry(cache, s, ".npy") for s in sources)
    data = bytearray(flipped.read_bytes())
    data[-1] ^= 0x10  # one pixel
    flipped.write_bytes(bytes(data))
    assert b.stat().st_size == c.stat().st_size
    b_bytes, c_bytes = b.read_bytes(), c.read_bytes()
    b.write_bytes(c_bytes), c.write_bytes(b_bytes)  # swapped with another entry of the same size
    fresh = FrameCache(tmp_path, SETTINGS)  # another process: nothing verified yet
    for source, path in zip(sources, (flipped, b, c), strict=True):
        assert source in fresh  # size and header agree: only the digest can tell
        with pytest.raises(FrameCacheError, match=rf"{path.name} \(frames of .*{source.path.name}\) is not what was"):
            fresh.frames_array(source)
        assert source not in fresh  # its entry was dropped: the next prepare_data rebuilds it
    assert fresh.build(sources, workers=1, progress=False) == {}
    again = FrameCache(tmp_path, SETTINGS)
    assert all((again.load(s).frames == e).all() for s, e in zip(sources, expected, strict=True))


def test_edited_timestamps_or_a_truncated_json_are_named_and_rebuilt(tmp_path, videos):
    sources = [VideoSource(p) for p in videos[:2]]
    cache = FrameCache(tmp_path, SETTINGS)
    cache.build(sources, workers=1, progress=False)
    expected = cache.load(sources[0]).timestamps
    edited, truncated = (entry(cache, s, ".json") for s in sources)
    meta = json.loads(edited.read_text())
    meta["timestamps"][0] += 0.5
    edited.write_text(json.dumps(meta))
    truncated.write_text(truncated.read_text()[:40])
    fresh = FrameCache(tmp_path, SETTINGS)
    with pytest.raises(FrameCacheError, match=rf"{edited.name} \(the frame cache's metadata of .*\) cannot be used "
                                              r"\(it does not match the digest"):  # fmt: skip
        fresh.load(sources[0])
    with pytest.raises(FrameCacheError, match=rf"{truncated.name} .*cannot be used \(JSONDecodeError"):
        fresh.load(sources[1])
    assert sources[0] not in fresh and sources[1] not in fresh
    assert fresh.build(sources, workers=1, progress=False) == {}
    assert torch.equal(FrameCache(tmp_path, SETTINGS).load(sources[0]).timestamps, expected)
