"""The LightningCLI of ``xclip-lightning fit / validate / test / predict``: the checkpoint callbacks, the linked
model and data arguments, the trainer defaults, one-line argument errors. ``cli.py`` and the demo run it through
``run_cli``."""

from __future__ import annotations

import inspect
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import NoReturn

from jsonargparse import Namespace
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from xclip_lightning.callbacks import FeatureWriter
from xclip_lightning.data.datamodule import VideoTextDataModule
from xclip_lightning.errors import debugging, is_lightning_alias
from xclip_lightning.lightning_module import XCLIPRetrieval, clip_from_checkpoint, read_checkpoint
from xclip_lightning.packaged import CONFIGS, option_values

__all__ = ["CONFIGS", "MONITOR", "XCLIPCLI", "fit_config", "run_cli", "trainer_defaults"]

MONITOR = "val/t2v_R1"  # official model selection: the best text->video R@1 on the val split
# how an evaluation is scored, not what was trained: set at test time, they win over the checkpoint's values
EVALUATION_OPTIONS = ("eval_dsl", "eval_qb_norm", "qb_norm_bank_size", "eval_block_elements")


class XCLIPCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        for name in ("clip_name_or_path", "max_words", "max_frames"):
            parser.link_arguments(f"model.{name}", f"data.{name}")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        # Lightning's save_last copies only checkpoints that were saved, i.e. the last *improvement*: a second
        # callback without a monitor writes last.ckpt at the end of every epoch instead.
        parser.add_lightning_class_args(ModelCheckpoint, "last_checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": MONITOR,
                "checkpoint.mode": "max",
                "checkpoint.save_last": False,
                "checkpoint.filename": "best-epoch{epoch}-t2v_R1_{val/t2v_R1:.2f}",
                "checkpoint.auto_insert_metric_name": False,
                "last_checkpoint.filename": "last",
                "last_checkpoint.monitor": None,
                "last_checkpoint.save_top_k": 1,
                "last_checkpoint.enable_version_counter": False,
            }
        )

    def parse_arguments(self, parser: LightningArgumentParser, args: object) -> None:
        """Parses, then verifies ``--ckpt_path`` before Lightning reads its hyper-parameters (``read_checkpoint``:
        one line naming the file for a missing, damaged, foreign or newer checkpoint)."""
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if path is not None and not is_lightning_alias(path):
            read_checkpoint(path)

    def _parse_ckpt_path(self) -> None:
        """Lightning puts the checkpoint's hyper-parameters over the parsed config. The evaluation options the user
        set (on the command line, or in a config away from their defaults) win over the training run's, so
        ``test --ckpt_path X --model.eval_dsl true`` logs the DSL numbers."""
        subcommand = self.config.get("subcommand")
        model = self.config[subcommand].get("model") if subcommand else None
        defaults = inspect.signature(XCLIPRetrieval.__init__).parameters

        def set_by_user(name: str) -> bool:
            typed = any(True for _ in option_values(sys.argv[1:], f"--model.{name}"))
            return typed or model[name] != defaults[name].default

        chosen = {name: model[name] for name in EVALUATION_OPTIONS if model is not None and set_by_user(name)}
        super()._parse_ckpt_path()
        for name, value in chosen.items():
            self.config[subcommand]["model"][name] = value

    def instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else {}
        if config.get("weights_only") is None and "weights_only" in config:
            config["weights_only"] = True  # never run pickled code from a checkpoint, whatever torch's default
        with clip_from_checkpoint(config.get("ckpt_path")):
            super().instantiate_classes()


def trainer_defaults() -> dict:
    return {
        "logger": {
            "class_path": "lightning.pytorch.loggers.CSVLogger",
            "init_args": {"save_dir": "runs", "name": "xclip"},
        },
        "callbacks": [LearningRateMonitor(logging_interval="step"), FeatureWriter()],
        "log_every_n_steps": 10,
    }


class OneLineErrors(LightningArgumentParser):
    """LightningCLI's parser, whose mistakes are one line (jsonargparse prints the whole usage, 100+ lines, first)."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error or debugging():  # jsonargparse catches these itself, or the user asked for all
            super().error(message, ex)
        said = " ".join(message.split())
        words = [w for w in self.prog.split()[1:] if w != "[options]"]  # the subcommand, as jsonargparse names it
        prog = " ".join(["xclip-lightning", *words])  # not pytest's name when run from the tests
        print(f"{prog}: {said[:600]} (see {prog} --help)", file=sys.stderr)
        raise SystemExit(2)


@contextmanager
def _command_line(argv: Sequence[str]) -> Iterator[None]:
    """``sys.argv`` as if ``argv`` had been typed: LightningCLI reads it there (given as ``args`` from a command
    line, it warns), and DDP's launcher starts the other ranks with it. The program name stays."""
    saved = sys.argv
    sys.argv = [saved[0] if saved else "xclip-lightning", *argv]
    try:
        yield
    finally:
        sys.argv = saved


class _ParseOnly(XCLIPCLI):
    """Parses and checks; nothing is seeded or built: the configuration alone is wanted."""

    def _set_seed(self) -> None:
        pass

    def instantiate_classes(self) -> None:
        pass


def fit_config(argv: Sequence[str], prog: str) -> Namespace:
    """The configuration ``fit`` would run with for ``argv`` (``--config``, ``--data.*``, ``--trainer.*``, ...),
    parsed, linked and checked by the same parser, but with nothing instantiated (no model, no CLIP weights)."""
    with _command_line(argv):
        cli = _ParseOnly(
            XCLIPRetrieval,
            VideoTextDataModule,
            seed_everything_default=42,
            trainer_defaults=trainer_defaults(),
            parser_class=OneLineErrors,
            parser_kwargs={"prog": prog},
            run=False,
        )
    return cli.config


def run_cli(argv: Sequence[str], run: bool = True) -> XCLIPCLI:
    """The LightningCLI on ``argv`` (``["fit", "--config", ...]``, or without a subcommand when ``run`` is False)."""
    with _command_line(argv):
        return XCLIPCLI(
            XCLIPRetrieval,
            VideoTextDataModule,
            seed_everything_default=42,  # official seed
            trainer_defaults=trainer_defaults(),
            save_config_kwargs={"overwrite": True},
            parser_class=OneLineErrors,
            run=run,
        )
