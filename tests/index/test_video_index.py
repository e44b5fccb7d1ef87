"""Searching your own videos: index a folder, update it, query it, refuse a wrong index, the CLI and the HTML page."""

from __future__ import annotations

import base64
import importlib.util
import itertools
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import require_or_skip, synthetic_model
from xclip_lightning.cli import main
from xclip_lightning.index.video_index import VideoIndex, VideoIndexError
from xclip_lightning.model.xclip import XCLIP


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, Path, list[str]]:
    """A saved XCLIP model and a folder of 6 synthetic videos (one in a subfolder) plus an unreadable file."""
    root = tmp_path_factory.mktemp("search")
    _, annotations = synthetic_model(root, videos=6, seed=11, max_frames=6)
    videos = root / "videos"
    (videos / "sub").mkdir(parents=True)
    captions = []
    for i, line in enumerate(annotations.read_text().splitlines()):
        item = json.loads(line)
        shutil.copy(annotations.parent / item["video"], videos / ("sub" if i == 5 else "") / f"clip{i}.mp4")
        captions.append(item["captions"][0])
    (videos / "broken.mp4").write_bytes(b"\x00" * 500)
    return root / "model", videos, captions


def test_index_search_and_incremental_update(setup, tmp_path):
    model_dir, videos, captions = setup
    index = VideoIndex.build(model_dir, videos, tmp_path / "index", workers=1, progress=False)
    assert len(index.entries) == 6 and index.encoded == 6
    assert (
        list(index.failures) == [str(videos / "broken.mp4")]
        and "VideoDecodeError" in index.failures[str(videos / "broken.mp4")]
    )
    assert str(videos / "sub" / "clip5.mp4") in [e.path for e in index.entries]  # found recursively
    assert index.features.frames.shape == (6, 6, 64) and all(
        (tmp_path / "index" / "thumbs" / e.thumbnail).is_file() for e in index.entries
    )

    two_stage = index.search(captions[:2], k=3, candidates=2)
    exhaustive = index.search(captions[:2], k=6, candidates=None)
    for hits in exhaustive:
        assert [h.rank for h in hits] == list(range(1, 7))
        assert all(a.score >= b.score for a, b in itertools.pairwise(hits))
    # the two stages re-score their candidates with the same full score
    full = {h.path: h.score for h in exhaustive[0]}
    assert all(h.score == pytest.approx(full[h.path], abs=1e-5) for h in two_stage[0])
    # ... and that score is XCLIP's own
    model = index.model
    tokens = model.tokenize(captions[:1])
    with torch.no_grad():
        direct = model.score_matrix(model.encode_text(tokens.input_ids, tokens.word_mask), index.features)[0]
    top = exhaustive[0][0]
    assert top.score == pytest.approx(direct.max().item(), abs=1e-5)
    assert 0 <= top.best_frame < len(top.timestamps) and top.best_time == top.timestamps[top.best_frame]

    # re-run: nothing new; then one changed file and one new file are the only ones encoded
    assert VideoIndex.build(model_dir, videos, tmp_path / "index", workers=1, progress=False).encoded == 0
    shutil.copy(videos / "clip1.mp4", videos / "clip0.mp4")
    os.utime(videos / "clip0.mp4", ns=(10**18, 10**18))
    shutil.copy(videos / "clip2.mp4", videos / "sub" / "new.mp4")
    try:
        updated = VideoIndex.build(model_dir, videos, tmp_path / "index", workers=1, progress=False)
    finally:
        (videos / "sub" / "new.mp4").unlink()
    assert updated.encoded == 2 and len(updated.entries) == 7
    reloaded = VideoIndex.load(tmp_path / "index")
    assert [e.path for e in reloaded.entries] == [e.path for e in updated.entries]
    row = {e.path: i for i, e in enumerate(reloaded.entries)}
    assert torch.equal(
        reloaded.features.video[row[str(videos / "clip0.mp4")]], reloaded.features.video[row[str(videos / "clip1.mp4")]]
    )


