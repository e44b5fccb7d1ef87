"""Start-up and update costs of a large index: open (``VideoIndex.load``), the first query after it, and
publishing one more video, on synthetic indexes of N moments written through the real store and writer.

    .venv/bin/python bench/index_load.py                                   # 10,000 and 100,000 moments
    .venv/bin/python bench/index_load.py --sizes 1000000 --scratch /tmp/ix  # the 1M row: written once, kept

Each index holds one-hour videos in 30 s moments (120 moments of 12 frames, D=512, fp16 rows, as ``index --half``
writes them), made-up paths and timestamps of the size real ones have, and from 100,000 moments the approximate
(FAISS IVF) first stage, as ``index`` builds it. Per size: ``load_s`` (open the index with a model whose fingerprint
is known: what ``search`` pays before its first query), ``first_query_s`` (the first ``search`` after it: the
first stage read and verified, the candidates' rows read and verified), ``publish_one_s`` (one more video of 120
moments published into the index: its shard written, one transaction, the approximate stage left as it is, as an
update that adds one video does), ``later_query_ms`` (the median of 20 more queries, each with other words), and the
database and shard sizes. ``--cold`` (root) drops the page cache before each size, so the open and the queries
read the database, the IVF file and the rows from the disk. Prints a table and one JSON line per size.
Targets (issue 17): at 1,000,000 moments load < 1 s, publish one < 2 s, first query < 1 s; load at 1M within 2x of
load at 10k.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from xclip_lightning.index.ann import update_approximate
from xclip_lightning.index.encode import model_fingerprint
from xclip_lightning.index.records import IndexEntry, entry_id
from xclip_lightning.index.store import DATABASE, IndexStore, writer_lock
from xclip_lightning.index.video_index import VideoIndex
from xclip_lightning.index.writer import IndexWriter
from xclip_lightning.model.tiny import build_tiny_clip
from xclip_lightning.model.xclip import XCLIP

D, T, PER_VIDEO = 512, 12, 120  # ViT-B's width, 12 frames a moment, one-hour videos in 30 s moments


def video_rows(
    video: int, generator: torch.Generator, dim: int = D
) -> list[tuple[IndexEntry, dict[str, torch.Tensor]]]:
    """The 120 moments of made-up video number ``video`` (features of width ``dim``)."""
    path = f"/data/videos/camera-{video // 100:03d}/recording-{video:06d}.mp4"
    size, mtime = 1_000_000_000 + video, 1_700_000_000_000_000_000 + video
    frames = F.normalize(torch.randn(PER_VIDEO, T, dim, generator=generator), dim=-1)
    rows = []
    for k in range(PER_VIDEO):
        start = 30.0 * k
        entry = IndexEntry(
            path, size, mtime, 3600.0, [start + 2.5 * j for j in range(T)], entry_id(path, size, mtime, k), k,
            PER_VIDEO, start, start + 30.0, thumb_sha256="0" * 64,
        )  # fmt: skip
        video_vector = F.normalize(frames[k].mean(0), dim=0)
        rows.append((entry, {"video": video_vector, "frames": frames[k], "frame_mask": torch.ones(T, dtype=bool)}))
    return rows


def drop_page_cache() -> None:
    """Write what is dirty to the disk and drop the page cache (root): what is read next comes from the disk."""
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def check_cold(parser: argparse.ArgumentParser, cold: bool) -> None:
    """``--cold`` refused in one line where the page cache cannot be dropped."""
    if cold and not os.access("/proc/sys/vm/drop_caches", os.W_OK):
        parser.error("--cold drops the page cache: it needs root (write access to /proc/sys/vm/drop_caches)")


def write_index(folder: Path, moments: int, fingerprint: str, dim: int = D, model: str | None = None) -> float:
    """An index of ``moments`` moments of width ``dim`` in ``folder`` through the real writer, recording ``model``;
    returns the seconds it took."""
    start = time.perf_counter()
    meta = {
        "model_fingerprint": fingerprint,
        "model": model,
        "videos": "/data/videos",
        "sampler": {"fps": 1.0, "max_frames": T, "mode": "timestamp", "image_size": 224},
        "window": 30.0,
        "feature_dtype": "float16",
    }
    folder.mkdir(parents=True)
    generator = torch.Generator().manual_seed(0)
    with writer_lock(folder):
        store = IndexStore.create(folder, meta)
        writer = IndexWriter(store, torch.float16, meta=meta)
        writer.record_files = lambda names: None  # no thumbnails are written here
        for video in range(-(-moments // PER_VIDEO)):  # whole videos: at least ``moments`` moments
            writer.add_video(video_rows(video, generator, dim))
        writer.flush()
        update_approximate(store, "auto")
        store.close()
    return time.perf_counter() - start


def measure(folder: Path, model: XCLIP, fingerprint: str) -> dict:
    start = time.perf_counter()
    index = VideoIndex.load(folder, model, fingerprint)
    load_s = time.perf_counter() - start
    start = time.perf_counter()
    hits = index.search("a red circle moves left", k=10)
    first_query_s = time.perf_counter() - start
    assert len(hits[0]) == 10
    start = time.perf_counter()
    index.search("a blue square appears", k=10)
    second_query_s = time.perf_counter() - start
    later = []
    for words in itertools.islice(itertools.permutations(["a", "red", "circle", "moves", "left"]), 1, 21):
        start = time.perf_counter()
        index.search(" ".join(words), k=10)
        later.append(time.perf_counter() - start)
    count = len(index)
    # publish one more video, as an update that adds one does
    generator = torch.Generator().manual_seed(count)
    start = time.perf_counter()
    with writer_lock(folder):
        store = IndexStore.open(folder)
        writer = IndexWriter(store, torch.float16, meta=store.meta)
        writer.record_files = lambda names: None
        writer.add_video(video_rows(10_000_000 + count, generator))
        writer.finish(Path("/data/videos"), "auto")
        store.close()
    publish_one_s = time.perf_counter() - start
    return {
        "moments": count,
        "load_s": round(load_s, 3),
        "first_query_s": round(first_query_s, 3),
        "second_query_s": round(second_query_s, 4),
        "later_query_ms": round(1e3 * statistics.median(later), 1),
        "publish_one_s": round(publish_one_s, 3),
        "first_stage": index._stage.backend if index._stage is not None else "exhaustive",
        "database_mb": round((folder / DATABASE).stat().st_size / 2**20, 1),
        "shards_mb": round(sum(p.stat().st_size for p in (folder / "shards").iterdir()) / 2**20),
    }


def main(argv: list[str]) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--scratch", type=Path, help="keep the indexes here (reused when present) instead of /tmp")
    parser.add_argument("--cold", action="store_true", help="drop the page cache before each size (root)")
    args = parser.parse_args(argv)
    check_cold(parser, args.cold)
    root = args.scratch or Path(tempfile.mkdtemp(prefix="xclip-load-"))
    results = []
    try:
        clip = build_tiny_clip(root / "clip", ["a red circle moves left"] * 20, seed=0, embed_dim=D)
        model = XCLIP.from_clip(str(clip), max_words=32, max_frames=T).eval()
        fingerprint = model_fingerprint(model)
        for size in args.sizes:
            folder = root / f"index-{size}"
            written = None
            if not (folder / DATABASE).is_file():
                shutil.rmtree(folder, ignore_errors=True)
                written = round(write_index(folder, size, fingerprint), 1)
            if args.cold:
                drop_page_cache()
            result = {**measure(folder, model, fingerprint), "write_s": written, "cold": args.cold}
            results.append(result)
            print(
                f"{result['moments']:>9,} moments: load {result['load_s']:.3f} s, first query "
                f"{result['first_query_s']:.3f} s ({result['first_stage']}), next query {result['second_query_s']:.4f}"
                f" s, 20 later {result['later_query_ms']} ms, publish one video {result['publish_one_s']:.3f} s; "
                f"database {result['database_mb']} MB, shards "
                f"{result['shards_mb']} MB" + (f"; written in {written} s" if written else "")
            )
            print(json.dumps({"bench": "index_load", **result}))
    finally:
        if args.scratch is None:
            shutil.rmtree(root, ignore_errors=True)
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
