"""Annotation readers on small files in each exact official format."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest

from xclip_lightning.data.benchmarks import AnnotationError, MissingVideosError, read_msrvtt, read_msvd


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x00")
    return path


@pytest.fixture
def msrvtt(tmp_path) -> tuple[Path, Path]:
    ann, vids = tmp_path / "msrvtt_data", tmp_path / "videos"
    ann.mkdir()
    sentences = [
        {"video_id": f"video{v}", "caption": f"caption {c} of video {v}", "sen_id": 10 * v + c}
        for v in range(4)
        for c in range(3)
    ]
    sentences.append({"video_id": "video9770", "caption": "a man talks", "sen_id": 99})
    (ann / "MSRVTT_data.json").write_text(json.dumps({"sentences": sentences, "videos": []}))
    (ann / "MSRVTT_train.9k.csv").write_text("video_id\nvideo0\nvideo1\nvideo2\n")
    (ann / "MSRVTT_JSFUSION_test.csv").write_text(
        "key,vid_key,video_id,sentence\nret0,msr9770,video9770,a man talks\nret1,msr3,video3,a cat sleeps\n"
    )
    for v in range(3):
        touch(vids / f"video{v}.mp4")
    touch(vids / "video3.webm")  # official fallback to .webm
    touch(vids / "video9770.mp4")
    return ann, vids


def test_msrvtt_train_expands_every_caption(msrvtt):
    ann, vids = msrvtt
    train = read_msrvtt(ann, vids, "train")
    assert [r.video_id for r in train] == ["video0", "video1", "video2"]
    assert train[1].captions == ("caption 0 of video 1", "caption 1 of video 1", "caption 2 of video 1")
    assert train[0].video_path == vids / "video0.mp4"


def test_msrvtt_test_is_jsfusion_with_webm_fallback(msrvtt):
    ann, vids = msrvtt
    test = read_msrvtt(ann, vids, "test")
    assert [(r.video_id, r.captions) for r in test] == [("video9770", ("a man talks",)), ("video3", ("a cat sleeps",))]
    assert test[1].video_path == vids / "video3.webm"


def test_msrvtt_missing_videos_error_or_skip(msrvtt):
    ann, vids = msrvtt
    os.remove(vids / "video1.mp4")
    with pytest.raises(MissingVideosError, match=r"train: 1 missing, e\.g\. video1"):
        read_msrvtt(ann, vids, "train")
    with pytest.warns(RuntimeWarning, match="skipping"):
        assert [r.video_id for r in read_msrvtt(ann, vids, "train", missing_videos="skip")] == ["video0", "video2"]


def test_msrvtt_malformed_files_name_file_line_and_key(msrvtt):
    ann, vids = msrvtt
    (ann / "MSRVTT_JSFUSION_test.csv").write_text("key,vid_key,video_id,sentence\nret0,msr9770,video9770\n")
    with pytest.raises(AnnotationError, match=r"MSRVTT_JSFUSION_test\.csv:2: expected 4 fields"):
        read_msrvtt(ann, vids, "test")
    (ann / "MSRVTT_train.9k.csv").write_text("vid\nvideo0\n")
    with pytest.raises(AnnotationError, match=r"MSRVTT_train\.9k\.csv:1: missing column\(s\) \['video_id'\]"):
        read_msrvtt(ann, vids, "train")
    (ann / "MSRVTT_train.9k.csv").write_text("video_id\nvideo0\nvideo42\n")
    with pytest.raises(AnnotationError, match=r"MSRVTT_train\.9k\.csv:3: video 'video42' has no caption"):
        read_msrvtt(ann, vids, "train")
    (ann / "MSRVTT_data.json").write_text(json.dumps({"sentences": [{"video_id": "video0"}]}))
    with pytest.raises(AnnotationError, match=r"sentences\[0\] has no key 'caption'"):
        read_msrvtt(ann, vids, "train")


@pytest.fixture
def msvd(tmp_path) -> tuple[Path, Path]:
    ann, vids = tmp_path / "msvd_data", tmp_path / "YouTubeClips"
    ann.mkdir()
    captions = {
        "-4wsuPCjDBc_5_15": [["a", "cat", "plays"], ["a", "kitten", "is", "playing"]],
        "abc_1_9": [["a", "man", "cooks"]],
    }
    (ann / "raw-captions.pkl").write_bytes(pickle.dumps(captions))
    (ann / "train_list.txt").write_text("-4wsuPCjDBc_5_15\n")
    (ann / "test_list.txt").write_text("abc_1_9\n-4wsuPCjDBc_5_15\n")
    touch(vids / "sub" / "-4wsuPCjDBc_5_15.avi")  # found by a recursive walk on the stem
    touch(vids / "abc_1_9.avi")
    return ann, vids


def test_msvd_multi_caption_records_from_a_recursive_walk(msvd):
    ann, vids = msvd
    test = read_msvd(ann, vids, "test")
    assert [r.video_id for r in test] == ["abc_1_9", "-4wsuPCjDBc_5_15"]
    assert test[1].captions == ("a cat plays", "a kitten is playing")
    assert test[1].video_path == vids / "sub" / "-4wsuPCjDBc_5_15.avi"


class Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_msvd_pickle_may_not_run_code(msvd):
    ann, vids = msvd
    (ann / "raw-captions.pkl").write_bytes(pickle.dumps({"abc_1_9": [["x"]], "evil": Payload()}))
    with pytest.raises(AnnotationError, match=r"raw-captions\.pkl: cannot be read safely: refusing to load"):
        read_msvd(ann, vids, "test")


def test_msvd_unknown_id_in_split_list(msvd):
    ann, vids = msvd
    (ann / "val_list.txt").write_text("abc_1_9\nnope\n")
    with pytest.raises(AnnotationError, match=r"val_list\.txt:2: video 'nope' has no captions"):
        read_msvd(ann, vids, "val")
    with pytest.raises(FileNotFoundError, match="MSVD train split"):
        (ann / "train_list.txt").unlink()
        read_msvd(ann, vids, "train")


def test_generic_jsonl_and_csv_give_the_same_records(tmp_path):
    from xclip_lightning.data.benchmarks import read_generic

    vids = tmp_path / "videos"
    touch(vids / "a.mp4")
    touch(vids / "sub" / "b.mkv")
    jsonl = tmp_path / "ann.jsonl"
    jsonl.write_text(
        '{"video": "a.mp4", "captions": ["a dog runs", "a dog plays"], "split": "train"}\n\n'
        '{"video": "sub/b.mkv", "caption": "a cat sleeps", "split": "train"}\n'
        '{"video": "a.mp4", "caption": "held out", "split": "test"}\n'
    )
    csv_file = tmp_path / "ann.csv"
    csv_file.write_text(
        "video,caption,split\na.mp4,a dog runs,train\nsub/b.mkv,a cat sleeps,train\na.mp4,a dog plays,train\n"
    )
    from_jsonl = read_generic(jsonl, vids, "train")
    assert [(r.video_id, r.captions, r.video_path) for r in from_jsonl] == [
        ("a", ("a dog runs", "a dog plays"), vids / "a.mp4"),
        ("b", ("a cat sleeps",), vids / "sub" / "b.mkv"),
    ]
    assert [(r.video_id, r.captions) for r in read_generic(csv_file, vids, "train")] == [
        (r.video_id, r.captions) for r in from_jsonl
    ]
    assert [r.captions for r in read_generic(jsonl, vids, "test")] == [("held out",)]


def test_generic_errors_name_file_and_line(tmp_path):
    from xclip_lightning.data.benchmarks import read_generic

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"video": "a.mp4", "caption": "x", "split": "train"}\n{"video": "b.mp4", "split": "train"}\n')
    with pytest.raises(AnnotationError, match=r"bad\.jsonl:2: needs 'captions'"):
        read_generic(bad, tmp_path, "train")
    bad.write_text('{"video": "a.mp4", "caption": "x", "split": "train"\n')
    with pytest.raises(AnnotationError, match=r"bad\.jsonl:1: not valid JSON"):
        read_generic(bad, tmp_path, "train")
    bad.write_text('{"caption": "x", "split": "train"}\n')
    with pytest.raises(AnnotationError, match=r"bad\.jsonl:1: missing key 'video'"):
        read_generic(bad, tmp_path, "train")
    good = tmp_path / "good.jsonl"
    good.write_text('{"video": "gone.mp4", "caption": "x", "split": "val"}\n')
    with pytest.raises(MissingVideosError, match=r"val: 1 missing, e\.g\. gone"):
        read_generic(good, tmp_path, "val")