def test_wrong_model_corrupt_features_and_other_settings_are_refused(setup, tmp_path):
    model_dir, videos, _ = setup
    VideoIndex.build(model_dir, videos, tmp_path / "index", workers=0, progress=False)
    other = XCLIP.from_pretrained(model_dir)
    with torch.no_grad():
        other.head.global_mat_weight.mul_(1.01)
    with pytest.raises(VideoIndexError, match="built by another model"):
        VideoIndex.load(tmp_path / "index", model=other)
    with pytest.raises(VideoIndexError, match="built with SamplerSettings"):
        VideoIndex.build(model_dir, videos, tmp_path / "index", fps=2.0, workers=0, progress=False)
    (shard,) = (tmp_path / "index" / "shards").glob("*.safetensors")
    data = bytearray(shard.read_bytes())
    data[-5] ^= 0xFF
    shard.write_bytes(bytes(data))
    index = VideoIndex.load(tmp_path / "index")  # opening reads no shard: it is checked when a query reads it
    with pytest.raises(VideoIndexError, match=r"does not match its checksum .*Repair: `xclip-lightning index --verify"):
        index.search(["a red circle"], k=3, candidates=None)
    with pytest.raises(SystemExit):  # --verify reports it, drops the damaged moments ...
        main(["index", "--verify", str(tmp_path / "index")])
    assert len(VideoIndex.load(tmp_path / "index")) == 0
    repaired = VideoIndex.build(model_dir, videos, tmp_path / "index", workers=0, progress=False)
    assert repaired.encoded == 6 and len(repaired.search(["a red circle"], k=6, candidates=None)[0]) == 6


def test_cli_export_index_search_json_and_html(setup, tmp_path, capsys):
    model_dir, videos, captions = setup
    main(["index", "--model", str(model_dir), "--videos", str(videos), "--out", str(tmp_path / "ix"), "--workers", "0"])
    out = capsys.readouterr().out
    assert "6 videos indexed" in out and "broken.mp4" in out
    main(["search", "--index", str(tmp_path / "ix"), captions[0], captions[3], "--top-k", "4", "--json"])
    results = json.loads(capsys.readouterr().out)
    assert [r["query"] for r in results] == [captions[0], captions[3]] and len(results[0]["results"]) == 4
    page = tmp_path / "results.html"
    main(["search", "--index", str(tmp_path / "ix"), captions[0], "--top-k", "5", "--html", str(page)])
    text = page.read_text()
    assert text.count('<li class="hit">') == 5
    for data in re.findall(r'src="data:image/jpeg;base64,([^"]+)"', text):
        strip = decode_jpeg(base64.b64decode(data))
        assert strip.shape[1] == 64 and strip.shape[2] % 64 == 0  # one 64 px thumbnail per sampled frame


def test_the_results_page_loads_in_headless_chromium(setup, tmp_path):
    require_or_skip(CHROMIUM is not None, "Chromium (apt-get install chromium)")
    model_dir, videos, captions = setup
    main(["index", "--model", str(model_dir), "--videos", str(videos), "--out", str(tmp_path / "ix"), "--workers", "0"])
    page = tmp_path / "results.html"
    main(["search", "--index", str(tmp_path / "ix"), captions[0], "--top-k", "5", "--html", str(page)])
    check_in_chromium(page, expected_hits=5, tmp_path=tmp_path)


def test_export_from_a_lightning_checkpoint(setup, tmp_path):
    import lightning as L

    from xclip_lightning.lightning_module import XCLIPRetrieval

    clip = setup[0].parent / "clip"
    module = XCLIPRetrieval(str(clip), max_words=32, max_frames=6)
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, max_steps=0)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    main(["export", "--ckpt_path", str(tmp_path / "m.ckpt"), "--out", str(tmp_path / "exported")])
    loaded = XCLIP.from_pretrained(tmp_path / "exported")
    for key, value in module.model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def chromium_flags(tmp_path: Path) -> list[str]:
    return [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--enable-logging=stderr",
        "--v=0",
        "--virtual-time-budget=3000",
    ]


