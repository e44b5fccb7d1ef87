"""Nothing a user had is lost: a wrong or empty --videos leaves the index as it was, files that are not the index's
are never deleted, and an --out that is not an index is refused."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import synthetic_model
from xclip_lightning.cli import main
from xclip_lightning.index.video_index import VideoIndex, VideoIndexError


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, Path]:
    """A saved model and a folder of 4 synthetic videos."""
    root = tmp_path_factory.mktemp("data_loss")
    model, annotations = synthetic_model(root, videos=4, seed=5)
    videos = root / "videos"
    shutil.copytree(annotations.parent / "videos", videos)
    return model, videos


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (but the writer's lock) and a digest of its bytes."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def index_cli(model: Path, videos: Path | str, out: Path, *extra: str) -> None:
    main(["index", "--model", str(model), "--videos", str(videos), "--out", str(out), "--workers", "0", *extra])


def fails(capsys, *args) -> str:
    """Run the CLI expecting a one-line error and a non-zero exit; the message."""
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    assert exit_info.value.code not in (0, None)
    err = capsys.readouterr().err.strip()
    assert err and len(err.splitlines()) <= 3 and "Traceback" not in err, err
    return err


@pytest.fixture()
def built(setup, tmp_path, capsys) -> tuple[Path, Path, Path, dict[str, str]]:
    model, source = setup
    videos = tmp_path / "videos"
    shutil.copytree(source, videos)
    out = tmp_path / "index"
    index_cli(model, videos, out)
    capsys.readouterr()
    assert len(VideoIndex.load(out).entries) == 4
    return model, videos, out, snapshot(out)


def test_a_missing_videos_folder_changes_nothing(built, capsys):
    model, _, out, before = built
    err = fails(capsys, "index", "--model", str(model), "--videos", "/nonexistent/videos", "--out", str(out))
    assert "/nonexistent/videos" in err and "no such folder" in err
    assert snapshot(out) == before
    assert len(VideoIndex.load(out).search(["a red circle"], k=4)[0]) == 4


def test_an_empty_videos_folder_changes_nothing_and_needs_prune(built, tmp_path, capsys):
    model, _, out, before = built
    empty = tmp_path / "unmounted"
    empty.mkdir()
    err = fails(capsys, "index", "--model", str(model), "--videos", str(empty), "--out", str(out))
    assert "4 of the 4 indexed videos" in err and "--prune" in err
    assert snapshot(out) == before
    # --prune with nothing left to index: the index is still not emptied
    err = fails(capsys, "index", "--model", str(model), "--videos", str(empty), "--out", str(out), "--prune")
    assert "no video" in err and "left as it was" in err
    assert snapshot(out) == before
    assert len(VideoIndex.load(out).entries) == 4


def test_a_folder_of_unreadable_files_changes_nothing(built, tmp_path, capsys):
    model, videos, out, before = built
    broken = tmp_path / "broken"
    broken.mkdir()
    for p in videos.glob("*.mp4"):  # the same names, now undecodable
        (broken / p.name).write_bytes(b"\x00" * 100)
    err = fails(capsys, "index", "--model", str(model), "--videos", str(broken), "--out", str(out), "--prune")
    assert "no video" in err
    assert snapshot(out) == before


def test_losing_more_than_half_needs_prune_less_is_removed_with_a_count(built, capsys):
    model, videos, out, before = built
    paths = sorted(videos.glob("*.mp4"))
    paths[0].unlink()  # one of four really deleted: removed, and said
    index_cli(model, videos, out)
    printed = capsys.readouterr().out
    assert "1 video(s) removed: their files are gone" in printed
    assert {Path(e.path).name for e in VideoIndex.load(out).entries} == {p.name for p in paths[1:]}
    before = snapshot(out)
    for p in paths[1:3]:  # two of the remaining three: more than half
        p.unlink()
    err = fails(capsys, "index", "--model", str(model), "--videos", str(videos), "--out", str(out))
    assert "2 of the 3 indexed videos" in err and "--prune" in err
    assert snapshot(out) == before
    index_cli(model, videos, out, "--prune")
    assert "2 video(s) removed" in capsys.readouterr().out
    assert [Path(e.path).name for e in VideoIndex.load(out).entries] == [paths[3].name]


def test_nothing_is_left_behind_when_a_new_index_finds_nothing(setup, tmp_path, capsys):
    model, _ = setup
    out = tmp_path / "new-index"
    fails(capsys, "index", "--model", str(model), "--videos", str(tmp_path / "missing"), "--out", str(out))
    assert not out.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    err = fails(capsys, "index", "--model", str(model), "--videos", str(empty), "--out", str(out))
    assert "no video file" in err and not out.exists()
    (empty / "bad.mp4").write_bytes(b"\x00" * 100)
    err = fails(capsys, "index", "--model", str(model), "--videos", str(empty), "--out", str(out))
    assert "no video could be indexed" in err and "bad.mp4" in err and not out.exists()


def test_an_out_folder_that_is_not_an_index_is_refused_and_untouched(setup, tmp_path, capsys):
    model, videos = setup
    user = tmp_path / "userdir"
    (user / "thumbs").mkdir(parents=True)
    (user / "shards").mkdir()
    (user / "thumbs" / "holiday.jpg").write_bytes(b"\xff\xd8 my holiday")
    (user / "shards" / "notes.txt").write_text("my notes")
    before = snapshot(user)
    err = fails(capsys, "index", "--model", str(model), "--videos", str(videos), "--out", str(user))
    assert str(user) in err and "not an index" in err
    assert snapshot(user) == before and not (user / ".lock").exists()
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    err = fails(capsys, "index", "--model", str(model), "--videos", str(videos), "--out", str(a_file))
    assert "is a file" in err and a_file.read_text() == "x"
    empty = tmp_path / "empty-out"
    empty.mkdir()  # an empty folder is fine: the index is made there
    index_cli(model, videos, empty)
    assert len(VideoIndex.load(empty).entries) == 4


def test_garbage_collection_removes_only_the_index_files(built, capsys):
    model, videos, out, _ = built
    foreign = [out / "thumbs" / "holiday.jpg", out / "shards" / "notes.txt", out / "mine.txt"]
    for path in foreign:
        path.write_text("the user's")
    sorted(videos.glob("*.mp4"))[0].unlink()  # an update that removes a video and collects garbage
    index_cli(model, videos, out)
    capsys.readouterr()
    assert all(p.read_text() == "the user's" for p in foreign)
    assert len(VideoIndex.load(out).entries) == 3


def test_the_library_keeps_the_index_too(built):
    model, _, out, before = built
    with pytest.raises(VideoIndexError, match="no such folder"):
        VideoIndex.build(model, "/nonexistent/videos", out, workers=0, progress=False)
    assert snapshot(out) == before


@pytest.mark.parametrize(
    ("option", "value", "words"),
    [
        ("--fps", "0", "argument --fps: must be more than 0, got 0"),
        ("--fps", "-1", "argument --fps: must be more than 0, got -1"),
        ("--workers", "-1", "argument --workers: must be 0 (decode in this process) or more, got -1"),
        ("--model", "/nonexistent/model", "--model /nonexistent/model: no such folder"),
    ],
)
def test_bad_values_are_refused_in_one_line_before_anything_is_made(setup, tmp_path, capsys, option, value, words):
    model, videos = setup
    args = {"--model": str(model), "--videos": str(videos), "--out": str(tmp_path / "ix"), option: value}
    err = fails(capsys, "index", *[x for pair in args.items() for x in pair])
    assert words in err and not (tmp_path / "ix").exists()


def test_a_mistake_is_one_line_from_the_real_command(setup, tmp_path):
    """As a user runs it: the installed entry point in a subprocess, no traceback, a non-zero exit."""
    model, _ = setup
    command = [sys.executable, "-m", "xclip_lightning.cli", "index", "--model", str(model)]
    run = subprocess.run([*command, "--videos", "/nonexistent/videos", "--out", str(tmp_path / "ix")],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert run.returncode == 1 and "Traceback" not in run.stderr and len(run.stderr.strip().splitlines()) == 1
    assert "--videos /nonexistent/videos: no such folder" in run.stderr and not (tmp_path / "ix").exists()
