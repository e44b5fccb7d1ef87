"""``xclip-lightning export | index | search``: a trained model on your own videos.

xclip-lightning export --ckpt_path runs/x/version_0/checkpoints/last.ckpt --out models/my-xclip
xclip-lightning index --model models/my-xclip --videos ~/videos --out ~/videos.xindex
xclip-lightning search --index ~/videos.xindex "a dog catches a frisbee" --top-k 10 [--json] [--html results.html]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import NoReturn

from xclip_lightning.errors import UserError, check_checkpoint_file

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # C0, DEL and C1: escape sequences, bells, carriage returns


def terminal_safe(text: object) -> str:
    """``text`` with control characters written as ``\\xNN``: a file name cannot move the cursor, retitle the
    window, or hide itself from the person reading the output."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", str(text))


class _ShowDefaults(argparse.HelpFormatter):
    """Help that ends each option with its default, unless the text already says it or there is none."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            return text
        shown = " ".join(map(str, action.default)) if isinstance(action.default, list | tuple) else "%(default)s"
        return f"{text} (default: {shown})"


class _Parser(argparse.ArgumentParser):
    """An argument parser whose mistakes are one line (the usage is in ``--help``), exit 2, and whose help shows
    every default."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(formatter_class=_ShowDefaults, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _zero_or_more(zero_means: str) -> Callable[[str], int]:
    """An argument type: an integer of 0 or more, where 0 means ``zero_means`` (said when the value is refused)."""

    def parse(text: str) -> int:
        value = int(text)
        if value < 0:
            raise argparse.ArgumentTypeError(f"must be 0 ({zero_means}) or more, got {value}")
        return value

    parse.__name__ = "int"  # argparse names the type in its messages
    return parse


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def check_data(argv: Sequence[str]) -> None:
    """Check a dataset before fit / test: per split, the videos and captions against the official counts, the
    videos missing on disk or that cannot be decoded, durations; the frame cache to build; the global batch. Exit 0
    only when fit and test have what they need."""
    parser = _Parser(
        prog="xclip-lightning check-data",
        description=check_data.__doc__,
        epilog="Every other option is fit's: --config FILE|NAME, --data.*, --model.*, --trainer.* "
        "(xclip-lightning fit --help).",
    )
    parser.add_argument(
        "--probe",
        choices=("none", "header", "frames"),
        default="header",
        help="none: open no video; header: open each container and its video stream (fast); frames: decode the "
        "frames fit samples (what the frame cache build does)",
    )
    parser.add_argument(
        "--workers",
        type=_positive,
        default=None,
        help="probing processes (default: --data.prepare_workers, else --data.num_workers)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of the report")
    args, rest = parser.parse_known_args(argv)
    from xclip_lightning.check_data import report_lines, run

    report = run(rest, args.probe, args.workers, progress=not args.json)
    print(json.dumps(report, indent=1) if args.json else "\n".join(map(terminal_safe, report_lines(report))))
    if not report["ok"]:
        raise SystemExit(1)


def export(argv: Sequence[str]) -> None:
    """A Lightning checkpoint -> a folder loadable by ``XCLIP.from_pretrained`` (safetensors, configs, tokenizer)."""
    parser = _Parser(prog="xclip-lightning export", description=export.__doc__)
    parser.add_argument(
        "--ckpt-path",
        "--ckpt_path",
        dest="ckpt_path",
        required=True,
        help="a checkpoint written by xclip-lightning fit",
    )
    parser.add_argument("--out", required=True, help="folder to write")
    parser.add_argument("--license", default="mit", help="the licence field of the model card (README.md)")
    args = parser.parse_args(argv)
    check_checkpoint_file(args.ckpt_path)
    from xclip_lightning.card import model_card, run_metrics, write_card
    from xclip_lightning.lightning_module import XCLIPRetrieval, read_checkpoint

    module = XCLIPRetrieval.load_from_checkpoint(args.ckpt_path, map_location="cpu")
    folder = module.model.save_pretrained(args.out)
    checkpoint = read_checkpoint(args.ckpt_path)  # verified once already: not hashed again
    card = model_card(
        f"X-CLIP: {Path(args.out).name}",
        f"`xclip-lightning fit` checkpoint `{args.ckpt_path}` (epoch {checkpoint.get('epoch')}, step "
        f"{checkpoint.get('global_step')})",
        checkpoint.get("hyper_parameters", {}).get("clip_name_or_path"),
        module.model.head.config(),
        checkpoint.get("datamodule_hyper_parameters"),
        run_metrics(args.ckpt_path, checkpoint),
        args.license,
    )
    write_card(folder, card)
    print(f"exported {args.ckpt_path} to {folder} (load it with XCLIP.from_pretrained('{folder}'))")


