"""The fixtures of tests/serve (a plugin of tests/conftest.py, so they are built once a session): a folder of
videos as users have them (a name with a space and '#', an MPEG-TS capture starting late, a long video of several
moments), its index, and the real ``xclip-lightning serve`` started on 127.0.0.1 and a free port, stopped with
Ctrl-C."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from conftest import synthetic_model

ENTRY_POINT = Path(sys.executable).with_name("xclip-lightning")
COMMAND = [str(ENTRY_POINT)] if ENTRY_POINT.exists() else [sys.executable, "-m", "xclip_lightning.cli"]
LONG_SECONDS = 70  # two moments of 35 s with the default 30 s window


def write_long(target: Path, seconds: int = LONG_SECONDS, fps: int = 5) -> Path:
    """An H.264 MP4 whose colour changes every 5 s (the moments differ)."""
    with av.open(str(target), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        for i in range(seconds * fps):
            shade = (i // (5 * fps)) * 37 % 256
            pixels = np.full((64, 64, 3), (shade, 255 - shade, (shade * 3) % 256), dtype=np.uint8)
            pixels[:, (i * 3) % 64] = 255
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return target


def write_ts(source: Path, target: Path) -> Path:
    """An MPEG-TS file with MPEG-2 video (which no browser plays) of the frames of ``source``, starting at 1.4 s as
    broadcast captures do."""
    with av.open(str(source)) as src, av.open(str(target), "w", format="mpegts") as out:
        stream = out.add_stream("mpeg2video", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        for i, frame in enumerate(src.decode(video=0)):
            image = frame.reformat(64, 64, format="yuv420p")
            for repeat in range(5):  # 5 fps source -> 25 fps
                image.pts, image.time_base = i * 5 + repeat + 35, Fraction(1, 25)  # 35 / 25 = a 1.4 s late start
                out.mux(stream.encode(image))
        out.mux(stream.encode(None))
    return target


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> dict:
    """A model, a folder of 4 synthetic clips, one of them also as MPEG-TS, a long video, a clip kept aside, and
    their index."""
    root = tmp_path_factory.mktemp("serve")
    _, annotations = synthetic_model(root, videos=5, seed=21, max_frames=8)
    videos = root / "my videos"
    videos.mkdir()
    sources = sorted((annotations.parent / "videos").glob("*.mp4"))
    for path in sources[:4]:
        shutil.copy(path, videos / path.name)
    write_ts(sources[0], videos / "broadcast #1.ts")
    write_long(videos / "long take.mp4")
    captions = [json.loads(line)["captions"][0] for line in annotations.read_text().splitlines()]
    from xclip_lightning.cli import main

    main(["index", "--model", str(root / "model"), "--videos", str(videos), "--out", str(root / "index"),
          "--workers", "0"])  # fmt: skip
    return {"root": root, "videos": videos, "index": root / "index", "spare": sources[4], "captions": captions}


@dataclass
class Server:
    process: subprocess.Popen
    host: str
    port: int

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        """One request, sent as written (no normalisation of the path): status, headers, body."""
        connection = http.client.HTTPConnection(self.host, self.port, timeout=60)
        try:
            connection.request("GET", path, headers=headers or {})
            response = connection.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            connection.close()

    def json(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict]:
        status, _, body = self.get(path, headers)
        return status, json.loads(body)

    def stop(self) -> int:
        self.process.send_signal(signal.SIGINT)  # Ctrl-C
        return self.process.wait(timeout=30)


def start(*args: str, env: dict[str, str] | None = None) -> Server:
    """The real command on 127.0.0.1 and a free port (--port 0), once it says it is ready."""
    process = subprocess.Popen(
        [*COMMAND, "serve", "--port", "0", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, **(env or {})},
    )  # fmt: skip
    line = process.stdout.readline()
    if "serving" not in line:
        process.kill()
        raise AssertionError(f"serve did not start: {line}{process.stderr.read()}")
    url = urllib.parse.urlsplit(line.split(" at ")[1].split()[0])
    return Server(process, url.hostname, url.port)


@pytest.fixture(scope="session")
def server(world) -> Iterator[Server]:
    running = start("--index", str(world["index"]))
    yield running
    assert running.stop() == 0  # Ctrl-C stops it cleanly
    assert "Traceback" not in running.process.stderr.read()
