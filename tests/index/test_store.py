"""The index on disk: an index of the previous format migrated in place, the model found from any directory,
the writer's pid readable while it runs, and opening that reads nothing per moment."""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from test_video_index import setup  # noqa: F401  (the module fixture: a saved model and a folder of synthetic videos)

from xclip_lightning.cli import main
from xclip_lightning.index.store import DATABASE, LOCK, IndexStore, writer_lock
from xclip_lightning.index.video_index import VideoIndex, VideoIndexError


def write_format_3(index: VideoIndex, folder: Path) -> None:
    """``index`` as format 3 wrote it: one JSON manifest, SHA-256 per shard, entries with a ``window`` key and
    their thumbnail's name, the model folder as given (here relative)."""
    (folder / "shards").mkdir(parents=True)
    shutil.copytree(index.folder / "thumbs", folder / "thumbs")
    entries, features = index.entries, index.features
    name = "0" * 31 + "1.safetensors"
    tensors = {"video": features.video, "frames": features.frames, "frame_mask": features.frame_mask.to(torch.uint8)}
    save_file(tensors, str(folder / "shards" / name), metadata={"ids": json.dumps([e.id for e in entries])})
    digest = hashlib.sha256((folder / "shards" / name).read_bytes()).hexdigest()
    manifest = {
        "format_version": 3,
        "model_fingerprint": index.store.meta["model_fingerprint"],
        "model_dir": "model",
        "videos": index.store.meta["videos"],
        "sampler": index.store.meta["sampler"],
        "window": index.window,
        "feature_dtype": "float32",
        "built": "2026-11-30 12:00:00",
        "shards": {name: {"rows": len(entries), "sha256": digest}},
        "entries": [
            {
                "path": e.path,
                "size": e.size,
                "mtime_ns": e.mtime_ns,
                "duration": e.duration,
                "timestamps": e.timestamps,
                "thumbnail": e.thumbnail,
                "id": e.id,
                "shard": name,
                "row": row,
                "window": e.moment,
                "moments": e.moments,
                "start": e.start,
                "end": e.end,
            }
            for row, e in enumerate(entries)
        ],
        "failures": {"/videos/broken.mp4": "VideoDecodeError: no frame"},
        "ann": None,
    }
    manifest["entries"][1]["row"] = 2  # an entry pointing at another moment's row: left out by the migration
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1))


def test_an_index_of_the_previous_format_is_migrated_in_place(setup, tmp_path, monkeypatch):  # noqa: F811
    model_dir, videos, captions = setup
    current = VideoIndex.build(model_dir, videos, tmp_path / "current", workers=0, progress=False)
    old = tmp_path / "old"
    write_format_3(current, old)
    monkeypatch.chdir(model_dir.parent)  # format 3 stored the model folder as given: relative to where it ran
    migrated = VideoIndex.load(old)
    assert (old / DATABASE).is_file() and not (old / "manifest.json").exists()
    assert migrated.model_name == str(model_dir.resolve())  # made absolute: search now works from anywhere
    want = [e for i, e in enumerate(current.entries) if i != 1]
    assert [(e.id, e.path, e.start, e.timestamps) for e in migrated.entries] == [
        (e.id, e.path, e.start, e.timestamps) for e in want
    ]
    assert migrated.failures == {"/videos/broken.mp4": "VideoDecodeError: no frame"}
    dropped = current.entries[1]
    for got, expected in zip(migrated.search(captions, k=5), current.search(captions, k=6), strict=True):
        expected = [h for h in expected if (h.path, h.start) != (dropped.path, dropped.start)][:5]
        assert [(h.path, h.start) for h in got] == [(h.path, h.start) for h in expected]
        assert [h.score for h in got] == pytest.approx([h.score for h in expected], abs=1e-5)
    # the next update re-encodes only the entry the migration left out
    assert VideoIndex.build(model_dir, videos, old, workers=0, progress=False).encoded == 1