def index(argv: Sequence[str]) -> None:
    """Sample and encode every video under a folder into an index; re-running encodes only new or changed files."""
    from xclip_lightning.index.defaults import DEFAULT_BATCH_SIZE, DEFAULT_WINDOW, DEFAULT_WORKERS

    parser = _Parser(prog="xclip-lightning index", description=index.__doc__)
    parser.add_argument(
        "--model",
        help="a folder written by export (the full X-CLIP score), or any CLIP folder or hub name (zero-shot)",
    )
    parser.add_argument("--videos", help="folder searched recursively for video files")
    parser.add_argument("--out", help="index folder (created, or updated when it exists)")
    parser.add_argument(
        "--verify",
        metavar="INDEX",
        help="check every file of the index INDEX (shards, entries, thumbnails) and drop what is damaged; the next "
        "`index` encodes those videos again",
    )
    parser.add_argument("--fps", type=_positive_float, default=1.0, help="frames sampled per second (default 1)")
    parser.add_argument(
        "--window",
        type=_non_negative_float,
        default=DEFAULT_WINDOW,
        help="seconds per searchable moment of a long video; a clip under 1.5 windows stays one moment; 0: one "
        f"moment per file (default {DEFAULT_WINDOW:g})",
    )
    parser.add_argument(
        "--stride",
        type=_positive_float,
        default=None,
        help="seconds between the starts of overlapping moments, e.g. 15 with --window 30: an event on a moment's "
        "boundary lies inside the next one, for twice the rows (default: the window, no overlap)",
    )
    parser.add_argument(
        "--batch-size",
        type=_positive,
        default=DEFAULT_BATCH_SIZE,
        help=f"moments encoded together (default {DEFAULT_BATCH_SIZE})",
    )
    parser.add_argument(
        "--workers",
        type=_zero_or_more("decode in this process"),
        default=DEFAULT_WORKERS,
        help=f"decoding processes (default {DEFAULT_WORKERS}: this machine's cores, at most 8)",
    )
    parser.add_argument("--device", default="auto", help="auto (a GPU when there is one), cpu, cuda, cuda:1 ...")
    parser.add_argument(
        "--approximate",
        choices=("auto", "on", "off"),
        default="auto",
        help="an approximate (FAISS IVF) first stage for search: auto = from 100,000 moments when faiss is installed",
    )
    parser.add_argument("--half", action="store_true", help="store the features in fp16 (half the disk and memory)")
    parser.add_argument(
        "--devices", type=_positive, default=1, help="processes (GPUs, or CPU processes with --device cpu) under DDP"
    )
    parser.add_argument("--num-nodes", type=_positive, default=1, help="machines (torchrun / SLURM; a shared --out)")
    parser.add_argument(
        "--prune",
        action="store_true",
        help="remove the indexed videos whose files are gone even when they are more than half of the index "
        "(without it such an update stops: a wrong --videos or a drive not mounted would empty the index)",
    )
    args = parser.parse_args(argv)
    if args.verify:
        return _verify(args.verify)
    missing = [f"--{name}" for name in ("model", "videos", "out") if getattr(args, name) is None]
    if missing:
        parser.error(f"the following arguments are required: {', '.join(missing)} (or --verify INDEX)")
    if args.stride is not None and not args.window:
        parser.error("--stride needs a --window: with --window 0 each file is one moment")
    from xclip_lightning.index.video_index import VideoIndex

    built = VideoIndex.build(
        args.model, args.videos, args.out, fps=args.fps, batch_size=args.batch_size, workers=args.workers,
        window=args.window or None, stride=args.stride, device=args.device, approximate=args.approximate,
        half=args.half, devices=args.devices, num_nodes=args.num_nodes, prune=args.prune,
    )  # fmt: skip
    if built.rank != 0:
        return
    out = terminal_safe(args.out)
    videos = len({e.path for e in built.entries})
    print(f"{out}: {videos} videos indexed as {len(built)} moments ({built.encoded} new or changed videos encoded now)")
    if built.removed:
        print(f"{built.removed} video(s) removed: their files are gone")
    for title, lines in (
        ("file(s) could not be indexed", [f"{path}: {reason}" for path, reason in built.report.failures.items()]),
        ("folder(s) could not be read", built.unreadable),
    ):
        if lines:
            print(f"{len(lines)} {title}:")
            for line in lines:
                print(f"  {terminal_safe(line)}")


