"""Each benchmark in miniature, in its exact released layout and naming, carrying the quirks of the real files
(../shared/real-data-notes.md): uncaptioned ActivityNet ids, DiDeMo ids ending in .mp4 / .avi / a bare dot with
videos stored under both naming conventions, multi-caption MSVD evaluation, duplicated LSMDC clip ids, raw web
text in captions. Videos are tiny real H.264 files, written once per name pattern and copied.

Each builder returns a ``Miniature``: the annotation folder, the video folder, the videos each split needs, and the
counts a reader must give.
"""

from __future__ import annotations

import json
import pickle
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from xclip_lightning.data.synthetic import write_video

FPS = 4
SECONDS = 2


@dataclass
class Miniature:
    name: str  # the configs/<name>/ folder
    annotations: Path
    videos: Path
    split_videos: dict[str, list[Path]] = field(default_factory=dict)  # the files each split reads
    expected: dict[str, int] = field(default_factory=dict)  # records per split a reader must give


_TEMPLATE: dict[int, Path] = {}


def video(path: Path, seed: int, template_dir: Path) -> Path:
    """A 2 s, 32x32 H.264 file at ``path`` (any name: the container is found from the bytes, as with the real
    re-encoded and original files)."""
    if seed not in _TEMPLATE or not _TEMPLATE[seed].is_file():
        rng = np.random.default_rng(seed)
        frames = np.repeat(rng.integers(0, 255, (1, 32, 32, 3), dtype=np.uint8), FPS * SECONDS, axis=0)
        frames[:, :, : 4 * (seed % 8 + 1)] = 255  # a distinct white band per video
        template_dir.mkdir(parents=True, exist_ok=True)
        _TEMPLATE[seed] = template_dir / f"template{seed}.mp4"
        write_video(_TEMPLATE[seed], frames, FPS)
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_TEMPLATE[seed], path)
    return path


def msrvtt(root: Path) -> Miniature:
    """msrvtt_data/ (CLIP4Clip release) + MSRVTT/videos/all/videoN.mp4; val = test = JSFUSION."""
    ann, vids = root / "msrvtt_data", root / "MSRVTT" / "videos" / "all"
    ann.mkdir(parents=True)
    train, test = [f"video{i}" for i in range(5)], ["video9770", "video7020", "video9731"]
    raw = ["a man &amp; a woman talk", "someone\u2019s cooking", "a cat\u00a0 sleeps", "cafÃ© scene", "a dog runs"]
    sentences = [
        {"video_id": vid, "caption": f"{raw[i % len(raw)]} {c}", "sen_id": 20 * i + c}
        for i, vid in enumerate(train + test)
        for c in range(3)
    ]
    videos_json = [
        {"video_id": vid, "url": f"https://youtube.com/watch?v={vid}", "id": i} for i, vid in enumerate(train)
    ]
    (ann / "MSRVTT_data.json").write_text(json.dumps({"sentences": sentences, "videos": videos_json}))
    (ann / "MSRVTT_train.9k.csv").write_text("video_id\n" + "".join(f"{v}\n" for v in train))
    (ann / "MSRVTT_train.7k.csv").write_text("video_id\n" + "".join(f"{v}\n" for v in train[:3]))
    rows = [f"ret{i},msr{v[5:]},{v},a person is talking about {v}" for i, v in enumerate(test)]
    (ann / "MSRVTT_JSFUSION_test.csv").write_text("key,vid_key,video_id,sentence\n" + "\n".join(rows) + "\n")
    templates = root / ".templates"
    files = {v: video(vids / f"{v}.mp4", i, templates) for i, v in enumerate(train + test)}
    mini = Miniature("msrvtt", ann, vids)
    mini.split_videos = {"train": [files[v] for v in train], "val": [files[v] for v in test]}
    mini.split_videos["test"] = mini.split_videos["val"]
    mini.expected = {"train": 5, "val": 3, "test": 3}
    return mini


def msvd(root: Path) -> Miniature:
    """msvd_data/ (raw-captions.pkl of token lists, YouTube-name ids) + YouTubeClips/<id>.avi; every caption kept."""
    ann, vids = root / "msvd_data", root / "YouTubeClips"
    ann.mkdir(parents=True)
    ids = {
        "train": ["-4wsuPCjDBc_5_15", "-7KMZQEsJW4_205_208", "-8y1Q0rA3n8_108_115", "-AwoiGR6c8M_10_14"],
        "val": ["-_hbPLsZvvo_5_8", "-pUwIypksfE_13_23", "00jrXRMlZOY_0_10"],
        "test": ["04Gt01vatkk_248_265", "0bSz70pYAP0_5_15", "0lh_UWF9ZP4_27_31"],
    }
    captions = {
        vid: [["a", "man", "is", "playing", "a", "guitar", str(c)], ["someone", "plays", str(k)]] * 3
        for k, vids_ in enumerate(ids.values())
        for c, vid in enumerate(vids_)
    }
    (ann / "raw-captions.pkl").write_bytes(pickle.dumps(captions))
    for split, names in ids.items():
        (ann / f"{split}_list.txt").write_text("".join(f"{n}\n" for n in names))
    templates = root / ".templates"
    mini = Miniature("msvd", ann, vids)
    seed = 0
    for split, names in ids.items():
        mini.split_videos[split] = []
        for name in names:
            mini.split_videos[split].append(video(vids / f"{name}.avi", seed, templates))
            seed += 1
    mini.expected = {"train": 4, "val": 3, "test": 3}  # 6 captions each: the multi-caption protocol
    return mini


