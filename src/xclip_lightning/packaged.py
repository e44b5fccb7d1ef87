"""The configs shipped in the wheel (``xclip_lightning/configs``), found by name: ``--config msrvtt/vitb32`` works
from any directory. Imports nothing heavy: every command line passes through it."""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Sequence
from pathlib import Path

from xclip_lightning.errors import UsageError

CONFIGS = Path(__file__).parent / "configs"  # shipped in the wheel: --config msrvtt/vitb32 finds them anywhere


def packaged_config(name: str) -> Path | None:
    """``msrvtt/vitb32`` (or ``msrvtt/vitb32.yaml``) -> the packaged file, when there is one."""
    candidate = CONFIGS / (name if name.endswith(".yaml") else f"{name}.yaml")
    return candidate if candidate.is_file() and CONFIGS in candidate.resolve().parents else None


class UnknownConfig(UsageError, ValueError):
    """``--config`` names neither a file nor a packaged config."""


def names() -> list[str]:
    """Every packaged config's name (``msrvtt/vitb32``, ...)."""
    return sorted(str(p.relative_to(CONFIGS).with_suffix("")) for p in CONFIGS.rglob("*.yaml"))


def option_values(argv: Sequence[str], name: str) -> Iterator[tuple[int, str, str]]:
    """Each value the command line ``argv`` gives the option ``name`` (``--config``), as ``--config X`` or
    ``--config=X``: (its position in ``argv``, the value, what precedes it in that argument)."""
    for i, arg in enumerate(argv):
        if arg.startswith(f"{name}="):
            yield i, arg.removeprefix(f"{name}="), f"{name}="
        elif arg == name and i + 1 < len(argv):
            yield i + 1, argv[i + 1], ""


def resolve_configs(argv: Sequence[str]) -> list[str]:
    """``--config NAME`` of a packaged config becomes its path; a file is always taken as it is (a folder of the
    same name in the current directory is not a config) if it can be read as text; anything else is
    ``UnknownConfig``, naming close names."""
    out = list(argv)
    for i, value, prefix in option_values(argv, "--config"):
        if Path(value).is_file():
            _check_readable(value)
            continue
        if (found := packaged_config(value)) is None:
            close = difflib.get_close_matches(value.removesuffix(".yaml"), names(), n=4, cutoff=0.5)
            hint = f"did you mean {', '.join(close)}?" if close else f"packaged: {', '.join(names())}"
            raise UnknownConfig(f"--config {value}: no such file, and no packaged config of that name ({hint})")
        out[i] = prefix + str(found)
    return out


def _check_readable(config: str) -> None:
    """A config file that cannot be read as a YAML mapping is named here, with the line of a YAML error."""
    import yaml  # PyYAML, which jsonargparse reads configs with

    try:
        content = yaml.safe_load(Path(config).read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise UnknownConfig(f"--config {config}: not a YAML text file ({err.reason} at byte {err.start})") from None
    except OSError as err:
        raise UnknownConfig(f"--config {config}: cannot be read ({err.strerror})") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or type(err).__name__
        raise UnknownConfig(f"--config {config}: not valid YAML ({problem}{where})") from None
    if content is not None and not isinstance(content, dict):
        raise UnknownConfig(
            f"--config {config}: holds a {type(content).__name__}, not a mapping of options (model:, data:, trainer:)"
        )
