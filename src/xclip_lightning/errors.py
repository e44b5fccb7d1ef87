"""The one base class of the mistakes a user can make and fix: a missing file, a malformed line, a checkpoint of the
wrong kind. Their messages name the thing, what is wrong and the fix; the command line prints them as one line
with no traceback (``--debug`` or ``XCLIP_DEBUG=1`` shows it). Imports nothing heavy: every command line passes
through it. Anything else that escapes a command is a bug, and keeps its traceback."""

import os
from pathlib import Path

DEBUG_VARIABLE = "XCLIP_DEBUG"
LIGHTNING_ALIASES = ("last", "best", "hpc", "registry")  # ckpt_path values Lightning resolves itself (registry:...)


class UserError(Exception):
    """A mistake in the inputs, said in words a user can act on."""

    exit_code = 1


class UsageError(UserError):
    """A command line that cannot be run as written (an unknown command or option value)."""

    exit_code = 2


def debugging() -> bool:
    """Whether errors keep their tracebacks (``--debug`` or ``XCLIP_DEBUG=1``)."""
    return os.environ.get(DEBUG_VARIABLE, "") not in ("", "0")


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be used: missing, of another kind, or written by a newer version."""


class CorruptCheckpointError(CheckpointError):
    """A checkpoint that cannot be read, or whose contents do not match the checksum written when it was saved."""


def is_lightning_alias(path: str | os.PathLike) -> bool:
    """Whether ``ckpt_path`` is one of Lightning's names (``last``, ``best``, ...) rather than a file."""
    return str(path).split(":")[0] in LIGHTNING_ALIASES


def check_checkpoint_file(path: str | os.PathLike) -> None:
    """``CheckpointError`` unless ``path`` is a file (checked before torch is imported: a typo fails at once)."""
    if Path(path).is_dir():
        raise CheckpointError(
            f"{path}: a folder, not a checkpoint file (a model folder written by export is used with "
            f"XCLIP.from_pretrained or index --model)"
        )
    if not Path(path).is_file():
        raise CheckpointError(f"{path}: no such checkpoint file (fit writes them to runs/NAME/version_N/checkpoints/)")
