"""Start-up cost of searching a large index: ``VideoIndex.load`` (manifest parse, every shard's checksum and row
ids, memory maps, the IVF stage) on a synthetic index of N moments written through the real writer.

    .venv/bin/python bench/index_load.py --moments 100000

Writes fp16 shards (``--half``) and the approximate first stage, as ``index`` does from 100,000 moments, with
made-up entries (paths, timestamps) of the size real ones have; loads it twice (cold-ish and warm page cache) and
reports the time of each part. Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from xclip_lightning.index.ann import update_approximate
from xclip_lightning.index.encode import model_fingerprint
from xclip_lightning.index.store import INDEX_VERSION, IndexWriter, check, entry_id, read_manifest
from xclip_lightning.index.video_index import VideoIndex
from xclip_lightning.model.tiny import build_tiny_clip
from xclip_lightning.model.xclip import XCLIP

D, T = 512, 12


def write_index(folder: Path, n: int, model: XCLIP) -> None:
    header = {
        "format_version": INDEX_VERSION,
        "model_fingerprint": model_fingerprint(model),
        "model_dir": None,
        "videos": "/data/videos",
        "sampler": {"fps": 1.0, "max_frames": T, "mode": "timestamp", "image_size": 224},
        "window": 30.0,
        "feature_dtype": "float16",
    }
    writer = IndexWriter(folder, header, [], {})
    generator = torch.Generator().manual_seed(0)
    per_video = 120  # one-hour videos, 30 s moments
    for first in range(0, n, 2048):
        rows = []
        for i in range(first, min(n, first + 2048)):
            video, k = divmod(i, per_video)
            path = f"/data/videos/camera-{video // 100:03d}/recording-{video:06d}.mp4"
            vid = entry_id(path, 1_000_000 + video, 1_700_000_000_000_000_000 + video, k)
            start = 30.0 * k
            entry = {
                "path": path, "size": 1_000_000 + video, "mtime_ns": 1_700_000_000_000_000_000 + video,
                "duration": 3600.0, "timestamps": [start + 2.5 * j for j in range(T)], "thumbnail": f"{vid}.jpg",
                "id": vid, "shard": "", "row": -1, "window": k, "moments": per_video, "start": start,
                "end": start + 30.0,
            }  # fmt: skip
            frames = F.normalize(torch.randn(T, D, generator=generator), dim=-1)
            features = {
                "video": F.normalize(frames.mean(0), dim=0),
                "frames": frames,
                "frame_mask": torch.ones(T, dtype=torch.bool),
            }
            rows.append((entry, features))
        writer.pending.extend(rows)
        writer.flush()  # a publish every 2048 moments, as a build does
    update_approximate(writer, "on")


def main(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--moments", type=int, default=100_000)
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="xclip-load-"))
    try:
        clip = build_tiny_clip(root / "clip", ["a red circle moves left"] * 20, seed=0, embed_dim=D)  # ViT-B's 512
        model = XCLIP.from_clip(str(clip), max_words=32, max_frames=T)
        start = time.perf_counter()
        write_index(root / "index", args.moments, model)
        build_s = time.perf_counter() - start
        manifest_mb = (root / "index" / "manifest.json").stat().st_size / 2**20
        shards_mb = sum(p.stat().st_size for p in (root / "index" / "shards").iterdir()) / 2**20
        runs = []
        for _ in range(2):
            start = time.perf_counter()
            manifest = read_manifest(root / "index")
            parse_s = time.perf_counter() - start
            start = time.perf_counter()
            check(root / "index", manifest)
            check_s = time.perf_counter() - start
            start = time.perf_counter()
            index = VideoIndex.load(root / "index", model=model)
            load_s = time.perf_counter() - start
            start = time.perf_counter()
            index.search("a red circle moves left", k=10)
            first_query_s = time.perf_counter() - start
            runs.append({"parse_manifest_s": round(parse_s, 2), "check_s": round(check_s, 2),
                         "load_s": round(load_s, 2), "first_query_s": round(first_query_s, 3)})  # fmt: skip
        result = {
            "bench": "index_load",
            "moments": args.moments,
            "write_s": round(build_s, 1),
            "manifest_mb": round(manifest_mb, 1),
            "shards_mb": round(shards_mb, 1),
            "runs": runs,
        }
        print(
            f"{args.moments} moments: manifest {manifest_mb:.0f} MB, shards {shards_mb:.0f} MB (fp16), written in "
            f"{build_s:.0f} s"
        )
        for i, run in enumerate(runs):
            print(f"  load {i + 1}: {run['load_s']} s in all (manifest parse {run['parse_manifest_s']} s, checks "
                  f"{run['check_s']} s), first query {run['first_query_s']} s")  # fmt: skip
        print(json.dumps(result))
        return result
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1:])
