"""The ``xclip-lightning`` command: LightningCLI ``fit`` / ``validate`` / ``test`` / ``predict`` with YAML configs.

    xclip-lightning fit --config configs/msrvtt/vitb32.yaml --data.annotations /data/msrvtt_data \\
        --data.videos /data/MSRVTT/videos/all
    xclip-lightning test --config configs/msrvtt/vitb32.yaml --ckpt_path runs/msrvtt-vitb32/version_0/\\
        checkpoints/last.ckpt
    xclip-lightning fit --config configs/synthetic.yaml --print_config
    xclip-lightning export --ckpt_path CKPT --out DIR        # and index / search: see tools.py

The CLIP name, ``max_words`` and ``max_frames`` are given once, on the model, and linked to the data module (the
tokenizer and the frame slots must agree with the head's AOSM matrices). With ``--ckpt_path`` the model is built
from the CLIP config and tokenizer stored in the checkpoint, so ``test`` / ``validate`` / ``predict`` and resuming
need neither the original CLIP folder nor the original working directory. Each run writes its logs (CSV), its
checkpoints (``best-*.ckpt``: best val text->video R@1; ``last.ckpt``: the end of the latest epoch) and the
resolved config under ``runs/<name>/version_<n>/``;
``predict`` writes the text and video features there too (``predictions/``, see ``callbacks.FeatureWriter``).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from xclip_lightning.callbacks import FeatureWriter
from xclip_lightning.data.datamodule import VideoTextDataModule
from xclip_lightning.lightning_module import XCLIPRetrieval, clip_from_checkpoint

TOOLS = ("export", "index", "search", "demo", "convert")
CONFIGS = Path(__file__).parent / "configs"  # shipped in the wheel: --config msrvtt/vitb32 finds them anywhere
DESCRIPTION = (
    "X-CLIP text-video retrieval. Training: fit / validate / test / predict (LightningCLI; --config takes a YAML "
    "file or a packaged config by name, e.g. msrvtt/vitb32, didemo/vitb16, ablations/tab7_mean_mean, synthetic). "
    "Your own videos: export / index / search (e.g. `xclip-lightning search --help`). The demo: demo."
)  # subcommands beside LightningCLI's fit / validate / test / predict


def packaged_config(name: str) -> Path | None:
    """``msrvtt/vitb32`` (or ``msrvtt/vitb32.yaml``) -> the packaged file, when there is one."""
    candidate = CONFIGS / (name if name.endswith(".yaml") else f"{name}.yaml")
    return candidate if candidate.is_file() and CONFIGS in candidate.resolve().parents else None


def resolve_configs(argv: Sequence[str]) -> list[str]:
    """``--config NAME`` of a packaged config becomes its path; a file that exists is always taken as it is."""
    out = list(argv)
    for i, arg in enumerate(out):
        value, prefix = None, ""
        if arg.startswith("--config="):
            value, prefix = arg.removeprefix("--config="), "--config="
        elif arg == "--config" and i + 1 < len(out):
            value, i = out[i + 1], i + 1
        if value is not None and not Path(value).exists() and (found := packaged_config(value)) is not None:
            out[i] = prefix + str(found)
    return out


MONITOR = "val/t2v_R1"  # official model selection: the best text->video R@1 on the val split


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


def main(args: Sequence[str] | None = None) -> None:
    """Entry point of ``xclip-lightning``; ``main([...])`` runs it from Python (as the tests do)."""
    argv = resolve_configs(sys.argv[1:] if args is None else args)
    if args is None:
        sys.argv[1:] = argv  # the command line as LightningCLI will read it, packaged configs resolved
    if argv and argv[0] in TOOLS:
        from xclip_lightning import tools  # the search tools do not need LightningCLI
        from xclip_lightning.index.store import VideoIndexError

        try:
            return getattr(tools, argv[0])(argv[1:])
        except VideoIndexError as err:  # an expected mistake: one line, no traceback
            print(f"xclip-lightning {argv[0]}: {tools.terminal_safe(err)}", file=sys.stderr)
            raise SystemExit(1) from None
    XCLIPCLI(
        XCLIPRetrieval,
        VideoTextDataModule,
        seed_everything_default=42,  # official seed
        trainer_defaults=trainer_defaults(),
        save_config_kwargs={"overwrite": True},
        args=argv if args is not None else None,  # None: LightningCLI reads sys.argv (rewritten below) itself
        parser_kwargs={"description": DESCRIPTION},
    )


if __name__ == "__main__":
    main()  # from sys.argv, as under torchrun -m xclip_lightning.cli fit ... (no args: LightningCLI does not warn)
