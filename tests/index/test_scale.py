"""Search at scale: the approximate (FAISS IVF) first stage persisted in the index and kept up to date, memory-
mapped feature rows, fp16 storage. Each checked against exact / exhaustive computation."""

from __future__ import annotations

import importlib.util
import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_video_index import setup  # noqa: F401  (the module fixture: a saved model and a folder of synthetic videos)

from conftest import require_or_skip
from xclip_lightning.data.synthetic import Event, SyntheticSettings, render, write_video
from xclip_lightning.index import ann
from xclip_lightning.index.ranking import CoarseSearch
from xclip_lightning.index.store import load_features, mapped_features, read_manifest
from xclip_lightning.index.video_index import VideoIndex, VideoIndexError, resolve_device

HAS_FAISS = importlib.util.find_spec("faiss") is not None


def same_hits(a, b) -> None:
    """The same moments with the same scores (moments of identical files tie: their order is free)."""
    assert [h.score for h in a] == pytest.approx([h.score for h in b], abs=1e-4)
    canonical = [sorted((round(h.score, 3), h.path, h.start) for h in hits) for hits in (a, b)]
    assert canonical[0] == canonical[1]


def exact_first_stage(folder) -> VideoIndex:
    """The same index searched with the exact first stage (every video vector scored)."""
    index = VideoIndex.load(folder)
    entries = read_manifest(folder)["entries"]
    index._coarse = CoarseSearch(load_features(folder, entries, ("video",))["video"], "torch")
    return index


def test_the_ivf_stage_finds_what_exact_search_finds_and_merges_rows_it_does_not_hold():
    require_or_skip(HAS_FAISS, "faiss-cpu (a dev dependency)")
    generator = torch.Generator().manual_seed(0)
    video = F.normalize(torch.randn(8000, 32, generator=generator), dim=-1)
    query = torch.randn(5, 32, generator=generator)
    keys = np.arange(8000, dtype=np.int64) * 7 + 3  # any int64 ids
    held = np.arange(8000) % 10 != 0  # a version published mid-update: the IVF index lacks every tenth row
    index = ann.build(video[held], keys[held])
    nlist = ann.nlist_for(int(held.sum()))
    missing = torch.from_numpy(np.nonzero(~held)[0])
    stage = ann.ApproximateSearch(index, keys, nprobe=nlist, extra_rows=missing, extra_vectors=video[missing])
    exact = CoarseSearch(video, "torch").topk(query, 50)
    got = stage.topk(query, 50)
    # every list probed: the true top 50, held and missing rows merged, up to the fp16 rounding of stored vectors
    true_scores = torch.gather(query @ video.T, 1, exact)
    got_scores = torch.gather(query @ video.T, 1, got)
    assert torch.allclose(got_scores, true_scores, atol=2e-3)
    assert np.mean([len(set(a.tolist()) & set(b.tolist())) / 50 for a, b in zip(got, exact, strict=True)]) >= 0.96
    assert any(set(r.tolist()) & set(missing.tolist()) for r in got)  # the merge did contribute
    fast = ann.ApproximateSearch(index, keys, nprobe=8, extra_rows=missing, extra_vectors=video[missing])
    overlap = np.mean(
        [len(set(a.tolist()) & set(b.tolist())) / 50 for a, b in zip(fast.topk(query, 50), exact, strict=True)]
    )
    assert 0.2 < overlap < 1  # 8 of 339 lists on uniform random vectors (the hardest case): approximate, far above
    # chance (50 of 8000); bench/search.py measures the rate the full pipeline reaches on clustered features


