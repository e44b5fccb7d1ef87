"""1-FPS frame sampling: this project's sampler vs naive PyAV vs the official OpenCV approach vs keyframes only.

    python bench/decode.py                 # generated H.264 videos (cached in .cache/bench/videos) + ../shared/videos
    python bench/decode.py --quick         # 240p/360p, 10/30 s only: a quick look

Per video, 12 frames at one per second (``max_frames=12``), single-threaded decoders, all methods side by side:
(a) ``sample_frames`` (timestamp rule): demux once, decode only the GOP segments that lead to a chosen frame;
(b) naive PyAV: decode every frame, keep the one nearest each whole second, convert only those;
(c) the official OpenCV approach (CLIP4Clip ``video_to_tensor``): ``int(fps)``, seek to frame ``sec * int(fps)`` for
    every second, read it, convert BGR->RGB, then subsample with linspace (needs opencv-python-headless);
(d) keyframes only (``skip_frame="NONKEY"``), nearest keyframe per second: the lower bound of decode work, inexact.
"Exact" compares (a) with decoding every frame and applying the same timestamp rule (pixels and timestamps).
Prints a table (one row per video, then the medians) and one JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
import warnings
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch

from xclip_lightning.data import video as sampler
from xclip_lightning.data.video import linspace_indices, sample_frames

REPO = Path(__file__).resolve().parents[1]
SHARED_VIDEOS = REPO.parent / "shared" / "videos"
MAX_FRAMES = 12
RESOLUTIONS = {"240p": (426, 240), "360p": (640, 360), "720p": (1280, 720)}
SCENE_SECONDS = 7  # a new scene (and so a scene-cut keyframe) every 7 s


def generate(path: Path, size: tuple[int, int], seconds: int, gop: int, rate: Fraction) -> Path:
    """H.264 (veryfast, 3 B-frames, scene-cut keyframes) of a panning textured scene that changes every 7 s."""
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    width, height = size
    rng = np.random.default_rng(seconds * 1000 + gop + height)
    tmp = path.with_suffix(".tmp.mp4")
    with av.open(str(tmp), "w") as container:
        stream = container.add_stream("libx264", rate=rate, options={"preset": "veryfast", "g": str(gop), "bf": "3"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        frames = round(seconds * rate)
        texture = None
        for i in range(frames):
            second = i / rate
            if i == 0 or int(second) // SCENE_SECONDS != int((i - 1) / rate) // SCENE_SECONDS:
                coarse = rng.integers(0, 256, (height // 8 + 8, width // 8 + 8, 3), dtype=np.uint8)
                texture = np.kron(coarse, np.ones((8, 8, 1), np.uint8))  # blocky scene, 2x the frame
                texture = np.concatenate([texture, texture], axis=1)
            shift = int(i * 3) % width  # a camera pan: every frame moves
            image = np.ascontiguousarray(texture[:height, shift : shift + width])
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i
            frame.time_base = 1 / rate
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    tmp.rename(path)
    return path


def bench_videos(quick: bool) -> list[Path]:
    folder = REPO / ".cache" / "bench" / "videos"
    videos = []
    for res, size in RESOLUTIONS.items():
        for seconds in (10, 30, 120):
            if quick and (res == "720p" or seconds == 120):
                continue
            for gop in (12, 250):
                videos.append(
                    generate(folder / f"{res}-{seconds}s-gop{gop}-30fps.mp4", size, seconds, gop, Fraction(30))
                )
    for gop in (12, 250):
        name = f"360p-30s-gop{gop}-29.97fps.mp4"
        videos.append(generate(folder / name, RESOLUTIONS["360p"], 30, gop, Fraction(30000, 1001)))
    if SHARED_VIDEOS.is_dir():
        videos += sorted(p for p in SHARED_VIDEOS.iterdir() if p.suffix != ".md")
    return videos


def _rgb(frame: av.VideoFrame) -> np.ndarray:
    return frame.to_ndarray(format="rgb24")


def naive_pyav(path: Path) -> int:
    """Decode every frame; keep the frame nearest each whole second; convert only those."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "SLICE"
        nearest: dict[int, tuple[float, av.VideoFrame]] = {}
        start = None
        try:
            for frame in container.decode(stream):
                if frame.time is None:
                    continue
                start = frame.time if start is None else start
                t = frame.time - start
                second = round(t)
                if second not in nearest or abs(t - second) < abs(nearest[second][0] - second):
                    nearest[second] = (t, frame)
        except av.error.FFmpegError:
            pass  # the naive loop stops at the first corrupt packet
        seconds = sorted(nearest)
        kept = [_rgb(nearest[seconds[i]][1]) for i in linspace_indices(len(seconds), MAX_FRAMES)]
    return len(kept)


