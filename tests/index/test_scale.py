"""Search at scale: the approximate (FAISS IVF) first stage persisted in the index and kept up to date, memory-
mapped feature rows, fp16 storage. Each checked against exact / exhaustive computation."""

from __future__ import annotations

import importlib.util
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
from xclip_lightning.index.store import IndexStore
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
    index.exact_first_stage = True
    return index


def ann_record(folder) -> dict | None:
    return IndexStore.open(folder).meta.get("ann")


def test_the_ivf_stage_finds_what_exact_search_finds_and_merges_rows_it_does_not_hold():
    require_or_skip(HAS_FAISS, "faiss-cpu (a dev dependency)")
    generator = torch.Generator().manual_seed(0)
    video = F.normalize(torch.randn(8000, 32, generator=generator), dim=-1)
    query = torch.randn(5, 32, generator=generator)
    keys = np.arange(8000, dtype=np.int64) * 7 + 3  # any int64 ids
    held = np.arange(8000) % 10 != 0  # a version published mid-update: the IVF index lacks every tenth row
    index = ann.build(video[held], keys[held])
    nlist = ann.nlist_for(int(held.sum()))
    missing = np.nonzero(~held)[0]
    stage = ann.ApproximateSearch(index, keys[missing], video[missing], nprobe=nlist)
    exact = CoarseSearch(video, "torch").topk(query, 50)
    got = torch.stack([torch.from_numpy(np.searchsorted(keys, stage.topk(q, 50))) for q in query])
    # every list probed: the true top 50, held and missing rows merged, up to the fp16 rounding of stored vectors
    true_scores = torch.gather(query @ video.T, 1, exact)
    got_scores = torch.gather(query @ video.T, 1, got)
    assert torch.allclose(got_scores, true_scores, atol=2e-3)
    assert np.mean([len(set(a.tolist()) & set(b.tolist())) / 50 for a, b in zip(got, exact, strict=True)]) >= 0.96
    assert any(set(r.tolist()) & set(missing.tolist()) for r in got)  # the merge did contribute
    fast = ann.ApproximateSearch(index, keys[missing], video[missing], nprobe=8)
    fast_rows = [np.searchsorted(keys, fast.topk(q, 50)) for q in query]
    overlap = np.mean([len(set(a.tolist()) & set(b.tolist())) / 50 for a, b in zip(fast_rows, exact, strict=True)])
    assert 0.2 < overlap < 1  # 8 of 339 lists on uniform random vectors (the hardest case): approximate, far above
    # chance (50 of 8000); bench/search.py measures the rate the full pipeline reaches on clustered features


