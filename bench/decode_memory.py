"""Memory of decoding one 4K video into 64 cached 224 px frames (what one cache or index worker holds).

    .venv/bin/python bench/decode_memory.py                 # this checkout
    .venv/bin/python bench/decode_memory.py --src OTHER/src # another version, for a before/after

Writes a 3840 x 2160, 70 s, 2 fps H.264 file once, then runs ``decode_video`` with 64 frames in a fresh process and
reports its peak resident memory above the imports. Prints one line and one JSON line.
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
MEASURE = """
import resource, sys
from pathlib import Path
from xclip_lightning.data.frame_cache import SamplerSettings, VideoSource, decode_video
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
frames = decode_video(VideoSource(Path(sys.argv[1])), SamplerSettings(1.0, 64, "timestamp", 224)).frames
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", help="run the package from this source folder instead (e.g. an older checkout)")
    args = parser.parse_args()
    if not VIDEO.is_file():
        write_uhd(VIDEO)
    env = dict(os.environ, **({"PYTHONPATH": str(Path(args.src).resolve())} if args.src else {}))
    out = subprocess.run([sys.executable, "-c", MEASURE, str(VIDEO)], env=env, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(out.stderr)
    shape, extra_mb = out.stdout.split(")")[0] + ")", int(out.stdout.split(")")[1])
    print(f"4K video, 64 frames -> {shape}: +{extra_mb} MB peak resident memory over the imports")
    print(json.dumps({"bench": "decode_memory", "src": args.src or "installed", "extra_mb": extra_mb}))


if __name__ == "__main__":
    main()
