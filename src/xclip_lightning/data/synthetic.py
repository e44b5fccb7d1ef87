"""A procedural video-text dataset written with PyAV: the embedded default for the demo, the tests and the benches.

Each clip shows two or three coloured shapes acting one after another ("a red circle moves left, then a blue
square appears"), so that word-level cues (colour, shape, verb), frame-level cues (which object is on screen when)
and frame order all matter. Each video has two phrasings of its caption (exercising the multi-caption protocol).
The dataset is written in the generic jsonl format (``data/benchmarks/generic.py``) and is deterministic for a seed;
``make_synthetic_dataset`` reuses a folder already written with the same settings.

    root/annotations.jsonl   {"video": "videos/00042.mp4", "captions": [...], "split": "train"}
    root/videos/*.mp4        H.264, ``fps`` frames per second, ``width`` x ``height``
    root/synthetic.json      the settings, so a changed setting rebuilds (only these files: a folder holding
                             anything else without the project's marker is refused, never deleted)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

COLOURS = {
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 90, 240),
    "yellow": (240, 220, 40),
    "purple": (160, 60, 200),
    "white": (245, 245, 245),
}
SHAPES = ("circle", "square", "triangle", "cross")
ACTIONS = ("moves left", "moves right", "moves up", "moves down", "appears", "disappears", "grows", "shrinks")
BACKGROUND = (40, 40, 40)
ANNOTATIONS = "annotations.jsonl"
SETTINGS = "synthetic.json"
MARKER = ".xclip-synthetic"  # written first: this folder holds a synthetic dataset the project may rewrite


@dataclass(frozen=True)
class SyntheticSettings:
    """Everything the dataset depends on; a folder is reused only when these match."""

    train: int = 600
    val: int = 100
    test: int = 100
    seed: int = 0
    width: int = 64
    height: int = 48
    fps: int = 10
    seconds_per_event: float = 2.0
    format_version: int = 1


@dataclass(frozen=True)
class Event:
    colour: str
    shape: str
    action: str


def _shape_mask(shape: str, cx: float, cy: float, radius: float, grid: np.ndarray) -> np.ndarray:
    """Boolean [H,W] mask of a shape centred at (cx, cy) with half-size ``radius`` (pixels); grid [2,H,W] = y, x."""
    dx, dy = grid[1] - cx, grid[0] - cy
    if shape == "circle":
        return dx**2 + dy**2 <= radius**2
    if shape == "square":
        return (np.abs(dx) <= radius) & (np.abs(dy) <= radius)
    if shape == "triangle":  # apex up: inside when below the apex and within the widening sides
        return (dy <= radius) & (dy >= -radius) & (np.abs(dx) <= (dy + radius) / 2)
    if shape == "cross":
        bar = radius / 3
        return ((np.abs(dx) <= radius) & (np.abs(dy) <= bar)) | ((np.abs(dy) <= radius) & (np.abs(dx) <= bar))
    raise ValueError(f"unknown shape {shape!r}")


def _state(event: Event, progress: float, home: tuple[float, float], width: int, height: int) -> tuple | None:
    """(cx, cy, radius) of the event's object at ``progress`` in [0, 1] of its segment (>1 after), or None if
    invisible. ``home`` is the object's rest position."""
    base = min(width, height) / 7
    cx, cy = home
    p = min(max(progress, 0.0), 1.0)
    travel = width * 0.35
    action = event.action
    if action == "moves left":
        cx += travel * (0.5 - p)
    elif action == "moves right":
        cx += travel * (p - 0.5)
    elif action == "moves up":
        cy += height * 0.35 * (0.5 - p)
    elif action == "moves down":
        cy += height * 0.35 * (p - 0.5)
    elif (action == "appears" and p < 0.5) or (action == "disappears" and p >= 0.5):
        return None
    elif action == "grows":
        return cx, cy, base * (0.6 + 0.9 * p)
    elif action == "shrinks":
        return cx, cy, base * (1.5 - 0.9 * p)
    return cx, cy, base


def render(events: Sequence[Event], homes: Sequence[tuple[float, float]], settings: SyntheticSettings) -> np.ndarray:
    """uint8 [N,H,W,3] frames: event i plays during segment i; its object stays on screen afterwards."""
    w, h, fps = settings.width, settings.height, settings.fps
    frames_per_event = round(settings.seconds_per_event * fps)
    frames = np.empty((len(events) * frames_per_event, h, w, 3), np.uint8)
    grid = np.mgrid[0:h, 0:w].astype(np.float32)
    for n in range(frames.shape[0]):
        image = np.empty((h, w, 3), np.uint8)
        image[:] = BACKGROUND
        segment = n / frames_per_event
        for i, (event, home) in enumerate(zip(events, homes, strict=True)):
            if segment < i:  # not yet on screen
                continue
            state = _state(event, (segment - i) * frames_per_event / max(frames_per_event - 1, 1), home, w, h)
            if state is not None:
                image[_shape_mask(event.shape, *state, grid)] = COLOURS[event.colour]
        frames[n] = image
    return frames


