"""Bad values in annotation files never pass silently and never end in a bare exception: each is an
``AnnotationError`` naming the file and the line (or the JSON entry) and what to do. Also the formats of later code
bases (retrieval JSON, per-split files, key aliases) through the generic reader, and DiDeMo's lookup rules."""

from __future__ import annotations

import csv
import json
import pickle
import warnings
from pathlib import Path

import pytest

from conftest import touch
from miniatures import BUILDERS
from xclip_lightning.data.benchmarks import (
    AnnotationError,
    read_activitynet,
    read_didemo,
    read_generic,
    read_lsmdc,
    read_msrvtt,
    read_msvd,
)


@pytest.fixture
def videos(tmp_path) -> Path:
    for name in ("a.mp4", "b.mp4", "video9770.mp4", "sub/c.webm"):
        touch(tmp_path / "videos" / name)
    return tmp_path / "videos"


BAD_JSONL = [
    ('{"video": "a.mp4", "captions": "a dog runs", "split": "train"}', r":1: 'captions' must be a list of strings"),
    ('{"video": "a.mp4", "caption": "   ", "split": "train"}', r":1: empty caption"),
    ('{"video": "a.mp4", "caption": "", "split": "train"}', r":1: empty caption"),
    ('{"video": "a.mp4", "captions": ["ok", 42], "split": "train"}', r":1: a caption must be a string, got int"),
    ('{"video": "a.mp4", "captions": [["a", "b"]], "split": "train"}', r":1: a caption must be a string, got list"),
    ('{"video": "a.mp4", "captions": [], "split": "train"}', r":1: video 'a' has no caption: .* distractor"),
    (
        '{"video": "a.mp4", "caption": null, "split": "train"}',
        r":1: 'caption' must be a string or a list of strings, got NoneType",
    ),
    ('["a.mp4", "a dog runs", "train"]', r":1: expected a JSON object, got list"),
    ('"a.mp4"', r":1: expected a JSON object, got str"),
    ('{"video": "../../etc/passwd", "caption": "x", "split": "train"}', r":1: video '\.\./\.\./etc/passwd' is outside"),
    ('{"video": "/etc/passwd", "caption": "x", "split": "train"}', r":1: video '/etc/passwd' is outside"),
    ('{"video": "a.mp4", "caption": "x", "sentence": "y", "split": "train"}', r":1: has caption keys"),
    ('{"video": "a.mp4", "caption": "x"}', r":1: has no 'split': add one, or keep one file per split"),
    ('{"video": 7, "caption": "x", "split": "train"}', r":1: 'video' must be a non-empty string"),
]


@pytest.mark.parametrize(("line", "message"), BAD_JSONL, ids=[m for _, m in BAD_JSONL])
def test_every_bad_jsonl_value_is_named_with_file_and_line(line, message, tmp_path, videos):
    path = tmp_path / "ann.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(AnnotationError, match=r"ann\.jsonl" + message):
        read_generic(path, videos, "train")


def test_a_video_in_two_splits_an_unknown_split_and_an_empty_one(tmp_path, videos):
    path = tmp_path / "ann.jsonl"
    path.write_text(
        '{"video": "a.mp4", "caption": "x", "split": "train"}\n'
        '{"video": "b.mp4", "caption": "y", "split": "val"}\n'
        '{"video": "a.mp4", "caption": "z", "split": "test"}\n'
    )
    with pytest.raises(AnnotationError, match=r"ann\.jsonl:3: video 'a' is in split 'test' here and in 'train' above"):
        read_generic(path, videos, "train")
    path.write_text('{"video": "a.mp4", "caption": "x", "split": "train"}\n')
    with pytest.raises(AnnotationError, match=r"no entries for split 'valid'; the file has the splits \['train'\]"):
        read_generic(path, videos, "valid")
    path.write_text("\n")
    with pytest.raises(AnnotationError, match=r"no entries for split 'train': the file is empty"):
        read_generic(path, videos, "train")
    for reader in (read_msrvtt, read_msvd, read_lsmdc, read_didemo, read_activitynet):
        with pytest.raises(ValueError, match=r"has no split 'valid': use one of train, val, test"):
            reader(tmp_path, videos, "valid")


