"""The LightningCLI of ``xclip-lightning fit / validate / test / predict``: the checkpoint callbacks, the linked
model and data arguments, the trainer defaults. ``cli.py`` dispatches to it;
the demo builds it directly."""

from __future__ import annotations

from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from xclip_lightning.callbacks import FeatureWriter
from xclip_lightning.lightning_module import clip_from_checkpoint
from xclip_lightning.packaged import CONFIGS

__all__ = ["CONFIGS", "MONITOR", "XCLIPCLI", "trainer_defaults"]

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