def test_a_damaged_previous_format_is_refused_with_the_rebuild_command(tmp_path):
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "manifest.json").write_text("{not json")
    with pytest.raises(VideoIndexError, match=r"cannot be read .*delete .* and build it again"):
        VideoIndex.load(tmp_path / "old")


def test_search_finds_the_model_from_any_directory_and_says_when_it_moved(setup, tmp_path, monkeypatch, capsys):  # noqa: F811
    model_dir, videos, captions = setup
    work = tmp_path / "work"
    shutil.copytree(model_dir, work / "models" / "x")
    monkeypatch.chdir(work)
    main(["index", "--model", "models/x", "--videos", str(videos), "--out", str(tmp_path / "ix"), "--workers", "0"])
    monkeypatch.chdir(tmp_path)  # elsewhere: the index knows where its model is
    capsys.readouterr()
    main(["search", "--index", str(tmp_path / "ix"), captions[0], "--top-k", "2"])
    assert capsys.readouterr().out.count(".mp4") == 2
    shutil.move(work / "models" / "x", work / "models" / "y")
    with pytest.raises(SystemExit):
        main(["search", "--index", str(tmp_path / "ix"), captions[0]])
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "models/x, which is not there any more: pass --model" in err
    main(
        ["search", "--index", str(tmp_path / "ix"), captions[0], "--top-k", "2", "--model", str(work / "models" / "y")]
    )
    assert capsys.readouterr().out.count(".mp4") == 2


def test_the_writer_pid_is_readable_while_it_holds_the_lock(tmp_path):
    reader = "import sys; print(open(sys.argv[1]).read().strip())"
    with writer_lock(tmp_path):
        for _ in range(20):  # another process reads it at any moment: never empty
            run = subprocess.run([sys.executable, "-c", reader, str(tmp_path / LOCK)], capture_output=True, text=True)
            assert run.stdout.strip().isdigit()


def test_opening_reads_no_entry_and_no_shard(setup, tmp_path):  # noqa: F811
    model_dir, videos, captions = setup
    VideoIndex.build(model_dir, videos, tmp_path / "ix", workers=0, progress=False)
    for shard in (tmp_path / "ix" / "shards").iterdir():
        shard.write_bytes(b"")  # every shard emptied: opening does not notice, the first query does
    db = sqlite3.connect(tmp_path / "ix" / DATABASE)
    statements = []
    db.set_trace_callback(statements.append)
    store = IndexStore(tmp_path / "ix", db)
    assert store.count() == 6 and all("entries" not in s and "shards" not in s for s in statements)
    index = VideoIndex.load(tmp_path / "ix")
    assert len(index) == 6
    with pytest.raises(VideoIndexError, match="truncated or replaced"):
        index.search(captions[0])


def test_the_database_read_ahead_keeps_the_readers_view_of_updates(setup, tmp_path):  # noqa: F811
    """After its first query a searcher reads the database ahead in the background. It must not cost the process
    its SQLite locks (closing a descriptor of the file would): an update another process publishes and closes is
    seen by the next query, and the WAL the searcher reads is not deleted under it."""
    model_dir, videos, captions = setup
    folder = tmp_path / "videos"
    shutil.copytree(videos, folder)
    out = tmp_path / "ix"
    VideoIndex.build(model_dir, folder, out, workers=0, progress=False)
    index = VideoIndex.load(out)
    assert len(index.search(captions[0], k=3)[0]) == 3
    index._read_ahead.join()
    update = f"from xclip_lightning.cli import main; main(['index', '--model', {str(model_dir)!r}, '--videos', " \
        f"{str(folder)!r}, '--out', {str(out)!r}, '--workers', '0'])"  # fmt: skip
    for count, name in ((7, "copy of clip0.mp4"), (8, "copy of clip1.mp4")):  # the second writes a new WAL
        shutil.copy(folder / name.removeprefix("copy of "), folder / name)
        run = subprocess.run([sys.executable, "-c", update], capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr
        assert len(index) == count
        assert str(folder / name) in {h.path for h in index.search(captions[0], k=count)[0]}