def keyframes_only(path: Path) -> int:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.codec_context.skip_frame = "NONKEY"
        frames = []
        with contextlib.suppress(av.error.FFmpegError):  # stops at the first corrupt packet
            frames += [(f.time, f) for f in container.decode(stream) if f.time is not None]
        if not frames:
            return 0
        start, end = frames[0][0], frames[-1][0]
        targets = [start + s for s in range(int(end - start) + 1)]
        keep = [targets[i] for i in linspace_indices(len(targets), MAX_FRAMES)]
        chosen = [min(frames, key=lambda tf, t=t: abs(tf[0] - t))[1] for t in keep]
        return len([_rgb(f) for f in chosen])


def official_opencv(path: Path) -> int:
    """CLIP4Clip / X-CLIP ``RawVideoExtractorCV2.video_to_tensor`` at 1 frame per second (no PIL resize here)."""
    import cv2

    cap = cv2.VideoCapture(str(path))
    frame_count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    fps = int(cap.get(cv2.CAP_PROP_FPS))
    if fps <= 0:
        return 0
    duration = (frame_count + fps - 1) // fps
    images = []
    ok = True
    for sec in range(duration + 1):
        if not ok:
            break
        cap.set(cv2.CAP_PROP_POS_FRAMES, sec * fps)
        ok, frame = cap.read()
        if ok:
            images.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    cap.release()
    return len([images[i] for i in linspace_indices(len(images), MAX_FRAMES)])


def ours(path: Path) -> int:
    return sample_frames(path, fps=1.0, max_frames=MAX_FRAMES).frames.shape[0]


def exact(path: Path) -> bool:
    """(a) against decoding every frame with the same rule: same timestamps, same pixels."""
    fast = sample_frames(path, fps=1.0, max_frames=MAX_FRAMES)
    reference = sampler._sequential(path, 1.0, MAX_FRAMES, "timestamp", None)
    return fast.timestamps.tolist() == [float(t) for t, _ in reference] and all(
        torch.equal(a, b) for a, (_, b) in zip(fast.frames, reference, strict=True)
    )


def timed(fn, path: Path, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(path)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="skip 720p and 120 s videos")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per method and video (1 for 120 s ones)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    warnings.simplefilter("ignore", RuntimeWarning)  # the corrupt shared file warns once per decode
    try:
        import cv2  # noqa: F401

        have_cv2 = True
    except ImportError:
        have_cv2 = False
        print("opencv-python-headless not installed: column (c) is skipped (pip install -e '.[bench]')")
    methods = {"ours": ours, "naive": naive_pyav, "keyframes": keyframes_only}
    if have_cv2:
        methods["opencv"] = official_opencv
    rows = []
    print(
        f"{'video':42s} {'(a) ours':>9s} {'(b) naive':>10s} {'(c) cv2':>9s} {'(d) key':>8s} "
        f"{'b/a':>6s} {'c/a':>6s} exact path"
    )
    for path in bench_videos(args.quick):
        repeats = 1 if "120s" in path.name else args.repeats
        ms = {name: 1e3 * timed(fn, path, repeats) for name, fn in methods.items()}
        row = {"video": path.name, **{f"{k}_ms": round(v, 1) for k, v in ms.items()}, "exact": exact(path)}
        row["planned"] = sampler._planned(path, 1.0, MAX_FRAMES, "timestamp", None) is not None  # else fallback
        row["naive_over_ours"] = round(ms["naive"] / ms["ours"], 2)
        row["opencv_over_ours"] = round(ms["opencv"] / ms["ours"], 2) if have_cv2 else None
        rows.append(row)
        cv = f"{ms['opencv']:9.0f}" if have_cv2 else f"{'-':>9s}"
        cv_ratio = f"{row['opencv_over_ours']:6.2f}" if have_cv2 else f"{'-':>6s}"
        print(
            f"{path.name:42s} {ms['ours']:9.0f} {ms['naive']:10.0f} {cv} {ms['keyframes']:8.0f} "
            f"{row['naive_over_ours']:6.2f} {cv_ratio} {row['exact']!s:5s} "
            f"{'planned' if row['planned'] else 'fallback'}",
            flush=True,
        )
    naive_ratio = statistics.median(r["naive_over_ours"] for r in rows)
    cv_ratio = statistics.median(r["opencv_over_ours"] for r in rows) if have_cv2 else None
    print(f"median speed-up of (a): {naive_ratio:.2f}x over (b) naive PyAV, {cv_ratio}x over (c) OpenCV (official)")
    result = {
        "bench": "decode",
        "videos": len(rows),
        "median_naive_over_ours": round(naive_ratio, 2),
        "median_opencv_over_ours": None if cv_ratio is None else round(cv_ratio, 2),
        "all_exact": all(r["exact"] for r in rows),
        "targets_met": {
            "naive>=2x": naive_ratio >= 2,
            "opencv>=4x": None if cv_ratio is None else cv_ratio >= 4,
            "exact": all(r["exact"] for r in rows),
        },
        "rows": rows,
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
