"""The ``xclip-lightning`` command: LightningCLI ``fit`` / ``validate`` / ``test`` / ``predict`` with YAML configs,
and the tools of ``tools.py`` (``export``, ``convert``, ``index``, ``search``, ``serve``, ``demo``).

    xclip-lightning fit --config msrvtt/vitb32 --data.annotations /data/msrvtt_data --data.videos /data/MSRVTT/videos
    xclip-lightning test --config msrvtt/vitb32 --ckpt_path runs/msrvtt-vitb32/version_0/checkpoints/last.ckpt
    xclip-lightning fit --config configs/synthetic.yaml --print_config
    xclip-lightning export --ckpt-path CKPT --out DIR        # and index / search: see tools.py

The CLIP name, ``max_words`` and ``max_frames`` are given once, on the model, and linked to the data module (the
tokenizer and the frame slots must agree with the head's AOSM matrices). With ``--ckpt_path`` the model is built
from the CLIP config and tokenizer stored in the checkpoint, so ``test`` / ``validate`` / ``predict`` and resuming
need neither the original CLIP folder nor the original working directory. Each run writes its logs (CSV), its
checkpoints (``best-*.ckpt``: best val text->video R@1; ``last.ckpt``: the end of the latest epoch) and the
resolved config under ``runs/<name>/version_<n>/``;
``predict`` writes the text and video features there too (``predictions/``, see ``callbacks.FeatureWriter``).

Arguments are parsed before torch, transformers or Lightning is imported: ``--help`` of the tools answers at once,
and the help of Lightning's subcommands (built by importing all of them) is kept in the user's cache after its
first use, keyed by everything it is made of. An expected mistake (``errors.UserError``) is one line on stderr
and a non-zero exit; ``--debug`` or ``XCLIP_DEBUG=1`` shows its traceback.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import shutil
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

from xclip_lightning.errors import (
    DEBUG_VARIABLE,
    UsageError,
    UserError,
    check_checkpoint_file,
    debugging,
    is_lightning_alias,
)

PROG = "xclip-lightning"
LIGHTNING = ("fit", "validate", "test", "predict")
TOOLS = ("check-data", "export", "convert", "index", "search", "serve", "demo")
COMMANDS = {
    "check-data": "check a dataset before fit / test: counts, missing and undecodable videos, cache, batch",
    "fit": "train a model: --config FILE or a packaged name (msrvtt/vitb32, didemo/vitb16, synthetic, ...)",
    "validate": "evaluate a model on the val split (--ckpt_path CKPT)",
    "test": "evaluate a model on the test split, the published protocol (--ckpt_path CKPT)",
    "predict": "write the text and video features of the test split (--ckpt_path CKPT)",
    "export": "turn a checkpoint of fit into a model folder (XCLIP.from_pretrained, index --model)",
    "convert": "turn an official X-CLIP checkpoint or OpenAI CLIP weights into a model folder, offline",
    "index": "encode a folder of your videos into an index (a re-run encodes only what changed)",
    "search": "find the moments of an indexed folder that match a text",
    "serve": "keep an index loaded: a search page and a JSON API on http://127.0.0.1:8000/",
    "demo": "train and test on the embedded synthetic dataset (CPU), print the retrieval table",
}
HELP_CACHE_DISTRIBUTIONS = ("lightning", "jsonargparse", "torch", "transformers", "torchmetrics")


def usage() -> str:
    options = {
        "--debug": f"show the traceback of an error (or {DEBUG_VARIABLE}=1)",
        "--version": "print the version",
        "-h, --help": "show this help",
    }
    width = max(map(len, [*COMMANDS, *options]))
    lines = [
        f"usage: {PROG} COMMAND [options]   ({PROG} COMMAND --help for the options of one)",
        "",
        "X-CLIP text-video retrieval (Ma et al., ACM MM 2022) in PyTorch Lightning.",
        "",
        "commands:",
        *(f"  {name:<{width}}  {line}" for name, line in COMMANDS.items()),
        "",
        "options:",
        *(f"  {name:<{width}}  {line}" for name, line in options.items()),
    ]
    return "\n".join(lines)


def main(args: Sequence[str] | None = None) -> None:
    """Entry point of ``xclip-lightning``; ``main([...])`` runs it from Python (as the tests do)."""
    argv = list(sys.argv[1:] if args is None else args)
    if "--debug" in argv:
        argv.remove("--debug")
        os.environ[DEBUG_VARIABLE] = "1"  # for the parsers and the subprocesses too
    command = argv[0] if argv and argv[0] in COMMANDS else None
    try:
        run(argv)
    except UserError as err:
        if debugging():
            raise
        from xclip_lightning.tools import terminal_safe

        print(f"{PROG}{f' {command}' if command else ''}: {terminal_safe(err)}", file=sys.stderr)
        raise SystemExit(err.exit_code) from None


def run(argv: list[str]) -> None:
    """Dispatch ``argv`` (without the program name) to its command."""
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), file=sys.stdout if argv else sys.stderr)
        if not argv:
            raise SystemExit(2)
        return
    if argv[0] == "--version":
        print(f"{PROG} {metadata.version('xclip-lightning')}")
        return
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        close = difflib.get_close_matches(command, COMMANDS, n=2, cutoff=0.5)
        hint = f"did you mean {' or '.join(close)}? " if close else ""
        raise UsageError(f"unknown command {command!r} ({hint}commands: {', '.join(COMMANDS)})")
    from xclip_lightning.packaged import resolve_configs

    rest = resolve_configs(rest)
    if command in TOOLS:
        from xclip_lightning import tools

        getattr(tools, command.replace("-", "_"))(rest)
    elif rest in (["--help"], ["-h"]):
        print(lightning_help(command), end="")
    else:
        _check_checkpoint_argument(rest)
        from xclip_lightning.lightning_cli import run_cli

        run_cli([command, *rest])


def _check_checkpoint_argument(argv: Sequence[str]) -> None:
    """A ``--ckpt_path`` that names no file fails before Lightning is imported (Lightning's own names pass)."""
    from xclip_lightning.packaged import option_values

    for _, value, _ in option_values(argv, "--ckpt_path"):
        if value and value != "null" and not is_lightning_alias(value):
            check_checkpoint_file(value)


def lightning_help(command: str) -> str:
    """The ``--help`` of a LightningCLI subcommand, from the user's cache when nothing it depends on changed
    (this package's files, the versions of Lightning, jsonargparse, torch, transformers, the terminal width)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / PROG
    file = cache / f"help-{command}-{_help_key(command)}.txt"
    try:
        return file.read_text(encoding="utf-8")
    except OSError:
        pass
    from contextlib import redirect_stdout
    from io import StringIO

    from xclip_lightning.lightning_cli import run_cli

    text = StringIO()
    with redirect_stdout(text):
        try:
            run_cli([command, "--help"])
        except SystemExit as exit_:
            if exit_.code not in (0, None):
                raise
    try:  # best effort: a read-only home still gets its help, only slower
        cache.mkdir(parents=True, exist_ok=True)
        for old in cache.glob(f"help-{command}-*.txt"):
            old.unlink(missing_ok=True)
        partial = file.with_name(f".{file.name}.{os.getpid()}")
        partial.write_text(text.getvalue(), encoding="utf-8")
        partial.replace(file)
    except OSError:
        pass
    return text.getvalue()


def _help_key(command: str) -> str:
    digest = hashlib.sha256(f"{command}|{sys.version}|{shutil.get_terminal_size().columns}|{os.cpu_count()}".encode())
    package = Path(__file__).parent
    for file in sorted(package.rglob("*")):
        if file.suffix in (".py", ".yaml"):
            stat = file.stat()
            digest.update(f"{file.relative_to(package)}|{stat.st_mtime_ns}|{stat.st_size}\n".encode())
    for name in HELP_CACHE_DISTRIBUTIONS:
        try:
            digest.update(f"{name}=={metadata.version(name)}\n".encode())
        except metadata.PackageNotFoundError:
            digest.update(f"{name} missing\n".encode())
    return digest.hexdigest()[:16]


if __name__ == "__main__":
    main()  # from sys.argv, as under torchrun -m xclip_lightning.cli fit ...
