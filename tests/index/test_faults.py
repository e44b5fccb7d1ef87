"""The video index under faults: killed updates, two writers at once, a database edited by hand, hostile names."""

from __future__ import annotations

import base64
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from xclip_lightning.cli import main
from xclip_lightning.data.synthetic import make_synthetic_clip, make_synthetic_dataset
from xclip_lightning.index.store import IndexBusyError, IndexStore, is_index
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
        (Path(e.path).name, e.moment): {k: getattr(clean.features, k)[i] for k in ("video", "frames")}
        for i, e in enumerate(clean.entries)
    }
    assert len(reference) > VIDEOS  # long videos: several moments
    return root / "model", videos, reference


def assert_complete_and_right(folder: Path, reference: dict, expected: set[str] | None = None) -> VideoIndex:
    """The index loads, every video has all its moments, and every entry holds its own moment's features."""
    index = VideoIndex.load(folder)
    assert len({(e.path, e.moment) for e in index.entries}) == len(index.entries)
    by_video: dict[str, list[int]] = {}
    for e in index.entries:
        by_video.setdefault(e.path, []).append(e.moment)
    for path, windows in by_video.items():
        assert sorted(windows) == list(range(len(windows))) and len(windows) == reference_moments(reference, path)
    for i, entry in enumerate(index.entries):
        own = reference[(Path(entry.path).name, entry.moment)]
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
    checked = 0
    for _ in range(4):
        process = run_index(model, videos, out)
        assert process.stdout.readline().strip() == "started"
        time.sleep(rng.uniform(0.2, 1.6))
        process.send_signal(signal.SIGKILL)
        process.wait()
        if is_index(out) and IndexStore.open(out).version() > 0:
            kept = assert_complete_and_right(out, reference)
            assert {e.path for e in kept.entries} <= everything
            checked += 1
    assert checked >= 2  # most kills land after a first version was published
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


def edit_database(folder: Path, statements: list[tuple[str, tuple]]) -> None:
    """Change the index's database by hand, as a user with the sqlite3 shell would."""
    db = sqlite3.connect(folder / "index.sqlite")
    with db:
        for statement, params in statements:
            db.execute(statement, params)
    db.close()


def test_swapped_or_deleted_entries_are_caught_and_repaired(setup, tmp_path, capsys):
    model, videos, reference = setup
    out = tmp_path / "index"
    VideoIndex.build(model, videos, out, workers=0, progress=False, flush_every=5, window=WINDOW)
    everything = {e.path for e in VideoIndex.load(out).entries}
    first, other = sorted(everything)[:2]
    edit_database(  # the paths of two moments of different videos swapped
        out,
        [
            ("UPDATE entries SET path = 'x' WHERE path = ? AND moment = 0", (first,)),
            ("UPDATE entries SET path = ? WHERE path = ? AND moment = 0", (first, other)),
            ("UPDATE entries SET path = ? WHERE path = 'x'", (other,)),
        ],
    )
    with pytest.raises(VideoIndexError, match=r"was edited: its id is not that of its file.*Repair: `xclip-lightning"):
        VideoIndex.load(out).search(["a red circle moves left"], k=3, candidates=None)
    with pytest.raises(SystemExit):
        main(["index", "--verify", str(out)])
    printed = capsys.readouterr().out
    assert "2 problem(s)" in printed and "dropped 2 moment(s) of 2 video(s)" in printed
    repaired = VideoIndex.build(model, videos, out, workers=0, progress=False, window=WINDOW)
    assert repaired.encoded == 2
    assert_complete_and_right(out, reference, expected=everything)

    edit_database(out, [("UPDATE entries SET row = row + 1 WHERE path = ? AND moment = 0", (first,))])  # repointed
    with pytest.raises(VideoIndexError, match="holds another moment than the index says"):
        VideoIndex.load(out).search(["a red circle moves left"], k=3, candidates=None)
    with pytest.raises(SystemExit):
        main(["index", "--verify", str(out)])
    assert VideoIndex.build(model, videos, out, workers=0, progress=False, window=WINDOW).encoded == 1
    assert_complete_and_right(out, reference, expected=everything)

    edit_database(out, [("DELETE FROM entries WHERE path = ? AND moment = 1", (first,))])  # a deleted moment
    with pytest.raises(AssertionError):  # loading keeps the rest right, but its video is incomplete ...
        assert_complete_and_right(out, reference)
    assert VideoIndex.build(model, videos, out, workers=0, progress=False, window=WINDOW).encoded == 1  # redone
    assert_complete_and_right(out, reference, expected=everything)
    main(["index", "--verify", str(out)])
    assert "are as written" in capsys.readouterr().out


def test_thumbnails_are_never_read_through_links_or_when_changed(setup, tmp_path):
    model, videos, _ = setup
    out = tmp_path / "index"
    VideoIndex.build(model, videos, out, workers=0, progress=False, window=WINDOW)
    index = VideoIndex.load(out)
    hits = index.search(["a red circle"], k=3)[0]
    assert all(index.thumbnail(h) for h in hits)
    linked, flipped = (out / "thumbs" / hits[0].thumbnail), (out / "thumbs" / hits[1].thumbnail)
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0")
    linked.unlink()
    linked.symlink_to(secret)
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2] ^= 0x01
    flipped.write_bytes(bytes(data))
    assert index.thumbnail(hits[0]) is None and index.thumbnail(hits[1]) is None and index.thumbnail(hits[2])
    page = tmp_path / "page.html"
    main(["search", "--index", str(out), "a red circle", "--top-k", "3", "--html", str(page)])
    text = page.read_text()
    assert text.count("(no thumbnail)") == 2 and base64.b64encode(b"root:x").decode()[:6] not in text
    with pytest.raises(SystemExit):  # --verify names both and drops their moments; index makes them again
        main(["index", "--verify", str(out)])
    VideoIndex.build(model, videos, out, workers=0, progress=False, window=WINDOW)
    index = VideoIndex.load(out)
    assert all(index.thumbnail(h) for h in index.search(["a red circle"], k=3)[0])
    assert not linked.is_symlink()


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
