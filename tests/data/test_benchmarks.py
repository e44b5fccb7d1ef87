"""Annotation readers on small files in each exact official format."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest

from conftest import touch
from xclip_lightning.data.benchmarks import AnnotationError, MissingVideosError, read_msrvtt, read_msvd


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
    with pytest.raises(AnnotationError, match=r"MSRVTT_data\.json, entry sentences\[0\]: has no key 'caption'"):
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
    touch(vids / "c.webm")
    jsonl = tmp_path / "ann.jsonl"
    jsonl.write_text(
        '{"video": "a.mp4", "captions": ["a dog runs", "a dog plays"], "split": "train"}\n\n'
        '{"video": "sub/b.mkv", "caption": "a cat sleeps", "split": "train"}\n'
        '{"video": "c.webm", "caption": "held out", "split": "test"}\n'
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
    with pytest.raises(AnnotationError, match=r"bad\.jsonl:2: needs one of \['captions', 'caption'"):
        read_generic(bad, tmp_path, "train")
    bad.write_text('{"video": "a.mp4", "caption": "x", "split": "train"\n')
    with pytest.raises(AnnotationError, match=r"bad\.jsonl:1: not valid JSON"):
        read_generic(bad, tmp_path, "train")
    bad.write_text('{"caption": "x", "split": "train"}\n')
    with pytest.raises(AnnotationError, match=r"bad\.jsonl:1: needs a video key, one of \['video'"):
        read_generic(bad, tmp_path, "train")
    good = tmp_path / "good.jsonl"
    good.write_text('{"video": "gone.mp4", "caption": "x", "split": "val"}\n')
    with pytest.raises(MissingVideosError, match=r"val: 1 missing, e\.g\. gone"):
        read_generic(good, tmp_path, "val")


def test_lsmdc_six_tab_fields_recursive_lookup(tmp_path):
    from xclip_lightning.data.benchmarks import read_lsmdc

    ann, vids = tmp_path / "lsmdc", tmp_path / "clips"
    ann.mkdir()
    rows = [
        "0001_American_Beauty_00.00.51.926-00.00.54.129\t00.00.51.926\t00.00.54.129\t00.00.51.000\t00.00.55.000\t"
        "SOMEONE walks in.",
        "0001_American_Beauty_00.01.03.000-00.01.05.000\t1\t2\t3\t4\tHe sits down.",
    ]
    (ann / "LSMDC16_challenge_1000_publictect.csv").write_text("\n".join(rows) + "\n")
    touch(vids / "0001_American_Beauty" / "0001_American_Beauty_00.00.51.926-00.00.54.129.avi")
    with pytest.raises(MissingVideosError, match=r"test: 1 missing, e\.g\. 0001_American_Beauty_00\.01\.03"):
        read_lsmdc(ann, vids, "test")
    touch(vids / "0001_American_Beauty" / "0001_American_Beauty_00.01.03.000-00.01.05.000.avi")
    test = read_lsmdc(ann, vids, "test")
    assert [r.captions for r in test] == [("SOMEONE walks in.",), ("He sits down.",)]
    assert test[0].video_path.parent.name == "0001_American_Beauty"
    (ann / "LSMDC16_annos_val.csv").write_text(rows[0] + "\nclip\t1\t2\tfive fields only\n")
    with pytest.raises(AnnotationError, match=r"LSMDC16_annos_val\.csv:2: expected 6 tab-separated fields"):
        read_lsmdc(ann, vids, "val")


def test_didemo_paragraphs_clip_0_to_31_and_mp4_suffix_rule(tmp_path):
    from xclip_lightning.data.benchmarks import read_didemo

    ann, vids = tmp_path / "didemo", tmp_path / "videos"
    ann.mkdir()
    (ann / "test_list.txt").write_text("12090392@N02_13482799053_87ef417396.mov\nno_text.mp4\n")
    data = [
        {"video": "12090392@N02_13482799053_87ef417396.mov", "description": "a girl jumps", "times": [[0, 1]]},
        {"video": "other.mov", "description": "not in this split", "times": [[2, 2]]},
        {"video": "12090392@N02_13482799053_87ef417396.mov", "description": "she lands", "times": [[2, 3]]},
    ]
    (ann / "test_data.json").write_text(json.dumps(data))
    touch(vids / "12090392@N02_13482799053_87ef417396.mov.mp4")  # re-encoded: id = name up to ".mp4"
    with pytest.warns(RuntimeWarning, match=r"test_list\.txt: 1 video\(s\) have no description.*no_text\.mp4"):
        test = read_didemo(ann, vids, "test")
    assert len(test) == 1 and test[0].captions == ("a girl jumps she lands",)
    assert test[0].end_time == 32 and test[0].video_path.name.endswith(".mov.mp4")
    (ann / "test_data.json").write_text(json.dumps([{"video": "x", "times": []}]))
    with pytest.raises(AnnotationError, match=r"test_data\.json, entry \[0\]: has no key 'description'"):
        read_didemo(ann, vids, "test")


def test_activitynet_paragraphs_val_is_test(tmp_path):
    from xclip_lightning.data.benchmarks import read_activitynet

    ann, vids = tmp_path / "anet", tmp_path / "videos"
    ann.mkdir()
    (ann / "val_ids.json").write_text(json.dumps(["v_QOlSCBRmfWY", "v_ehGHCYKzyZ8"]))
    captions = {
        "v_QOlSCBRmfWY": {
            "duration": 82.7,
            "timestamps": [[0, 20], [20, 82]],
            "sentences": ["A man runs.", " He falls. "],
        },
        "v_ehGHCYKzyZ8": {"duration": 61.0, "timestamps": [[0, 61]], "sentences": ["Kids play."]},
    }
    (ann / "val_1.json").write_text(json.dumps(captions))
    touch(vids / "QOlSCBRmfWY.mkv")
    touch(vids / "sub" / "ehGHCYKzyZ8.mp4")
    test = read_activitynet(ann, vids, "test")
    assert [(r.video_id, r.captions) for r in test] == [
        ("QOlSCBRmfWY", ("A man runs. He falls.",)),
        ("ehGHCYKzyZ8", ("Kids play.",)),
    ]
    assert [r.video_path.name for r in test] == ["QOlSCBRmfWY.mkv", "ehGHCYKzyZ8.mp4"]
    (ann / "val_1.json").write_text('{"v_QOlSCBRmfWY": \n')
    with pytest.raises(AnnotationError, match=r"val_1\.json:\d+: not valid JSON"):
        read_activitynet(ann, vids, "val")
    (ann / "val_1.json").write_text(json.dumps({"v_QOlSCBRmfWY": captions["v_QOlSCBRmfWY"]}))
    with pytest.warns(RuntimeWarning, match=r"val_ids\.json: 1 of 2 ids have no captions .* v_ehGHCYKzyZ8"):
        assert [r.video_id for r in read_activitynet(ann, vids, "val")] == ["QOlSCBRmfWY"]
