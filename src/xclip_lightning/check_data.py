"""``xclip-lightning check-data``: everything ``fit`` and ``test`` will need from a dataset, checked in minutes,
before hours of GPU time find it.

    xclip-lightning check-data --config msrvtt/vitb32 --data.annotations /data/msrvtt_data \\
        --data.videos /data/MSRVTT/videos/all --trainer.devices 4 [--probe none|header|frames] [--json]

It takes the arguments of ``fit`` (a config, ``--data.*``, ``--model.*``, ``--trainer.*``; nothing is built, no
weights are read) and reports, per split: the videos and captions the annotation files give against the official
release's counts (../shared/real-data-notes.md), the videos missing on disk, the videos that cannot be decoded
(``--probe header`` opens each container and its video stream; ``--probe frames`` decodes exactly the frames
``fit`` will sample; ``none`` opens nothing), their durations; then the frame cache (what is already built, the
size and time of the rest) and the global contrastive batch of the trainer settings. It exits 0 only when
``fit`` and ``test`` can run; a count that differs from the official one is a warning (own splits are allowed),
but the numbers will not compare with the published tables.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import statistics
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

PROG = "xclip-lightning check-data"
PROBES = ("none", "header", "frames")
TIMING_SAMPLE = 3  # videos decoded to time the cache build when --probe is header
SHOW = 5  # ids or reasons listed per finding
ENTRY_OVERHEAD = 1024  # bytes per cached video besides its frames: the .npy header and the .json metadata

# (benchmark, split, MSR-VTT training list) -> (videos, captions) of the released files (real-data-notes.md)
OFFICIAL: dict[tuple[str, str], tuple[int, int]] = {
    ("msrvtt-9k", "train"): (9_000, 180_000),
    ("msrvtt-7k", "train"): (7_010, 140_200),
    ("msrvtt", "val"): (1_000, 1_000),
    ("msrvtt", "test"): (1_000, 1_000),
    ("msvd", "train"): (1_200, 48_774),
    ("msvd", "val"): (100, 4_290),
    ("msvd", "test"): (670, 27_763),
    ("lsmdc", "val"): (7_408, 7_408),
    ("lsmdc", "test"): (1_000, 1_000),
    ("didemo", "train"): (8_392, 8_392),
    ("didemo", "val"): (1_065, 1_065),
    ("didemo", "test"): (1_004, 1_004),
    ("activitynet", "train"): (10_009, 10_009),
    ("activitynet", "val"): (4_917, 4_917),
    ("activitynet", "test"): (4_917, 4_917),
}


@dataclass
class Probe:
    """What opening (and with ``frames``, sampling) one video found."""

    duration: float | None = None  # seconds, from the container or stream header; None when it gives none
    frames: int | None = None  # frames sampled (``--probe frames``)
    seconds: float | None = None  # time to sample them
    error: str | None = None


@dataclass
class SplitReport:
    name: str
    videos: int = 0  # found on disk
    captions: int = 0  # of the videos found
    listed_videos: int = 0  # named by the annotations
    listed_captions: int = 0
    official: tuple[int, int] | None = None  # (videos, captions) of the released files
    missing: list[str] = field(default_factory=list)  # ids not found on disk
    undecodable: dict[str, str] = field(default_factory=dict)  # id -> reason
    duration: dict[str, float] | None = None  # min / median / mean / max seconds, total hours
    unknown_duration: int = 0
    error: str | None = None  # the annotation files could not be read


# ---- the checks ---------------------------------------------------------------------------------------------------


def run(argv: Sequence[str], probe: str = "header", workers: int | None = None, progress: bool = True) -> dict:
    """The whole report as a JSON-able dict (``ok``: fit and test can run)."""
    from xclip_lightning.data.datamodule import VideoTextDataModule
    from xclip_lightning.data.dataset import video_source
    from xclip_lightning.lightning_cli import fit_config

    config = fit_config(argv, PROG)
    data = config.data.as_dict()
    module = VideoTextDataModule(**data)
    problems: list[str] = []
    notes: list[str] = []

    settings, clip_problem = _clip(module)
    if clip_problem:
        problems.append(clip_problem)

    if not Path(module.videos).is_dir():
        problems.append(f"--data.videos {module.videos}: no such folder (the videos of every split are found there)")
    splits: dict[str, SplitReport] = {}
    records: dict[str, list] = {}
    for split in ("train", "val", "test"):
        report, found = _read_split(module, split, notes)
        splits[split], records[split] = report, found
        if report.error:
            problems.append(f"{split}: {report.error}")

    sources = {video_source(r): r for split in records.values() for r in split if r.video_path is not None}
    workers = workers or module.prepare_workers or max(1, module.num_workers)
    probes = _probe_all(list(sources), probe, settings, workers, progress)
    for split, found in records.items():
        _summarise(splits[split], found, probes, video_source)

    for report in splits.values():
        _judge(report, module, problems, notes)
    cache = _cache_estimate(module, settings, list(sources), probes, probe, workers)
    batch = _batch(config.trainer, module, splits["train"])
    if batch["steps_per_epoch"] == 0 and not splits["train"].error:
        problems.append(
            f"train: {splits['train'].captions} training pairs give no full batch of {batch['global']} "
            f"(drop_last): lower --data.batch_size or the number of devices"
        )
    return {
        "ok": not problems,
        "benchmark": module.benchmark,
        "annotations": str(module.annotations),
        "videos": str(module.videos),
        "clip": module.clip_name_or_path,
        "probe": probe,
        "splits": {name: _as_json(r) for name, r in splits.items()},
        "frame_cache": cache,
        "batch": batch,
        "problems": problems,
        "warnings": notes,
    }


def _clip(module: Any) -> tuple[Any, str | None]:
    """The sampler settings of the backbone (its frame size and resize, unless ``image_size`` is set), and a
    problem when the CLIP (or SigLIP) fit needs cannot be loaded."""
    from transformers import AutoTokenizer

    from xclip_lightning.data.frame_cache import SamplerSettings

    try:
        settings = module.sampler_settings  # reads the backbone's config
        AutoTokenizer.from_pretrained(module.clip_name_or_path)
    except Exception as err:  # the Hub's many failures, a folder without a config, an unknown backbone, ...
        reason = " ".join(str(err).split())[:300]
        fallback = SamplerSettings(module.fps, module.max_frames, module.sampling, module.image_size or 224)
        return fallback, (
            f"the CLIP {module.clip_name_or_path!r} cannot be loaded ({type(err).__name__}: {reason}): fit needs "
            f"its config, weights and tokenizer (--model.clip_name_or_path: a local folder, or a Hub name on a "
            f"machine that can download it); test --ckpt_path does not"
        )
    return settings, None


def _read_split(module: Any, split: str, notes: list[str]) -> tuple[SplitReport, list]:
    from xclip_lightning.data.benchmarks.common import KEEP_MISSING

    report = SplitReport(split, official=_official(module, split))
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            found = module.records(split, missing_videos=KEEP_MISSING)
    except (OSError, ValueError) as err:  # AnnotationError and a missing file name the file (and the line)
        report.error = str(err)
        return report, []
    notes.extend(f"{split}: {w.message}" for w in caught if issubclass(w.category, RuntimeWarning))
    report.listed_videos = len(found)
    report.listed_captions = sum(len(r.captions) for r in found)
    report.missing = [r.video_id for r in found if r.video_path is None]
    return report, found


def _official(module: Any, split: str) -> tuple[int, int] | None:
    """The released files' counts, when the split names are the reader's own (not a user's split)."""
    if module.splits[split] != split:
        return None
    name = f"msrvtt-{module.msrvtt_train_set}" if (module.benchmark, split) == ("msrvtt", "train") else module.benchmark
    return OFFICIAL.get((name, split))


def _summarise(report: SplitReport, found: list, probes: dict, source_of: Any) -> None:
    present = [r for r in found if r.video_path is not None]
    durations = []
    for r in present:
        probe = probes.get(source_of(r))
        if probe is None:
            continue
        if probe.error:
            report.undecodable[r.video_id] = probe.error
        elif probe.duration is None:
            report.unknown_duration += 1
        else:
            durations.append(probe.duration)
    good = [r for r in present if r.video_id not in report.undecodable]
    report.videos = len(good)
    report.captions = sum(len(r.captions) for r in good)
    if durations:
        report.duration = {
            "min": min(durations),
            "median": statistics.median(durations),
            "mean": statistics.fmean(durations),
            "max": max(durations),
            "total_hours": sum(durations) / 3600,
        }


def _judge(report: SplitReport, module: Any, problems: list[str], notes: list[str]) -> None:
    """Missing and undecodable videos stop fit / test under the 'error' policies; counts off the official ones
    only make the numbers incomparable."""
    name = report.name
    if report.missing:
        said = f"{len(report.missing)} of {_videos(report.listed_videos)} not found under {module.videos}, e.g. " + (
            ", ".join(report.missing[:SHOW])
        )
        if module.missing_videos == "error":
            problems.append(f"{name}: {said} (fit and test stop on them: find them, or --data.missing_videos skip)")
        else:
            notes.append(f"{name}: {said} (left out: --data.missing_videos skip)")
    if report.undecodable:
        listed = "; ".join(f"{k}: {v}" for k, v in list(report.undecodable.items())[:SHOW])
        said = f"{_videos(len(report.undecodable))} cannot be decoded ({listed})"
        if module.bad_videos == "error":
            problems.append(
                f"{name}: {said} (fit and test stop on them: re-download or re-encode them, or --data.bad_videos skip)"
            )
        else:
            notes.append(f"{name}: {said} (left out: --data.bad_videos skip)")
    if report.official and not report.error and (report.videos, report.captions) != report.official:
        videos, captions = report.official
        notes.append(
            f"{name}: {report.videos:,} videos / {report.captions:,} captions usable, the released files give "
            f"{videos:,} / {captions:,}: numbers from this split do not compare with the published tables"
        )


def _as_json(report: SplitReport) -> dict:
    out = asdict(report)
    out["official"] = dict(zip(("videos", "captions"), report.official, strict=True)) if report.official else None
    return out


# ---- probing ------------------------------------------------------------------------------------------------------


def probe_video(source: Any, mode: str, settings: Any) -> Probe:
    """Open one video (and with ``frames``, sample it as the frame cache does); a failure is a reason, not a raise."""
    from xclip_lightning.data.frame_cache import decode_video
    from xclip_lightning.data.video import header_duration

    try:
        duration = header_duration(source.path, source.end_time)
        if mode != "frames":
            return Probe(duration)
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # skipped packets: the frames that came are what counts
            frames = decode_video(source, settings).frames.shape[0]
        return Probe(duration, frames, time.perf_counter() - start)
    except Exception as err:
        return Probe(error=" ".join(f"{type(err).__name__}: {err}".split())[:300])


def _probe_one(item: tuple) -> tuple:
    source, mode, settings = item
    return source, probe_video(source, mode, settings)


def _probe_all(sources: list, mode: str, settings: Any, workers: int, progress: bool) -> dict:
    if mode == "none" or not sources:
        return {}
    import torch
    from tqdm.auto import tqdm

    from xclip_lightning.data.frame_cache import pool_worker_init

    items = [(s, mode, settings) for s in sources]
    found = {}
    with tqdm(total=len(items), desc=f"probing videos ({mode})", unit="video", disable=not progress) as bar:
        if workers <= 1:
            for item in items:
                source, result = _probe_one(item)
                found[source] = result
                bar.update()
        else:
            context = multiprocessing.get_context("spawn" if torch.cuda.is_initialized() else None)
            with context.Pool(workers, initializer=pool_worker_init, initargs=(os.getpid(),)) as pool:
                for source, result in pool.imap_unordered(_probe_one, items, chunksize=4):
                    found[source] = result
                    bar.update()
    return found


# ---- the frame cache and the batch --------------------------------------------------------------------------------


def _cache_estimate(module: Any, settings: Any, sources: list, probes: dict, mode: str, workers: int) -> dict:
    """What is cached already, and the size and decoding time of the rest."""
    from xclip_lightning.data.frame_cache import FrameCache, decode_video

    if module.cache_dir is None:
        return {"folder": None, "note": "cache_dir is None: fit decodes every video on the fly, every epoch"}
    cache = FrameCache(module.cache_dir, settings)
    todo = [s for s in sources if not (probes.get(s) and probes[s].error) and s not in cache]
    frame_bytes = 3 * settings.image_size**2

    def frames_of(source: Any) -> int:
        probe = probes.get(source)
        if probe is not None and probe.frames is not None:
            return probe.frames
        if probe is not None and probe.duration is not None:  # one per 1/fps seconds, at least one
            return max(1, min(settings.max_frames, math.ceil(probe.duration * settings.fps)))
        return settings.max_frames  # unknown: the most it can be

    size = sum(frames_of(s) * frame_bytes + ENTRY_OVERHEAD for s in todo)
    timed = [probes[s].seconds for s in todo if s in probes and probes[s].seconds is not None]
    basis = f"measured on all {len(timed)} videos to build" if timed else None
    if not timed and mode == "header" and todo:
        sample = todo[:TIMING_SAMPLE]
        for source in sample:
            start = time.perf_counter()
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    decode_video(source, settings)
            except Exception:
                continue
            timed.append(time.perf_counter() - start)
        basis = f"decoding timed on {len(timed)} of them" if timed else None
    seconds = statistics.fmean(timed) * len(todo) / workers if timed else None
    undecodable = sum(1 for s in sources if probes.get(s) and probes[s].error)
    return {
        "folder": str(cache.folder),
        "videos": len(sources),
        "undecodable": undecodable,
        "cached": len(sources) - len(todo) - undecodable,
        "to_build": len(todo),
        "estimated_bytes": size,
        "estimated_seconds": seconds,
        "workers": workers,
        "estimate_basis": basis,
    }


def _devices(trainer: Any) -> tuple[int, str]:
    """The number of devices the trainer settings give on this machine, and how it was resolved."""
    devices, accelerator = trainer.get("devices", "auto"), str(trainer.get("accelerator", "auto"))
    if isinstance(devices, list | tuple):
        return len(devices), "listed"
    if isinstance(devices, str) and "," in devices:
        return len([d for d in devices.split(",") if d.strip()]), "listed"
    if str(devices) not in ("auto", "-1"):
        return int(devices), "given"
    if accelerator in ("auto", "gpu", "cuda"):
        import torch

        if torch.cuda.is_available():
            return torch.cuda.device_count(), f"{devices}: every GPU of this machine"
    return 1, f"{devices}: no GPU on this machine, one CPU process"


def _batch(trainer: Any, module: Any, train: SplitReport) -> dict:
    devices, resolved = _devices(trainer)
    nodes = int(trainer.get("num_nodes") or 1)
    accumulate = int(trainer.get("accumulate_grad_batches") or 1)
    global_batch = module.batch_size * devices * nodes
    return {
        "per_device": module.batch_size,
        "devices": devices,
        "devices_resolved": resolved,
        "nodes": nodes,
        "global": global_batch,  # the contrastive batch: every rank's pairs are gathered
        "accumulate_grad_batches": accumulate,
        "steps_per_epoch": train.captions // global_batch // accumulate if global_batch else 0,
    }


# ---- the report ---------------------------------------------------------------------------------------------------


def _bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError


def _duration_text(seconds: float) -> str:
    if seconds < 1:
        return "under 1 s"
    if seconds < 90:
        return f"about {seconds:.0f} s"
    minutes = seconds / 60
    return f"about {minutes:.0f} min" if minutes < 90 else f"about {minutes / 60:.1f} h"


def _videos(n: int) -> str:
    return f"{n:,} video" + ("" if n == 1 else "s")


def report_lines(report: dict) -> list[str]:
    """The report as text, line by line (the caller makes each line safe for a terminal)."""
    lines = [
        f"{report['benchmark']}: annotations {report['annotations']}, videos {report['videos']}",
        "",
        f"{'split':<6} {'videos (official)':>20} {'captions (official)':>22} {'missing':>8} {'undecodable':>12}"
        f"  duration s min / median / max",
    ]
    for name, s in report["splits"].items():
        if s["error"]:
            lines.append(f"{name:<6} cannot be read")
            continue
        official = s["official"] or {}
        videos = f"{s['videos']:,}" + (f" ({official['videos']:,})" if official else "")
        captions = f"{s['captions']:,}" + (f" ({official['captions']:,})" if official else "")
        undecodable = str(len(s["undecodable"])) if report["probe"] != "none" else "-"
        d = s["duration"]
        durations = f"{d['min']:.1f} / {d['median']:.1f} / {d['max']:.1f}" if d else "-"
        if s["unknown_duration"]:
            durations += f" ({s['unknown_duration']} without a duration)"
        lines.append(f"{name:<6} {videos:>20} {captions:>22} {len(s['missing']):>8} {undecodable:>12}  {durations}")
    cache = report["frame_cache"]
    lines.append("")
    if cache.get("folder") is None:
        lines.append(f"frame cache: none ({cache['note']})")
    else:
        built = f"{cache['cached']:,} of {_videos(cache['videos'])} cached"
        if cache["undecodable"]:
            built += f" ({cache['undecodable']:,} undecodable)"
        if cache["to_build"]:
            when = (
                f", {_duration_text(cache['estimated_seconds'])} with {cache['workers']} worker(s) "
                f"({cache['estimate_basis']})"
                if cache["estimated_seconds"] is not None
                else " (time not estimated with --probe none)"
            )
            built += f"; {cache['to_build']:,} to build: about {_bytes(cache['estimated_bytes'])}{when}"
        lines.append(f"frame cache {cache['folder']}: {built}")
    b = report["batch"]
    resolved = "" if b["devices_resolved"] in ("given", "listed") else f" ({b['devices_resolved']})"
    lines.append(
        f"batch: {b['per_device']} per device x {b['devices']} device(s){resolved} x {b['nodes']} "
        f"node(s) = {b['global']} global contrastive batch; {b['steps_per_epoch']:,} optimizer steps per epoch"
        + (f" (accumulating {b['accumulate_grad_batches']})" if b["accumulate_grad_batches"] > 1 else "")
    )
    for title, items in (("problems", report["problems"]), ("warnings", report["warnings"])):
        if items:
            lines += ["", f"{title}:", *(f"  - {item}" for item in items)]
    lines += ["", "ok: fit and test have what they need" if report["ok"] else "NOT OK: fix the problems above"]
    return lines
