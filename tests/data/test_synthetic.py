"""The procedural dataset: deterministic, compositional captions in temporal order, readable by the generic reader."""

from __future__ import annotations

import json

import pytest
import torch

from xclip_lightning.data.benchmarks import read_generic
from xclip_lightning.data.synthetic import ACTIONS, COLOURS, SHAPES, make_synthetic_clip, make_synthetic_dataset
from xclip_lightning.data.video import sample_frames


def test_deterministic_by_seed_and_reused(tmp_path):
    a = make_synthetic_dataset(tmp_path / "a", train=4, val=2, test=2, seed=3)
    b = make_synthetic_dataset(tmp_path / "b", train=4, val=2, test=2, seed=3)
    c = make_synthetic_dataset(tmp_path / "c", train=4, val=2, test=2, seed=4)
    assert a.read_text() == b.read_text() != c.read_text()
    assert (a.parent / "videos/00003.mp4").read_bytes() == (b.parent / "videos/00003.mp4").read_bytes()
    mtime = (a.parent / "videos/00000.mp4").stat().st_mtime_ns
    make_synthetic_dataset(tmp_path / "a", train=4, val=2, test=2, seed=3)  # same settings: reused as it is
    assert (a.parent / "videos/00000.mp4").stat().st_mtime_ns == mtime
    make_synthetic_dataset(tmp_path / "a", train=5, val=2, test=2, seed=3)  # changed settings: rebuilt
    assert len(a.read_text().splitlines()) == 9


def test_captions_describe_the_events_in_order(tmp_path):
    annotations = make_synthetic_dataset(tmp_path, train=6, val=0, test=0, seed=0)
    for line in annotations.read_text().splitlines():
        first, second = json.loads(line)["captions"]
        events = first.split(", then ")
        assert 2 <= len(events) <= 3
        for event in events:
            words = event.split(" ", 3)
            assert words[0] == "a" and words[1] in COLOURS and words[2] in SHAPES and words[3] in ACTIONS
        assert second.startswith("first the ") and second.count(" and after that ") == len(events) - 1
    records = read_generic(annotations, annotations.parent, "train")
    assert len(records) == 6 and all(len(r.captions) == 2 for r in records)
    clip = sample_frames(records[0].video_path)
    seconds = 2 * len(records[0].captions[0].split(", then "))  # 2 s per event at the default settings
    assert clip.frames.shape == (seconds, 3, 48, 64)


def test_objects_appear_in_caption_order(tmp_path):
    """The first frame shows only the first object's colour; the frame at 2 s (event 2 starts) shows the second."""
    annotations = make_synthetic_dataset(tmp_path, train=20, val=0, test=0, seed=1)
    checked = 0
    for record in read_generic(annotations, annotations.parent, "train"):
        events = [e.split(" ") for e in record.captions[0].split(", then ")]
        (c1, _, *a1), (c2, _, *a2) = (e[1:] for e in events[:2])
        if " ".join(a1) == "appears" or " ".join(a2) == "appears" or c1 == c2:
            continue  # an appearing object is not on screen at the start of its event
        frames = sample_frames(record.video_path).frames.permute(0, 2, 3, 1).int()

        assert shows(frames[0], c1) and not shows(frames[0], c2)
        assert shows(frames[2], c2)  # event 2 starts at 2 s
        checked += 1
    assert checked >= 5


def shows(image, colour: str) -> bool:
    """image int [H,W,3]: more than 4 pixels within 60 (summed over RGB) of the colour."""
    return bool(((image - torch.tensor(COLOURS[colour])).abs().sum(-1) < 60).sum() > 4)


def test_tiny_clip_tokenizer_knows_the_vocabulary(tmp_path):
    from transformers import AutoTokenizer

    annotations = make_synthetic_dataset(tmp_path / "data", train=10, val=2, test=2)
    folder = make_synthetic_clip(tmp_path / "clip", annotations)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    for word in [*COLOURS, *SHAPES]:
        assert len(tokenizer(word, add_special_tokens=False)["input_ids"]) == 1, word


def test_a_folder_of_the_users_own_files_is_never_deleted(tmp_path):
    own = tmp_path / "my_videos"
    own.mkdir()
    (own / "holiday.mp4").write_bytes(b"precious")
    with pytest.raises(FileExistsError, match=r"my_videos is not empty and was not written by make_synthetic"):
        make_synthetic_dataset(own, train=2, val=0, test=0)
    assert (own / "holiday.mp4").read_bytes() == b"precious" and len(list(own.iterdir())) == 1
    ours = tmp_path / "synthetic"
    make_synthetic_dataset(ours, train=3, val=0, test=0, seed=1)
    (ours / "notes.txt").write_text("mine")  # something the user put beside it
    annotations = make_synthetic_dataset(ours, train=2, val=0, test=0, seed=1)  # other settings: rebuilt in place
    assert len(annotations.read_text().splitlines()) == 2 and len(list((ours / "videos").iterdir())) == 2
    assert (ours / "notes.txt").read_text() == "mine"