def test_an_index_with_an_approximate_stage_is_updated_incrementally_and_ranks_like_exhaustive(
    setup,  # noqa: F811
    tmp_path,
    monkeypatch,
):
    require_or_skip(HAS_FAISS, "faiss-cpu (a dev dependency)")
    model_dir, source, captions = setup
    videos = tmp_path / "videos"
    shutil.copytree(source, videos)
    out = tmp_path / "index"
    VideoIndex.build(model_dir, videos, out, workers=0, progress=False, window=2.0, approximate="on")
    first = ann_record(out)
    index = VideoIndex.load(out)
    exact = exact_first_stage(out).search(captions, k=5, candidates=8)
    for got, want in zip(index.search(captions, k=5, candidates=8), exact, strict=True):
        same_hits(got, want)  # one IVF list at this size: the same candidates as the exact first stage
    assert index._stage.backend == "faiss-ivf"

    VideoIndex.build(model_dir, videos, out, workers=0, progress=False, window=2.0, approximate="on")
    assert ann_record(out) == first  # nothing changed: the IVF file is kept, not rewritten

    def change_videos(name: str, events: list[Event]) -> None:
        sorted(videos.glob("clip*.mp4"))[0].unlink()
        write_video(videos / name, render(events, [(30, 20), (20, 30)], SyntheticSettings()), 10)

    # a few changes: the IVF file stays, the new moments are scored exactly beside it, the dropped ones skipped
    change_videos("new clip.mp4", [Event("white", "cross", "grows"), Event("yellow", "square", "moves up")])
    VideoIndex.build(model_dir, videos, out, workers=0, progress=False, window=2.0, approximate="on")
    assert ann_record(out) == first
    for candidates in (8, None):  # None: exhaustive
        got, want = (
            VideoIndex.load(out).search(captions, 5, candidates),
            exact_first_stage(out).search(captions, 5, candidates),
        )
        for a, b in zip(got, want, strict=True):
            same_hits(a, b)
    names = {e.path.rsplit("/", 1)[-1] for e in VideoIndex.load(out).entries}
    assert "new clip.mp4" in names and "clip0.mp4" not in names

    # past ANN_REFRESH changes: the IVF index is updated (vectors removed and added, not retrained)
    monkeypatch.setattr(ann, "ANN_REFRESH", 1)
    change_videos("another clip.mp4", [Event("red", "circle", "shrinks"), Event("blue", "triangle", "moves left")])
    VideoIndex.build(model_dir, videos, out, workers=0, progress=False, window=2.0, approximate="on")
    record = ann_record(out)
    assert record["trained_on"] == first["trained_on"] and record["file"] != first["file"]
    store = IndexStore.open(out)
    assert record["rows"] == store.count() and not store.db.execute("SELECT 1 FROM entries WHERE in_ann = 0").fetchall()
    assert sorted(p.name for p in (out / "ann").iterdir()) == [record["file"]]  # the old file is gone
    index, reference = VideoIndex.load(out), exact_first_stage(out)
    for candidates in (8, None):
        for a, b in zip(index.search(captions, 5, candidates), reference.search(captions, 5, candidates), strict=True):
            same_hits(a, b)

    del index  # it maps the IVF file, which is about to be damaged by hand
    ivf = out / "ann" / record["file"]
    data = bytearray(ivf.read_bytes())
    data[len(data) // 2] ^= 0xFF  # the same size: found by the checksum computed in the background
    ivf.write_bytes(bytes(data))
    flipped = VideoIndex.load(out)
    with pytest.warns(RuntimeWarning, match="approximate first stage is not usable.*does not match its checksum"):
        flipped.search(captions[0], k=5, candidates=8)  # served while the checksum runs (the rows are verified)
        if flipped._stage.backend == "faiss-ivf":
            flipped._stage.checksum.join()
            flipped.search(captions[0], k=5, candidates=8)
    assert flipped._stage.backend == "torch"
    ivf.write_bytes(b"garbage")  # truncated: the exact first stage at once, a warning
    fallback = VideoIndex.load(out)
    with pytest.warns(RuntimeWarning, match="approximate first stage is not usable.*checksum"):
        fallback_hits = fallback.search(captions, k=5, candidates=8)
    assert fallback._stage.backend == "torch"
    for got, want in zip(fallback_hits, reference.search(captions, k=5, candidates=8), strict=True):
        same_hits(got, want)
    VideoIndex.build(model_dir, videos, out, workers=0, progress=False, window=2.0, approximate="off")
    assert ann_record(out) is None and not list((out / "ann").iterdir())


def test_fp16_storage(setup, tmp_path):  # noqa: F811
    model_dir, videos, captions = setup
    full = VideoIndex.build(model_dir, videos, tmp_path / "fp32", workers=0, progress=False, window=2.0)
    half = VideoIndex.build(model_dir, videos, tmp_path / "fp16", workers=0, progress=False, window=2.0, half=True)
    half_features = VideoIndex.load(tmp_path / "fp16").features
    assert half_features.frames.dtype == torch.float32
    assert torch.allclose(half_features.frames, full.features.frames, atol=1e-3)  # fp16 rounding of unit vectors
    for got, want in zip(half.search(captions, k=3), full.search(captions, k=3), strict=True):
        # the same scores up to fp16 rounding (this untrained model scores moments within ~0.01 of each other, so
        # near-ties may swap; a trained one separates them by whole logits)
        assert [h.score for h in got] == pytest.approx([h.score for h in want], abs=0.05)
    with pytest.raises(ValueError, match="stores float16 features, not float32: add --half"):
        VideoIndex.build(model_dir, videos, tmp_path / "fp16", workers=0, progress=False, window=2.0)


def test_the_device_choice():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(VideoIndexError, match="no CUDA GPU is visible here"):
            resolve_device("cuda")