def captions_for(events: Sequence[Event]) -> tuple[str, str]:
    """Two phrasings of the same temporal story."""
    parts = [f"a {e.colour} {e.shape} {e.action}" for e in events]
    first = ", then ".join(parts)
    second = "first " + " and after that ".join(p.replace("a ", "the ", 1) for p in parts)
    return first, second


def write_video(path: Path, frames: np.ndarray, fps: int) -> None:
    """H.264 in MP4, single-threaded so the bytes are the same on every machine for the same frames."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps, options={"preset": "veryfast", "crf": "20", "threads": "1"})
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = Fraction(1, fps)
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def _random_events(rng: np.random.Generator) -> list[Event]:
    count = int(rng.integers(2, 4))
    objects = rng.choice(len(COLOURS) * len(SHAPES), size=count, replace=False)  # distinct colour-shape pairs
    colours = list(COLOURS)
    return [
        Event(colours[o // len(SHAPES)], SHAPES[o % len(SHAPES)], ACTIONS[int(rng.integers(len(ACTIONS)))])
        for o in objects
    ]


def _remove_own_files(root: Path) -> None:
    """Delete an earlier synthetic dataset in ``root`` (other settings, or half-built), and only that: a folder
    with other contents and no marker of ours is the user's, and is refused, never deleted."""
    if not root.exists() or not any(root.iterdir()):
        return
    if not (root / MARKER).is_file() and not (root / SETTINGS).is_file():
        raise FileExistsError(
            f"{root} is not empty and was not written by make_synthetic_dataset: choose an empty or new folder "
            f"(nothing in it was changed)"
        )
    for path in [root / ANNOTATIONS, root / SETTINGS, *(root / "videos").glob("[0-9][0-9][0-9][0-9][0-9].mp4")]:
        path.unlink(missing_ok=True)


def make_synthetic_dataset(root: str | Path, settings: SyntheticSettings | None = None, **overrides: int) -> Path:
    """Write (or reuse) the synthetic dataset under ``root``; returns the annotations file.

    ``overrides`` change single settings, e.g. ``make_synthetic_dataset(root, train=40, val=10, test=10)``.
    """
    settings = settings or SyntheticSettings()
    if overrides:
        settings = SyntheticSettings(**{**asdict(settings), **overrides})
    root = Path(root)
    stamp = root / SETTINGS
    if stamp.is_file() and json.loads(stamp.read_text()) == asdict(settings) and (root / ANNOTATIONS).is_file():
        return root / ANNOTATIONS
    _remove_own_files(root)
    (root / "videos").mkdir(parents=True, exist_ok=True)
    (root / MARKER).touch()
    rng = np.random.default_rng(settings.seed)
    lines = []
    splits = ["train"] * settings.train + ["val"] * settings.val + ["test"] * settings.test
    for index, split in enumerate(splits):
        events = _random_events(rng)
        homes = [
            (float(rng.uniform(0.3, 0.7) * settings.width), float(rng.uniform(0.3, 0.7) * settings.height))
            for _ in events
        ]
        name = f"videos/{index:05d}.mp4"
        write_video(root / name, render(events, homes, settings), settings.fps)
        lines.append(json.dumps({"video": name, "captions": list(captions_for(events)), "split": split}))
    (root / ANNOTATIONS).write_text("\n".join(lines) + "\n")
    stamp.write_text(json.dumps(asdict(settings), indent=2) + "\n")  # written last: a half-built folder rebuilds
    return root / ANNOTATIONS


def synthetic_captions(annotations: str | Path, split: str | None = "train") -> list[str]:
    """Every caption of one split (all splits with None): the corpus for the tiny CLIP's tokenizer."""
    captions = []
    for line in Path(annotations).read_text().splitlines():
        item = json.loads(line)
        if split is None or item["split"] == split:
            captions.extend(item["captions"])
    return captions


def make_synthetic_clip(folder: str | Path, annotations: str | Path, seed: int = 0, **config: int) -> Path:
    """A tiny random CLIP whose tokenizer is trained on the synthetic captions, saved with ``save_pretrained``
    (reused when already there). Usable as ``clip_name_or_path``."""
    from xclip_lightning.model.tiny import build_tiny_clip

    folder = Path(folder)
    if (folder / "config.json").is_file() and (folder / "tokenizer.json").is_file():
        return folder
    return build_tiny_clip(folder, synthetic_captions(annotations, split=None), seed=seed, **config)
