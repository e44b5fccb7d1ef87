"""The frame cache: same frames as decoding, atomic entries, resume, keyed by settings, failures recorded."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from xclip_lightning.data.frame_cache import (
    FrameCache,
    FrameCacheError,
    SamplerSettings,
    VideoSource,
    _entry_name,
    decode_video,
)
from xclip_lightning.data.synthetic import make_synthetic_dataset

SETTINGS = SamplerSettings(fps=1.0, max_frames=4, image_size=32)


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> list[VideoSource]:
    root = tmp_path_factory.mktemp("synthetic")
    make_synthetic_dataset(root, train=5, val=0, test=0, seed=2)
    return [VideoSource(p) for p in sorted((root / "videos").glob("*.mp4"))]


def test_cached_frames_equal_decoding(tmp_path, sources):
    cache = FrameCache(tmp_path, SETTINGS)
    assert cache.build(sources, workers=2, progress=False) == {}
    for source in sources:
        cached, decoded = cache.load(source), decode_video(source, SETTINGS)
        assert cached.frames.dtype == torch.uint8 and cached.frames.shape[1:] == (3, 32, 32)
        assert torch.equal(cached.frames, decoded.frames) and torch.equal(cached.timestamps, decoded.timestamps)
    clipped = VideoSource(sources[0].path, end_time=2.0)
    cache.build([clipped], workers=1, progress=False)
    assert cache.load(clipped).frames.shape[0] == 2  # a clipped source is its own entry


def test_half_written_entry_is_unreadable_and_resumed(tmp_path, sources):
    cache = FrameCache(tmp_path, SETTINGS)
    cache.build(sources[:2], workers=1, progress=False)
    name = _entry_name(sources[2])
    (cache.folder / f"{name}.npy").write_bytes(b"half a file")  # killed between the two writes
    assert sources[2] not in cache
    with pytest.raises(KeyError, match="run prepare_data"):
        cache.load(sources[2])
    mtimes = {s: (cache.folder / f"{_entry_name(s)}.json").stat().st_mtime_ns for s in sources[:2]}
    cache.build(sources, workers=1, progress=False)  # resumes: only the missing entries are decoded
    assert all(s in cache for s in sources)
    assert {s: (cache.folder / f"{_entry_name(s)}.json").stat().st_mtime_ns for s in sources[:2]} == mtimes
    assert torch.equal(cache.load(sources[2]).frames, decode_video(sources[2], SETTINGS).frames)
    assert not [p for p in cache.folder.iterdir() if p.name.endswith(".tmp")]


def test_changed_settings_or_source_rebuild(tmp_path, sources):
    a = FrameCache(tmp_path, SETTINGS)
    b = FrameCache(tmp_path, SamplerSettings(fps=1.0, max_frames=4, image_size=24))
    assert a.folder != b.folder
    a.build(sources[:1], workers=1, progress=False)
    b.build(sources[:1], workers=1, progress=False)
    assert b.load(sources[0]).frames.shape[-1] == 24
    copy = tmp_path / "copy.mp4"
    copy.write_bytes(sources[0].path.read_bytes())
    a.build([VideoSource(copy)], workers=1, progress=False)
    copy.write_bytes(sources[1].path.read_bytes())  # the file changed under the same name
    os.utime(copy, ns=(1, 1))
    a.build([VideoSource(copy)], workers=1, progress=False)
    assert torch.equal(a.load(VideoSource(copy)).frames, decode_video(sources[1], SETTINGS).frames)


def test_failures_are_recorded_with_their_reason_never_zeros(tmp_path, sources):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all" * 10)
    missing = VideoSource(Path(tmp_path / "gone.mp4"))
    cache = FrameCache(tmp_path / "cache", SETTINGS)
    failures = cache.build([*sources[:1], VideoSource(bad)], workers=1, progress=False)
    assert list(failures) == [bad] and "not a readable video container" in failures[bad]
    assert VideoSource(bad) not in cache
    with pytest.raises(FileNotFoundError):
        cache.build([missing], workers=1, progress=False)


def test_a_video_that_turns_bad_loses_its_old_frames(tmp_path, sources):
    copy = tmp_path / "was_good.mp4"
    copy.write_bytes(sources[0].path.read_bytes())
    cache = FrameCache(tmp_path / "cache", SETTINGS)
    assert cache.build([VideoSource(copy)], workers=1, progress=False) == {}
    copy.write_bytes(b"now garbage" * 50)
    os.utime(copy, ns=(2, 2))
    failures = cache.build([VideoSource(copy)], workers=1, progress=False)
    assert list(failures) == [copy] and VideoSource(copy) not in cache
    with pytest.raises(FrameCacheError, match=r"was_good.*cannot be read.*run prepare_data\(\) again"):
        cache.frames_array(VideoSource(copy))  # the frames of the earlier, good file are gone