def test_non_utf8_bytes_name_the_line_and_a_bom_or_crlf_is_fine(tmp_path, videos):
    path = tmp_path / "ann.csv"
    path.write_bytes(b"video,caption,split\r\na.mp4,ok,train\r\nb.mp4,caf\xe9 au lait,train\r\n")
    with pytest.raises(AnnotationError, match=r"ann\.csv:3: byte 0xe9 is not UTF-8: re-save the file as UTF-8"):
        read_generic(path, videos, "train")
    path.write_bytes("\ufeffvideo,caption,split\r\na.mp4,ok,train\r\nb.mp4,café au lait,train\r\n".encode())
    assert [r.captions for r in read_generic(path, videos, "train")] == [("ok",), ("café au lait",)]


def test_a_csv_field_over_the_csv_limit_names_the_line(tmp_path, videos):
    path = tmp_path / "ann.csv"
    rows = ["video,caption,split", "a.mp4,ok,train", 'b.mp4,"an unbalanced quote,train']
    rows += [f"a.mp4,caption {i},train" for i in range(csv.field_size_limit() // 20 + 10)]
    path.write_text("\n".join(rows) + "\n")
    with pytest.raises(AnnotationError, match=r"ann\.csv:\d+: field larger than field limit.*unbalanced quote"):
        read_generic(path, videos, "train")


def test_the_retrieval_json_of_later_code_bases_one_file_per_split(tmp_path, videos):
    train = [
        {"video": "a.mp4", "caption": ["a dog runs", "a dog plays"]},
        {"video": "sub/c.webm", "caption": "a cat sleeps", "video_id": "cat", "start time": 0, "end time": 3},
    ]
    test = [{"video": "video9770.mp4", "caption": "a person is talking"}]
    for split, items in (("train", train), ("test", test)):
        (tmp_path / f"msrvtt_ret_{split}.json").write_text(json.dumps(items))
    template = tmp_path / "msrvtt_ret_{split}.json"
    records = read_generic(template, videos, "train")
    assert [(r.video_id, r.captions, r.video_path) for r in records] == [
        ("a", ("a dog runs", "a dog plays"), videos / "a.mp4"),
        ("cat", ("a cat sleeps",), videos / "sub" / "c.webm"),
    ]
    assert [r.video_id for r in read_generic(template, videos, "test")] == ["video9770"]
    (tmp_path / "msrvtt_ret_test.json").write_text(json.dumps([{"video": "a.mp4", "caption": "x", "split": "train"}]))
    with pytest.raises(AnnotationError, match=r"msrvtt_ret_test\.json, entry \[0\]: says split 'train' in the file"):
        read_generic(template, videos, "test")
    (tmp_path / "msrvtt_ret_test.json").write_text(json.dumps({"video": "a.mp4"}))
    with pytest.raises(AnnotationError, match=r"msrvtt_ret_test\.json: expected a JSON array of objects, got dict"):
        read_generic(template, videos, "test")
    (tmp_path / "msrvtt_ret_test.json").write_text(json.dumps([{"video": "a.mp4", "caption": "x"}, 3]))
    with pytest.raises(AnnotationError, match=r"msrvtt_ret_test\.json, entry \[1\]: expected a JSON object, got int"):
        read_generic(template, videos, "test")


@pytest.mark.parametrize(
    ("header", "row"),
    [
        ("video_id,sentence,split", "video9770,a person is talking,test"),
        ("key,vid_key,video_id,sentence,split", "ret0,msr9770,video9770,a person is talking,test"),
        ("clip_name,text,split", "video9770.mp4,a person is talking,test"),
        ("video_path,description,split", "video9770.mp4,a person is talking,test"),
    ],
)
def test_csv_files_with_other_column_names(header, row, tmp_path, videos):
    path = tmp_path / "ann.csv"
    path.write_text(f"{header}\n{row}\n")
    (record,) = read_generic(path, videos, "test")
    assert (record.video_id, record.captions, record.video_path) == (
        "video9770",
        ("a person is talking",),
        videos / "video9770.mp4",
    )


def test_benchmark_readers_refuse_bad_captions_with_file_and_place(tmp_path):
    mini = BUILDERS["msrvtt"](tmp_path / "msrvtt")
    data = json.loads((mini.annotations / "MSRVTT_data.json").read_text())
    data["sentences"][4]["caption"] = " "
    (mini.annotations / "MSRVTT_data.json").write_text(json.dumps(data))
    with pytest.raises(AnnotationError, match=r"MSRVTT_data\.json, entry sentences\[4\]: empty caption"):
        read_msrvtt(mini.annotations, mini.videos, "train")

    mini = BUILDERS["msvd"](tmp_path / "msvd")
    (mini.annotations / "raw-captions.pkl").write_bytes(pickle.dumps({"04Gt01vatkk_248_265": []}))
    with pytest.raises(
        AnnotationError, match=r"raw-captions\.pkl, entry \['04Gt01vatkk_248_265'\]: expected a non-emp"
    ):
        read_msvd(mini.annotations, mini.videos, "test")

    mini = BUILDERS["lsmdc"](tmp_path / "lsmdc")
    path = mini.annotations / "LSMDC16_annos_val.csv"
    path.write_text(path.read_text() + "clip_x\t1\t2\t3\t4\t \n")  # an empty sentence (official: assert fails)
    with pytest.raises(AnnotationError, match=r"LSMDC16_annos_val\.csv:3: expected 6 tab-separated fields"):
        read_lsmdc(mini.annotations, mini.videos, "val")

    mini = BUILDERS["activitynet"](tmp_path / "anet")
    captions = json.loads((mini.annotations / "val_1.json").read_text())
    captions["v_bXdq2zI1Ms0"]["sentences"] = []
    (mini.annotations / "val_1.json").write_text(json.dumps(captions))
    with (
        pytest.raises(AnnotationError, match=r"val_1\.json, entry \['v_bXdq2zI1Ms0'\]: needs 'sentences', a non-empty"),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore")
        read_activitynet(mini.annotations, mini.videos, "test")

    mini = BUILDERS["didemo"](tmp_path / "didemo")
    data = json.loads((mini.annotations / "val_data.json").read_text())
    data[1]["description"] = 12
    (mini.annotations / "val_data.json").write_text(json.dumps(data))
    with pytest.raises(AnnotationError, match=r"val_data\.json, entry \[1\]: a caption must be a string, got int"):
        read_didemo(mini.annotations, mini.videos, "val")


def test_didemo_any_naming_finds_every_id_and_the_official_rule_says_what_it_drops(tmp_path):
    mini = BUILDERS["didemo"](tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the listed id without a description
        found = {r.video_id: r.video_path.name for r in read_didemo(mini.annotations, mini.videos, "test")}
    assert found == {
        "13276452@N07_4362396478_a9b3d6da2e.mp4": "13276452@N07_4362396478_a9b3d6da2e.mp4",  # the id itself
        "14276451@N08_5390124387_8fcb1ce6ef.avi": "14276451@N08_5390124387_8fcb1ce6ef.avi.mp4",  # <id>.mp4
        "28511233@N04_4004211208_c1e6a6b5ff.": "28511233@N04_4004211208_c1e6a6b5ff.",  # a bare dot
    }
    # the id's stem with another extension, in a subfolder (a re-encode that replaced the original extension)
    (mini.videos / "sub").mkdir()
    (mini.videos / "14276451@N08_5390124387_8fcb1ce6ef.avi.mp4").rename(
        mini.videos / "sub" / "14276451@N08_5390124387_8fcb1ce6ef.mkv"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = {r.video_id: r.video_path.name for r in read_didemo(mini.annotations, mini.videos, "test")}
    assert again["14276451@N08_5390124387_8fcb1ce6ef.avi"] == "14276451@N08_5390124387_8fcb1ce6ef.mkv"

    with pytest.warns(RuntimeWarning, match=r"can never match the 1 of 2 ids that contain '\.mp4'.*11567444@N04"):
        official = read_didemo(mini.annotations, mini.videos, "val", lookup="official")
    assert [r.video_id for r in official] == ["12090392@N02_13482799053_87ef417396.mov"]
    assert official[0].video_path.name == "12090392@N02_13482799053_87ef417396.mov.mp4"


def test_an_unknown_split_value_names_its_line_and_the_valid_splits(tmp_path, videos):
    """A typo in one entry's split would silently drop that entry from every split: it is an error instead."""
    path = tmp_path / "ann.jsonl"
    lines = [json.dumps({"video": "a.mp4", "caption": f"caption {i}", "split": "train"}) for i in range(40)]
    lines[12] = json.dumps({"video": "b.mp4", "caption": "a typo", "split": "trian"})
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(
        AnnotationError, match=r"ann\.jsonl:13: split 'trian' is not one of train, val, test \(did you mean 'train'\?\)"
    ):
        read_generic(path, videos, "train")
