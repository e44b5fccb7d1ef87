"""Memory of what one cache or index worker holds while sampling a video.

    .venv/bin/python bench/decode_memory.py                 # this checkout
    .venv/bin/python bench/decode_memory.py --src OTHER/src # another version, for a before/after

Two files, written once: a 3840 x 2160, 70 s, 2 fps H.264 file sampled into 64 frames of 224 px (``decode_video``),
and a long, high-bitrate one (320 x 180 noise, 30 fps, 8 minutes, about 0.5 GB) sampled into 30 s moments of 12
frames (what ``index --window 30`` does to an hour of footage, scaled down). Each runs in a fresh process; the
bench reports its peak resident memory above the imports. Prints a line each and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

VIDEO = Path(".cache/bench/uhd_70s.mp4")
LONG = Path(".cache/bench/noise_8min.mp4")
MEASURE = """
import resource, sys
from pathlib import Path
from xclip_lightning.data.frame_cache import SamplerSettings, VideoSource, decode_video
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
frames = decode_video(VideoSource(Path(sys.argv[1])), SamplerSettings(1.0, 64, "timestamp", 224)).frames
print(tuple(frames.shape), (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) // 1024)
"""
MEASURE_LONG = """
import resource, sys
from xclip_lightning.inputs.transforms import resize_crop
from xclip_lightning.data.video import WindowSelector, sample_frames
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
windows = WindowSelector(30.0, 1.0, 12)
frames = sample_frames(sys.argv[1], 1.0, 12, transform=resize_crop(224), select=windows).frames
print(tuple(frames.shape), (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) // 1024)
"""


def write_uhd(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=2, options={"preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = 3840, 2160, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 2)
        image = np.random.default_rng(0).integers(0, 255, (2160, 3840, 3), dtype=np.uint8)
        for i in range(140):
            frame = av.VideoFrame.from_ndarray(np.roll(image, 16 * i, axis=1), format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def write_long(path: Path) -> None:
    """Fresh noise every frame: the file is as large as its frames (about 70 KB each), as a high-bitrate one is."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30, options={"preset": "ultrafast", "crf": "18", "g": "60"})
        stream.width, stream.height, stream.pix_fmt = 320, 180, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 30)
        for i in range(30 * 480):
            frame = av.VideoFrame.from_ndarray(rng.integers(0, 255, (180, 320, 3), dtype=np.uint8), format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def measure(script: str, path: Path, env: dict) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", script, str(path)], env=env, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(out.stderr)
    return out.stdout.split(")")[0] + ")", int(out.stdout.split(")")[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", help="run the package from this source folder instead (e.g. an older checkout)")
    args = parser.parse_args()
    if not VIDEO.is_file():
        write_uhd(VIDEO)
    if not LONG.is_file():
        write_long(LONG)
    env = dict(os.environ, **({"PYTHONPATH": str(Path(args.src).resolve())} if args.src else {}))
    shape, extra_mb = measure(MEASURE, VIDEO, env)
    print(f"4K video, 64 frames -> {shape}: +{extra_mb} MB peak resident memory over the imports")
    long_shape, long_mb = measure(MEASURE_LONG, LONG, env)
    size_mb = LONG.stat().st_size // 2**20
    print(f"8 min, {size_mb} MB video, 30 s moments -> {long_shape}: +{long_mb} MB peak resident memory")
    print(json.dumps({"bench": "decode_memory", "src": args.src or "installed", "extra_mb": extra_mb,
                      "long_file_mb": size_mb, "long_extra_mb": long_mb}))  # fmt: skip


if __name__ == "__main__":
    main()