def check_in_chromium(page: Path, expected_hits: int, tmp_path: Path) -> None:
    """Headless Chromium loads the page with no console error and shows ``expected_hits`` results."""
    flags = chromium_flags(tmp_path)
    run = subprocess.run([CHROMIUM, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    console = [line for line in run.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert not console, console
    assert run.stdout.count('<li class="hit">') == expected_hits
    shot = subprocess.run(
        [CHROMIUM, *flags, f"--screenshot={tmp_path / 'page.png'}", "--window-size=1000,900", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shot.returncode == 0 and (tmp_path / "page.png").stat().st_size > 10_000


def test_faiss_and_torch_coarse_stages_pick_the_same_videos():
    require_or_skip(importlib.util.find_spec("faiss") is not None, "faiss-cpu (a dev dependency)")
    from xclip_lightning.index.ranking import CoarseSearch

    generator = torch.Generator().manual_seed(0)
    video = torch.nn.functional.normalize(torch.randn(5000, 64, generator=generator), dim=-1)
    query = torch.randn(7, 64, generator=generator)
    with_faiss, with_torch = CoarseSearch(video, "faiss"), CoarseSearch(video, "torch")
    assert (with_faiss.backend, with_torch.backend) == ("faiss", "torch")
    assert torch.equal(with_faiss.topk(query, 50), with_torch.topk(query, 50))


def test_search_for_scripts_min_score_jsonl_and_stable_ids(setup, tmp_path, capsys):
    model_dir, videos, captions = setup
    main(["index", "--model", str(model_dir), "--videos", str(videos), "--out", str(tmp_path / "ix"), "--workers", "0"])
    capsys.readouterr()
    main(["search", "--index", str(tmp_path / "ix"), captions[0], captions[1], "--top-k", "6", "--jsonl"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 12 and [x["rank"] for x in lines[:6]] == [1, 2, 3, 4, 5, 6]
    assert {x["query"] for x in lines} == {captions[0], captions[1]}
    scores = sorted(x["score"] for x in lines if x["query"] == captions[0])
    threshold = scores[3]  # keeps the best three of the first query
    main(
        [
            "search",
            "--index",
            str(tmp_path / "ix"),
            captions[0],
            "--top-k",
            "6",
            "--jsonl",
            "--min-score",
            str(threshold),
        ]
    )
    kept = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(kept) == 3 and all(x["score"] >= threshold for x in kept)
    # ids stay when the index is rebuilt and when a file changes (a new version of the same video)
    ids = {x["path"]: x["id"] for x in lines}
    os.utime(videos / "clip1.mp4", ns=(10**18 + 5, 10**18 + 5))
    main(["index", "--model", str(model_dir), "--videos", str(videos), "--out", str(tmp_path / "ix"), "--workers", "0"])
    capsys.readouterr()
    main(["search", "--index", str(tmp_path / "ix"), captions[0], "--top-k", "6", "--jsonl"])
    again = {x["path"]: x["id"] for x in map(json.loads, capsys.readouterr().out.splitlines())}
    assert again == ids and len(set(ids.values())) == 6


def test_zero_shot_search_with_any_clip_is_clip4clips_mean_of_frames_cosine(setup, tmp_path, capsys):
    """Index with a plain CLIP folder (no X-CLIP training): the score is logit_scale x cosine(sentence, mean of the
    normalised frame features), computed here with transformers' CLIP directly."""
    from transformers import AutoTokenizer, CLIPModel

    from xclip_lightning.data.frame_cache import SamplerSettings, VideoSource, decode_video
    from xclip_lightning.index.video_index import ZERO_SHOT
    from xclip_lightning.inputs.transforms import normalize

    model_dir, videos, captions = setup
    clip_dir = model_dir.parent / "clip"
    main(["index", "--model", str(clip_dir), "--videos", str(videos), "--out", str(tmp_path / "zs"), "--workers", "0"])
    capsys.readouterr()
    main(["search", "--index", str(tmp_path / "zs"), captions[2], "--top-k", "6", "--json"])
    (result,) = json.loads(capsys.readouterr().out)
    assert result["scorer"] == ZERO_SHOT and len(result["results"]) == 6

    clip = CLIPModel.from_pretrained(clip_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(clip_dir)
    ids = [
        tokenizer.bos_token_id,
        *tokenizer(captions[2], add_special_tokens=False)["input_ids"],
        tokenizer.eos_token_id,
    ]
    with torch.no_grad():
        hidden = clip.text_model(input_ids=torch.tensor([ids])).last_hidden_state[0, -1]  # the EOT slot
        sentence = F.normalize(clip.text_projection(hidden), dim=-1)
        for hit in result["results"]:
            settings = SamplerSettings(1.0, 6, "timestamp", clip.config.vision_config.image_size)
            frames = decode_video(VideoSource(Path(hit["path"])), settings).frames
            pooled = clip.vision_model(pixel_values=normalize(frames)).pooler_output  # post-layernorm CLS
            features = F.normalize(clip.visual_projection(pooled), dim=-1)
            video = F.normalize(features.mean(0), dim=-1)
            expected = clip.logit_scale.exp() * (sentence @ video)
            assert hit["score"] == pytest.approx(expected.item(), abs=1e-3), hit["path"]


def decode_jpeg(data: bytes) -> torch.Tensor:
    """JPEG bytes -> uint8 [3,H,W] (Pillow)."""
    import io

    import numpy as np
    from PIL import Image

    return torch.from_numpy(np.array(Image.open(io.BytesIO(data)).convert("RGB"))).permute(2, 0, 1)