def _verify(folder: str) -> None:
    from xclip_lightning.index.store import IndexStore
    from xclip_lightning.index.verify import verify_index

    found = verify_index(folder)
    if not found.problems:
        print(f"{terminal_safe(folder)}: all {found.checked} moments, their shards and thumbnails are as written")
        return
    print(f"{terminal_safe(folder)}: {len(found.problems)} problem(s):")
    for line in found.problems:
        print(f"  {terminal_safe(line)}")
    meta = IndexStore.open(folder).meta
    print(
        f"dropped {found.dropped} moment(s) of {len(found.videos)} video(s); to encode them again run:\n"
        f"  xclip-lightning index --model {meta.get('model')} --videos {meta.get('videos')} --out {folder}"
    )
    raise SystemExit(1)


def search(argv: Sequence[str]) -> None:
    """Rank the indexed videos for each text query by the full X-CLIP score."""
    from xclip_lightning.index.defaults import DEFAULT_CANDIDATES

    parser = _Parser(prog="xclip-lightning search", description=search.__doc__)
    parser.add_argument("queries", nargs="+", help="one or more text queries")
    parser.add_argument("--index", required=True, help="folder written by xclip-lightning index")
    parser.add_argument("--top-k", type=_positive, default=10, help="results per query (default 10)")
    parser.add_argument(
        "--candidates",
        type=_zero_or_more("score every video"),
        default=DEFAULT_CANDIDATES,
        help=f"moments re-scored with the full score per query; 0 = score every moment (default {DEFAULT_CANDIDATES})",
    )
    parser.add_argument(
        "--min-score", type=float, default=None, help="drop hits scoring below this (logits; default: keep all)"
    )
    parser.add_argument(
        "--per-video", type=_positive, default=None, help="at most N moments of one video (default: no limit)"
    )
    parser.add_argument("--model", help="model folder (default: the one recorded in the index)")
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print one JSON document instead of a table")
    output.add_argument("--jsonl", action="store_true", help="print one JSON object per hit (query, rank, id, ...)")
    parser.add_argument("--html", help="also write an HTML page with the sampled frames of each result")
    args = parser.parse_args(argv)
    if args.html and not Path(args.html).parent.is_dir():
        parser.error(f"--html {args.html}: the folder {Path(args.html).parent} does not exist")
    from xclip_lightning.index.records import clock
    from xclip_lightning.index.video_index import VideoIndex, scorer_name

    found = VideoIndex.load(args.index, model=args.model)
    hits = found.search(args.queries, k=args.top_k, candidates=args.candidates or None, per_video=args.per_video)
    if args.min_score is not None:
        hits = [[h for h in results if h.score >= args.min_score] for results in hits]
    scorer = scorer_name(found.model)
    if args.jsonl:
        for query, results in zip(args.queries, hits, strict=True):
            for hit in results:
                print(json.dumps({"query": query, "scorer": scorer, **asdict(hit)}))
    elif args.json:
        pairs = zip(args.queries, hits, strict=True)
        print(json.dumps([{"query": q, "scorer": scorer, "results": [asdict(h) for h in r]} for q, r in pairs]))
    else:
        print(f"scoring: {scorer}")
        for query, results in zip(args.queries, hits, strict=True):
            print(terminal_safe(query))
            for hit in results:
                path = terminal_safe(hit.path)
                span = f"{clock(hit.start)}-{clock(hit.end)}"
                print(f"  {hit.rank:3d}. {hit.score:7.2f}  {path}  {span}  (best frame at {clock(hit.best_time)})")
    if args.html:
        from xclip_lightning.serve.report import write_html

        page = write_html(args.html, args.index, args.queries, hits, scorer, found.thumbnail)
        print(f"wrote {terminal_safe(page)}")


def demo(argv: Sequence[str]) -> None:
    """Train and test on the embedded synthetic dataset and print the retrieval table (see ``demo.py``)."""
    from xclip_lightning.demo import main as run_demo

    run_demo(argv)