def lsmdc(root: Path) -> Miniature:
    """LSMDC16_*.csv (six tab fields, no header; a clip listed twice in train and in test) + avi/<movie>/<clip>.avi."""
    ann, vids = root / "lsmdc", root / "avi"
    ann.mkdir(parents=True)
    movie = "0001_American_Beauty"
    clips = [f"{movie}_00.0{i}.51.926-00.0{i}.54.129" for i in range(8)]
    row = "{clip}\t00.00.51.926\t00.00.54.129\t00.00.51.000\t00.00.55.000\t{sentence}"
    split_clips = {"train": [*clips[:4], clips[1]], "val": clips[4:6], "test": [*clips[6:8], clips[6]]}
    files = {"train": "LSMDC16_annos_training.csv", "val": "LSMDC16_annos_val.csv"}
    files["test"] = "LSMDC16_challenge_1000_publictect.csv"
    for split, names in split_clips.items():
        lines = [row.format(clip=c, sentence=f"SOMEONE walks in, line {i}.") for i, c in enumerate(names)]
        (ann / files[split]).write_text("\n".join(lines) + "\n")
    templates = root / ".templates"
    paths = {c: video(vids / movie / f"{c}.avi", i, templates) for i, c in enumerate(clips)}
    mini = Miniature("lsmdc", ann, vids)
    mini.split_videos = {s: sorted({paths[c] for c in names}) for s, names in split_clips.items()}
    mini.expected = {"train": 5, "val": 2, "test": 3}  # one record per line, duplicated clip ids included
    return mini


def didemo(root: Path) -> Miniature:
    """{split}_list.txt + {split}_data.json; ids keep their extension (.mp4, .avi, .mov, a bare dot); the videos
    are stored under both conventions: the id itself, or re-encoded as <id>.mp4."""
    ann, vids = root / "didemo", root / "didemo_videos"
    ann.mkdir(parents=True)
    ids = {
        "train": [
            "10015567@N08_3655084291_d8b58466fa.mov",
            "10218698@N06_2860643088_cc3a272282.mp4",
            "10052357@N03_7585070382_5762149bfc.",
            "10087595@N04_4379823961_dc2ab8d7f7.avi",
        ],
        "val": ["11567444@N04_2460585519_e9d0a5b8b5.mp4", "12090392@N02_13482799053_87ef417396.mov"],
        "test": [
            "13276452@N07_4362396478_a9b3d6da2e.mp4",
            "14276451@N08_5390124387_8fcb1ce6ef.avi",
            "28511233@N04_4004211208_c1e6a6b5ff.",
        ],
    }
    templates = root / ".templates"
    mini = Miniature("didemo", ann, vids)
    seed = 0
    for split, names in ids.items():
        (ann / f"{split}_list.txt").write_text("".join(f"{n}\n" for n in names))
        data = []
        for k, name in enumerate(names):
            for d in range(2):  # several descriptions per video, joined into one paragraph
                data.append({"video": name, "description": f"the girl jumps {d}", "times": [[d, d + 1]]})
            data.append({"video": f"not_in_split_{k}.mov", "description": "x", "times": [[0, 0]]})
        (ann / f"{split}_data.json").write_text(json.dumps(data))
        mini.split_videos[split] = []
        for k, name in enumerate(names):  # alternate the two naming conventions users hold
            file = vids / (name if k % 2 == 0 else f"{name}.mp4")
            mini.split_videos[split].append(video(file, seed, templates))
            seed += 1
    (ann / "test_list.txt").write_text((ann / "test_list.txt").read_text() + "no_description_42.avi\n")
    mini.expected = {"train": 4, "val": 2, "test": 3}
    return mini


def activitynet(root: Path) -> Miniature:
    """train_ids.json / val_ids.json list ids of which some have no captions in train.json / val_1.json."""
    ann, vids = root / "activitynet", root / "anet_videos"
    ann.mkdir(parents=True)
    ids = {
        "train": ["v_QOlSCBRmfWY", "v_ehGHCYKzyZ8", "v_nwznKOuZM7w", "v_ogQozSI5V8U"],
        "val": ["v_uqiMw7tQ1Cc", "v_bXdq2zI1Ms0", "v_FsS_NCZEfaI"],
    }
    uncaptioned = {"train": ["v_D_XMD02v690", "v_xx0fNXCrx7I"], "val": ["v_0dkIbKXXFzI"]}
    files = {"train": ("train_ids.json", "train.json"), "val": ("val_ids.json", "val_1.json")}
    templates = root / ".templates"
    mini = Miniature("activitynet", ann, vids)
    seed = 0
    for split, names in ids.items():
        ids_file, captions_file = files[split]
        listed = names[:2] + uncaptioned[split] + names[2:]
        (ann / ids_file).write_text(json.dumps(listed))
        captions = {
            n: {"duration": 2.0, "timestamps": [[0, 1], [1, 2]], "sentences": [f"A man runs {k}.", " He falls. "]}
            for k, n in enumerate(names)
        }
        (ann / captions_file).write_text(json.dumps(captions))
        mini.split_videos[split] = []
        for k, name in enumerate(names):
            ext = ".mp4" if k % 2 == 0 else ".mkv"
            mini.split_videos[split].append(video(vids / f"{name.removeprefix('v_')}{ext}", seed, templates))
            seed += 1
    mini.split_videos["test"] = mini.split_videos["val"]
    mini.expected = {"train": 4, "val": 3, "test": 3}
    return mini


BUILDERS = {"msrvtt": msrvtt, "msvd": msvd, "lsmdc": lsmdc, "didemo": didemo, "activitynet": activitynet}
