"""``xclip-lightning serve`` against the one-shot ``search`` command, side by side on the same indexes.

    .venv/bin/python bench/serve.py                         # 10,000 and 100,000 moments (about 5 minutes)
    .venv/bin/python bench/serve.py --sizes 10000 --queries 20

Per size, an index of one-hour videos in 30 s moments written through the real writer (``index_load.py``'s, with
the tiny model's 64-d features and 12 frames a moment; from 100,000 moments the FAISS IVF first stage), then:
``ready_s`` (spawn to the "serving" line: imports, model, index, a warm-up query), the latency of ``/api/search``
(p50, p99, from the client: HTTP included) and queries/s for 1 client and for 32 concurrent ones, the one-shot
``search`` command on the same index (spawn to exit), and where a query's time goes, measured in-process on the
same index: text encoding, the first stage, reading and re-scoring the candidates with the full X-CLIP score, and
the rest of ``VideoIndex.search``; HTTP is the served p50 minus the in-process search. Prints a table and one
JSON line per size. Aims (issue 20): p50 under 50 ms at 100,000 moments for one client, ready in under 5 s.
"""

from __future__ import annotations

import argparse
import http.client
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from index_load import T, write_index
from xclip_lightning.index.encode import model_fingerprint
from xclip_lightning.index.ranking import coarse_query
from xclip_lightning.index.store import DATABASE
from xclip_lightning.index.video_index import VideoIndex
from xclip_lightning.model.tiny import build_tiny_clip
from xclip_lightning.model.xclip import XCLIP

COMMAND = [str(Path(sys.executable).with_name("xclip-lightning"))]
WORDS = ("red", "blue", "green", "yellow", "circle", "square", "triangle", "cross", "moves", "left", "right", "grows",
         "shrinks", "appears")  # fmt: skip


def queries(count: int) -> list[str]:
    """Distinct captions in the synthetic data's style."""
    return [f"a {WORDS[i % 4]} {WORDS[4 + (i // 4) % 4]} {WORDS[8 + (i // 16) % 6]}, then number {i}" for i in
            range(count)]  # fmt: skip


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def get(port: int, text: str) -> float:
    """One query over HTTP (a new connection, as a browser's fetch or curl makes); seconds."""
    start = time.perf_counter()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    connection.request("GET", "/api/search?" + urllib.parse.urlencode({"q": text, "k": 10}))
    response = connection.getresponse()
    body = response.read()
    connection.close()
    assert response.status == 200 and json.loads(body)["hits"], body[:200]
    return time.perf_counter() - start


def served(folder: Path, model: Path, texts: list[str], clients: int) -> dict:
    start = time.perf_counter()
    process = subprocess.Popen([*COMMAND, "serve", "--index", str(folder), "--model", str(model), "--port", "0"],
                               stdout=subprocess.PIPE, text=True)  # fmt: skip
    line = process.stdout.readline()
    ready_s = time.perf_counter() - start
    port = int(line.rsplit(":", 1)[1].split("/")[0])
    try:
        one = [get(port, t) for t in texts]
        start = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            many = list(pool.map(lambda t: get(port, t), texts * max(1, (10 * clients) // len(texts))))
        many_s = time.perf_counter() - start
    finally:
        process.terminate()
        process.wait(timeout=30)
    return {
        "ready_s": round(ready_s, 2),
        "p50_ms": round(statistics.median(one) * 1000, 1),
        "p99_ms": round(percentile(one, 99) * 1000, 1),
        "qps_1": round(len(one) / sum(one), 1),
        f"p50_ms_{clients}": round(statistics.median(many) * 1000, 1),
        f"p99_ms_{clients}": round(percentile(many, 99) * 1000, 1),
        f"qps_{clients}": round(len(many) / many_s, 1),
    }


def one_shot(folder: Path, model: Path, texts: list[str]) -> float:
    """The median wall time of the ``search`` command (a new process per query), seconds."""
    times = []
    for text in texts:
        start = time.perf_counter()
        subprocess.run([*COMMAND, "search", "--index", str(folder), "--model", str(model), text],
                       check=True, capture_output=True)  # fmt: skip
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@torch.no_grad()
def where_the_time_goes(folder: Path, model: XCLIP, texts: list[str]) -> dict:
    """Median ms of each part of a query, in-process (no HTTP)."""
    index = VideoIndex.load(folder, model)
    index.search(texts[0], k=10)  # warm: the first stage is loaded
    parts: dict[str, list[float]] = {"text_ms": [], "first_stage_ms": [], "rescore_ms": [], "search_ms": []}
    for text in texts:
        start = time.perf_counter()
        tokens = model.tokenize([text])
        features = model.encode_text(tokens.input_ids, tokens.word_mask)
        encoded = time.perf_counter()
        keys = index._first_stage().topk(coarse_query(model.head, features)[0], 200)
        picked = time.perf_counter()
        with index.store.snapshot():
            index._score(features, list(index.store.locate(keys).values()), 10)
        scored = time.perf_counter()
        index.search(text, k=10)
        done = time.perf_counter()
        parts["text_ms"].append(encoded - start)
        parts["first_stage_ms"].append(picked - encoded)
        parts["rescore_ms"].append(scored - picked)
        parts["search_ms"].append(done - scored)
    return {name: round(statistics.median(values) * 1000, 1) for name, values in parts.items()}


def main(argv: list[str]) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--queries", type=int, default=50, help="queries of the 1-client run")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--scratch", type=Path, help="keep the indexes here (reused when present) instead of /tmp")
    args = parser.parse_args(argv)
    root = args.scratch or Path(tempfile.mkdtemp(prefix="xclip-serve-"))
    texts = queries(args.queries)
    results = []
    try:
        clip = build_tiny_clip(root / "clip", texts * 2, seed=0)
        XCLIP.from_clip(str(clip), max_words=32, max_frames=T).save_pretrained(root / "model")
        model = XCLIP.from_pretrained(root / "model").eval()
        dim = model.head.embed_dim
        for size in args.sizes:
            folder = root / f"index-{size}"
            if not (folder / DATABASE).is_file():
                shutil.rmtree(folder, ignore_errors=True)
                write_index(folder, size, model_fingerprint(model), dim=dim, model=str(root / "model"))
            row = {
                "moments": len(VideoIndex.load(folder, model)),
                **served(folder, root / "model", texts, args.clients),
            }
            row["one_shot_search_s"] = round(one_shot(folder, root / "model", texts[:3]), 2)
            row.update(where_the_time_goes(folder, model, texts))
            row["http_ms"] = round(row["p50_ms"] - row["search_ms"], 1)
            results.append(row)
            c = args.clients
            print(
                f"{row['moments']:>8,} moments: ready {row['ready_s']} s; 1 client p50 {row['p50_ms']} ms, p99 "
                f"{row['p99_ms']} ms, {row['qps_1']} q/s; {c} clients p50 {row[f'p50_ms_{c}']} ms, p99 "
                f"{row[f'p99_ms_{c}']} ms, {row[f'qps_{c}']} q/s; one-shot search {row['one_shot_search_s']} s "
                f"({row['one_shot_search_s'] * 1000 / row['p50_ms']:.0f}x the served p50). A query: text "
                f"{row['text_ms']} ms, first stage {row['first_stage_ms']} ms, re-scoring {row['rescore_ms']} ms, "
                f"search in all {row['search_ms']} ms, HTTP and JSON {row['http_ms']} ms"
            )
            print(json.dumps({"bench": "serve", **row}))
    finally:
        if args.scratch is None:
            shutil.rmtree(root, ignore_errors=True)
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