def test_an_index_with_an_approximate_stage_is_updated_incrementally_and_ranks_like_exhaustive(setup, tmp_path):  # noqa: F811
    require_or_skip(HAS_FAISS, "faiss-cpu (a dev dependency)")
    model_dir, source, captions = setup
    videos = tmp_path / "videos"
    shutil.copytree(source, videos)
    out = tmp_path / "index"
    VideoIndex.build(model_dir, videos, out, workers=0, progress=False, window=2.0, approximate="on")
    first = read_manifest(out)["ann"]
    index = VideoIndex.load(out)
    assert index._coarse.backend == "faiss-ivf" and type(index.features.frames).__name__ == "MappedRows"
    exact = exact_first_stage(out).search(captions, k=5, candidates=8)
    for got, want in zip(index.search(captions, k=5, candidates=8), exact, strict=True):
        same_hits(got, want)  # one IVF list at this size: the same candidates as the exact first stage

    VideoIndex.build(model_dir, videos, out, workers=0, progress=False, window=2.0, approximate="on")
    assert read_manifest(out)["ann"] == first  # nothing changed: the IVF files are kept, not rewritten

    (videos / "clip0.mp4").unlink()
    events = [Event("white", "cross", "grows"), Event("yellow", "square", "moves up")]
    write_video(videos / "new clip.mp4", render(events, [(30, 20), (20, 30)], SyntheticSettings()), 10)
    VideoIndex.build(model_dir, videos, out, workers=0, progress=False, window=2.0, approximate="on")
    manifest = read_manifest(out)
    assert manifest["ann"]["trained_on"] == first["trained_on"] and manifest["ann"]["files"] != first["files"]
    held = np.load(out / "ann" / manifest["ann"]["files"][1])
    assert sorted(held.tolist()) == sorted(ann.entry_key(e["id"]) for e in manifest["entries"])
    assert sorted(p.name for p in (out / "ann").iterdir()) == sorted(manifest["ann"]["files"])  # old files gone
    index = VideoIndex.load(out)
    names = {e.path.rsplit("/", 1)[-1] for e in index.entries}
    assert "new clip.mp4" in names and "clip0.mp4" not in names
    reference = exact_first_stage(out)
    for candidates in (8, None):  # None: exhaustive over the memory-mapped rows
        got, want = index.search(captions, 5, candidates), reference.search(captions, 5, candidates)
        for a, b in zip(got, want, strict=True):
            same_hits(a, b)

    (out / "ann" / manifest["ann"]["files"][0]).write_bytes(b"garbage")  # corrupt: exact first stage, a warning
    with pytest.warns(RuntimeWarning, match="approximate first stage is not usable.*checksum"):
        fallback = VideoIndex.load(out)
    assert fallback._coarse.backend == "torch"
    for got, want in zip(
        fallback.search(captions, k=5, candidates=8), index.search(captions, k=5, candidates=8), strict=True
    ):
        same_hits(got, want)
    VideoIndex.build(model_dir, videos, out, workers=0, progress=False, window=2.0, approximate="off")
    assert read_manifest(out)["ann"] is None and not list((out / "ann").iterdir())


def test_memory_mapped_rows_and_fp16_storage(setup, tmp_path):  # noqa: F811
    model_dir, videos, captions = setup
    full = VideoIndex.build(model_dir, videos, tmp_path / "fp32", workers=0, progress=False, window=2.0)
    half = VideoIndex.build(model_dir, videos, tmp_path / "fp16", workers=0, progress=False, window=2.0, half=True)
    entries = json.loads((tmp_path / "fp32" / "manifest.json").read_text())["entries"]
    mapped, loaded = mapped_features(tmp_path / "fp32", entries), load_features(tmp_path / "fp32", entries)
    rows = torch.tensor([5, 0, 5, len(entries) - 1, 2])
    for key in ("video", "frames", "frame_mask"):
        assert torch.equal(mapped[key][rows], loaded[key][rows]), key
    half_features = VideoIndex.load(tmp_path / "fp16").features
    assert half_features.frames.dtype == torch.float32
    assert torch.allclose(half_features.frames, full.features.frames, atol=1e-3)  # fp16 rounding of unit vectors
    for got, want in zip(half.search(captions, k=3), full.search(captions, k=3), strict=True):
        # the same scores up to fp16 rounding (this untrained model scores moments within ~0.01 of each other, so
        # near-ties may swap; a trained one separates them by whole logits)
        assert [h.score for h in got] == pytest.approx([h.score for h in want], abs=0.05)
    with pytest.raises(ValueError, match="stores float16 features, not float32"):
        VideoIndex.build(model_dir, videos, tmp_path / "fp16", workers=0, progress=False, window=2.0)


def test_the_device_choice():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(VideoIndexError, match="no CUDA GPU is visible here"):
            resolve_device("cuda")
