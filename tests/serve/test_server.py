"""``xclip-lightning serve`` as a user starts it: the real command on 127.0.0.1 and a free port, stopped with Ctrl-C.
The API answers what ``search --jsonl`` prints; media are served by id only, with ranges, and a file a browser
cannot play is converted; a token locks everything; an update of the index is picked up without a failed request;
32 clients at once get no error."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import av
import pytest

from serving import COMMAND, start
from xclip_lightning.index.video_index import VideoIndex

pytest.importorskip("fastapi", reason="the serve extra (pip install 'xclip-lightning[serve]')")


def cli_jsonl(index: Path, queries: list[str], *options: str) -> list[dict]:
    """What ``xclip-lightning search --jsonl`` prints (the command, as a script runs it)."""
    run = subprocess.run([*COMMAND, "search", "--index", str(index), *queries, "--jsonl", *options],
                         capture_output=True, text=True, timeout=300, check=True)  # fmt: skip
    return [json.loads(line) for line in run.stdout.splitlines()]


def q(text: str, **params: object) -> str:
    return "/api/search?" + urllib.parse.urlencode({"q": text, **params})


# ---- the API ------------------------------------------------------------------------------------------------------


def test_the_api_answers_what_search_jsonl_prints(world, server):
    queries = world["captions"][:3]
    for options, params in (
        ((), {}),
        (("--top-k", "3", "--per-video", "1"), {"k": 3, "per_video": 1}),
        (("--top-k", "50"), {"k": 50}),  # more than the index holds
    ):
        expected = cli_jsonl(world["index"], queries, *options)
        got = []
        for query in queries:
            status, body = server.json(q(query, **params))
            assert status == 200 and body["query"] == query and body["took_ms"] > 0
            for hit in body["hits"]:
                assert hit.pop("media_url") == f"/media/{hit['id']}"
                assert hit.pop("thumbnail_url") == f"/thumbs/{hit['id']}"
                hit.pop("media_start"), hit.pop("media_converted")
                got.append({"query": query, **hit})
        assert [{k: v for k, v in line.items() if k != "scorer"} for line in expected] == got
    threshold = cli_jsonl(world["index"], queries[:1])[2]["score"]
    expected = [h for h in cli_jsonl(world["index"], queries[:1]) if h["score"] >= threshold]
    status, body = server.json(q(queries[0], min_score=threshold))
    assert [h["id"] for h in body["hits"]] == [h["id"] for h in expected] and len(expected) == 3


def test_health_counts_the_moments(world, server):
    status, body = server.json("/api/health")
    assert status == 200 and body["status"] == "ok"
    assert body["entries"] == len(VideoIndex.load(world["index"]).entries) == 7 and body["index_version"] >= 1


@pytest.mark.parametrize(
    ("path", "words"),
    [
        ("/api/search", "q (the text to search for) is missing or empty"),
        ("/api/search?q=%20%20", "missing or empty"),
        ("/api/search?q=" + "a" * 1001, "q is 1001 characters long; at most 1000"),
        ("/api/search?q=dog&k=0", "k must be from 1 to 1000, got 0"),
        ("/api/search?q=dog&k=1000000", "k must be from 1 to 1000"),
        ("/api/search?q=dog&k=ten", "k must be an integer, got 'ten'"),
        ("/api/search?q=dog&per_video=-1", "per_video must be from 1"),
        ("/api/search?q=dog&min_score=high", "min_score must be a number, got 'high'"),
        ("/api/search?q=dog&min_score=nan", "min_score must be a number"),
        ("/api/similar?id=0123456789abcdef", "no indexed moment has the id '0123456789abcdef'"),
        ("/media/0123456789abcdef", "no indexed moment has the id"),
        ("/thumbs/0123456789abcdef", "no indexed moment has the id"),
        ("/nothing/here", "no such page"),
    ],
)
def test_bad_requests_get_a_4xx_that_says_what_is_wrong(server, path, words):
    status, headers, body = server.get(path)
    assert 400 <= status < 500 and headers["content-type"] == "application/json"
    assert words in json.loads(body)["error"] and b"Traceback" not in body


@pytest.mark.parametrize(
    "path",
    [
        "/media/../../etc/passwd",
        "/media/..%2F..%2Fetc%2Fpasswd",
        "/media/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "/media/%252e%252e%252fetc%252fpasswd",
        "/media//etc/passwd",
        "/media/%2Fetc%2Fpasswd",
        "/thumbs/..%2F..%2Findex.sqlite",
        "/media/..\\..\\etc\\passwd",
    ],
)
def test_nothing_but_an_indexed_file_is_served(server, path):
    status, _, body = server.get(path)
    assert status in (400, 404) and b"root:" not in body and b"SQLite" not in body


def test_a_file_is_served_with_ranges_and_its_type(world, server):
    hit = server.json(q(world["captions"][1], k=10))[1]["hits"]
    mp4 = next(h for h in hit if h["path"].endswith(".mp4"))
    data = Path(mp4["path"]).read_bytes()
    status, headers, body = server.get(mp4["media_url"])
    assert status == 200 and body == data and headers["content-type"] == "video/mp4"
    assert headers["accept-ranges"] == "bytes"
    status, headers, body = server.get(mp4["media_url"], {"Range": "bytes=100-199"})
    assert status == 206 and body == data[100:200] and headers["content-range"] == f"bytes 100-199/{len(data)}"
    status, _, body = server.get(mp4["media_url"], {"Range": "bytes=-50"})
    assert status == 206 and body == data[-50:]
    status, headers, _ = server.get(mp4["media_url"], {"Range": f"bytes={len(data) + 10}-"})
    assert status == 416 and headers["content-range"] == f"bytes */{len(data)}"
    status, headers, body = server.get(mp4["thumbnail_url"])
    assert status == 200 and headers["content-type"] == "image/jpeg"
    index = VideoIndex.load(world["index"])
    same = next(h for h in index.search([world["captions"][1]], k=10)[0] if h.id == mp4["id"])
    assert body == index.thumbnail(same)


def test_an_unplayable_file_is_served_as_its_moment_in_mp4(world, server):
    hits = server.json(q(world["captions"][0], k=10))[1]["hits"]
    ts = next(h for h in hits if h["path"].endswith(".ts"))
    assert ts["media_converted"] and ts["media_start"] == ts["start"]
    status, headers, body = server.get(ts["media_url"])
    assert status == 200 and headers["content-type"] == "video/mp4"
    clip = world["root"] / "clip.mp4"
    clip.write_bytes(body)
    with av.open(str(clip)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        times = [float(f.pts * stream.time_base) for f in container.decode(stream)]
    assert times[0] == 0 and abs(times[-1] - (ts["end"] - ts["start"])) < 0.5  # the moment, from time 0
    status, _, part = server.get(ts["media_url"], {"Range": "bytes=0-9"})
    assert status == 206 and part == body[:10]


def test_a_symlink_out_of_the_video_folder_is_never_followed(world, tmp_path):
    videos, outside = tmp_path / "videos", tmp_path / "elsewhere"
    videos.mkdir(), outside.mkdir()
    shutil.copy(world["spare"], outside / "secret.mp4")
    shutil.copy(world["spare"], videos / "mine.mp4")
    (videos / "link.mp4").symlink_to(outside / "secret.mp4")
    from xclip_lightning.cli import main

    main(["index", "--model", str(world["root"] / "model"), "--videos", str(videos), "--out", str(tmp_path / "ix"),
          "--workers", "0"])  # fmt: skip
    running = start("--index", str(tmp_path / "ix"))
    try:
        hits = running.json(q("a red circle", k=10))[1]["hits"]
        link = next(h for h in hits if h["path"].endswith("link.mp4"))
        mine = next(h for h in hits if h["path"].endswith("mine.mp4"))
        assert running.get(link["media_url"])[0] == 404
        assert running.get(mine["media_url"])[0] == 200
        (videos / "mine.mp4").unlink()  # a file deleted after indexing: not found, never an error page
        status, _, body = running.get(mine["media_url"])
        assert status == 404 and b"not available" in body
    finally:
        assert running.stop() == 0


# ---- who may use it -----------------------------------------------------------------------------------------------


def test_a_token_locks_every_request(world):
    token = "correct horse battery"
    running = start("--index", str(world["index"]), env={"XCLIP_SERVE_TOKEN": token})
    try:
        for path in ("/", "/api/health", q("dog"), "/media/x", "/thumbs/x"):
            status, _, body = running.get(path)
            assert status == 401 and b"token" in body
            assert running.get(path, {"Authorization": "Bearer wrong token!"})[0] == 401
        assert running.get("/api/health", {"Authorization": f"Bearer {token}"})[0] == 200
        status, headers, _ = running.get(f"/?q=dog&token={urllib.parse.quote(token)}")
        assert status == 303 and headers["location"] == "/?q=dog"
        cookie = headers["set-cookie"].split(";")[0]
        assert "httponly" in headers["set-cookie"].lower() and "samesite=strict" in headers["set-cookie"].lower()
        assert running.get("/api/health", {"Cookie": cookie})[0] == 200
        assert running.get("/api/health", {"Cookie": "xclip_token=guess"})[0] == 401
        assert "access-control-allow-origin" not in running.get("/api/health", {"Cookie": cookie})[1]  # no CORS
    finally:
        assert running.stop() == 0


def test_another_address_than_loopback_needs_a_token(world):
    run = subprocess.run([*COMMAND, "serve", "--index", str(world["index"]), "--host", "0.0.0.0"],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert run.returncode == 2 and "Traceback" not in run.stderr and len(run.stderr.strip().splitlines()) == 1
    assert "--host 0.0.0.0" in run.stderr and "--token" in run.stderr


def test_a_busy_port_is_one_line(world, server):
    run = subprocess.run([*COMMAND, "serve", "--index", str(world["index"]), "--port", str(server.port)],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert run.returncode == 1 and "Traceback" not in run.stderr and f"127.0.0.1:{server.port}" in run.stderr


# ---- live index and load ------------------------------------------------------------------------------------------


def test_an_update_is_served_without_a_failed_request(world, tmp_path):
    from xclip_lightning.cli import main

    videos, index = tmp_path / "videos", tmp_path / "index"
    shutil.copytree(world["videos"], videos)
    update = ["index", "--model", str(world["root"] / "model"), "--videos", str(videos), "--out", str(index),
              "--workers", "0"]  # fmt: skip
    main(update)
    running = start("--index", str(index), "--candidates", "0")
    before = running.json("/api/health")[1]["entries"]
    failures, seen, stop = [], [], threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            status, body = running.json(q(world["captions"][4], k=10))
            if status != 200:
                failures.append(body)
            else:
                seen.append({h["path"] for h in body["hits"]})

    try:
        worker = threading.Thread(target=hammer)
        worker.start()
        time.sleep(1)
        shutil.copy(world["spare"], videos / "new.mp4")
        main(update)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(str(videos / "new.mp4") in s for s in seen[-3:]):
            time.sleep(0.2)
        stop.set()
        worker.join()
        assert failures == [] and len(seen) > 5
        assert str(videos / "new.mp4") in seen[-1]  # found within seconds of the publish
        assert running.json("/api/health")[1]["entries"] == before + 1
    finally:
        stop.set()
        assert running.stop() == 0


def test_32_clients_at_once_get_no_error(world, server):
    queries = [world["captions"][i % 5] for i in range(32 * 5)]
    with ThreadPoolExecutor(32) as pool:
        results = list(pool.map(lambda text: server.json(q(text, k=5))[0], queries))
    assert results == [200] * len(queries)