def convert(argv: Sequence[str]) -> None:
    """Turn an official X-CLIP / CLIP4Clip checkpoint into a model folder, or OpenAI CLIP weights into a CLIP
    folder (see convert.py); loading never runs pickled code."""
    parser = _Parser(prog="xclip-lightning convert", description=convert.__doc__)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--official", help="an official checkpoint (pytorch_model.bin.N): -> XCLIP.from_pretrained")
    source.add_argument("--openai-clip", help="an OpenAI CLIP state dict: -> a CLIP folder for clip_name_or_path")
    parser.add_argument("--out", required=True, help="folder to write")
    parser.add_argument("--license", default="mit", help="the licence field of the model card of --official")
    parser.add_argument(
        "--tokenizer",
        default=None,
        help="CLIP's tokenizer: OpenAI's bpe_simple_vocab_16e6.txt.gz (as the CLIP and X-CLIP repositories ship it; "
        "no download), a tokenizer folder, or a hub name (default: openai/clip-vit-base-patch32, from the Hub)",
    )
    args = parser.parse_args(argv)
    from xclip_lightning import convert as conversions
    from xclip_lightning.model.head import DEFAULT_CLIP

    tokenizer = args.tokenizer or DEFAULT_CLIP
    if args.official:
        folder = conversions.convert_official(args.official, args.out, tokenizer, args.license)
        print(f"converted {terminal_safe(args.official)} to {terminal_safe(folder)} (XCLIP.from_pretrained)")
    else:
        folder = conversions.convert_openai_clip(args.openai_clip, args.out, tokenizer)
        print(f"converted {terminal_safe(args.openai_clip)} to {terminal_safe(folder)} (use as clip_name_or_path)")


def serve(argv: Sequence[str]) -> None:
    """Keep the model and an index loaded and answer queries over HTTP: a search page at / and a JSON API
    (/api/search, /api/similar, /api/health, /media/ID, /thumbs/ID; see the README)."""
    from xclip_lightning.index.defaults import DEFAULT_CANDIDATES

    parser = _Parser(prog="xclip-lightning serve", description=serve.__doc__)
    parser.add_argument("--index", required=True, help="folder written by xclip-lightning index")
    parser.add_argument("--model", help="model folder (default: the one recorded in the index)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on; any but loopback needs --token")
    parser.add_argument("--port", type=_port, default=8000, help="port to listen on; 0 = any free one")
    parser.add_argument(
        "--token",
        default=os.environ.get(TOKEN_VARIABLE),
        help=f"every request must carry it (Authorization: Bearer TOKEN, or open /?token=TOKEN once); also from "
        f"${TOKEN_VARIABLE}, which keeps it out of the process list (default: none, loopback only)",
    )
    parser.add_argument(
        "--candidates",
        type=_zero_or_more("score every moment"),
        default=DEFAULT_CANDIDATES,
        help="moments re-scored with the full score per query; 0 = score every moment",
    )
    args = parser.parse_args(argv)
    if not _loopback(args.host) and not args.token:
        parser.error(
            f"--host {args.host} would let anyone on the network search and play the indexed videos: give --token "
            f"(or ${TOKEN_VARIABLE}), or leave --host out to serve this machine only"
        )
    if args.token is not None and len(args.token) < 8:
        parser.error("--token: use at least 8 characters")
    try:
        import uvicorn

        from xclip_lightning.serve.app import create_app
    except ImportError as err:
        raise UserError(f"serve needs FastAPI and uvicorn ({err}): pip install 'xclip-lightning[serve]'") from None
    import socket

    from xclip_lightning.index.video_index import VideoIndex

    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((args.host, args.port))
    except OSError as err:
        listener.close()
        raise UserError(f"cannot listen on {args.host}:{args.port} ({err.strerror}): choose another --port") from None
    found = VideoIndex.load(args.index, model=args.model)
    app = create_app(found, token=args.token, candidates=args.candidates or None)  # warmed up: ready to answer
    host, port = listener.getsockname()[:2]
    url = f"http://{f'[{host}]' if family == socket.AF_INET6 else host}:{port}/"

    class Server(uvicorn.Server):
        async def startup(self, sockets: list | None = None) -> None:
            await super().startup(sockets)
            if self.started:
                print(f"serving {terminal_safe(args.index)} ({len(found)} moments) at {url} (Ctrl-C stops)", flush=True)

    with contextlib.suppress(KeyboardInterrupt):  # uvicorn shuts down gracefully on Ctrl-C, then raises it again
        Server(uvicorn.Config(app, log_level="warning", access_log=False)).run(sockets=[listener])
    print("stopped", flush=True)


TOKEN_VARIABLE = "XCLIP_SERVE_TOKEN"


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be from 0 to 65535, got {value}")
    return value


def _loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
