"""Models people can share: ``export`` and ``convert --official`` write a folder in the Hub's layout whose README.md
is a model card (licence, base CLIP, data, head settings, the run's metrics), and ``XCLIP.from_pretrained`` loads it."""

from __future__ import annotations

import lightning as L
import torch
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from xclip_lightning.data.datamodule import VideoTextDataModule
from xclip_lightning.data.synthetic import make_synthetic_clip, make_synthetic_dataset
from xclip_lightning.lightning_module import XCLIPRetrieval
from xclip_lightning.model.xclip import XCLIP
from xclip_lightning.tools import export


def card(folder) -> tuple[dict, str]:
    text = (folder / "README.md").read_text()
    _, front, body = text.split("---\n", 2)
    return yaml.safe_load(front), body


def test_export_writes_a_model_card_with_the_runs_metrics(tmp_path):
    annotations = make_synthetic_dataset(tmp_path / "data", train=8, val=4, test=4, seed=2)
    clip = make_synthetic_clip(tmp_path / "clip", annotations)
    data = VideoTextDataModule(
        "generic", str(annotations), str(annotations.parent), str(clip), batch_size=4, eval_batch_size=4,
        num_workers=0, max_words=16, max_frames=4, cache_dir=str(tmp_path / "cache"),
    )  # fmt: skip
    module = XCLIPRetrieval(str(clip), max_words=16, max_frames=4, temporal_layers=2)
    best = ModelCheckpoint(monitor="val/t2v_R1", mode="max")
    trainer = L.Trainer(
        max_epochs=2, accelerator="cpu", logger=CSVLogger(tmp_path / "runs", name="card"), callbacks=[best],
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(module, data)
    tested = trainer.test(module, data, ckpt_path="best", verbose=False)[0]
    export(["--ckpt-path", best.best_model_path, "--out", str(tmp_path / "model"), "--license", "apache-2.0"])
    front, body = card(tmp_path / "model")
    assert front["license"] == "apache-2.0" and front["library_name"] == "xclip-lightning"
    assert "video-text-retrieval" in front["tags"] and "base_model" not in front  # a local CLIP folder is no hub id
    assert f"Base CLIP: {clip}" in body and f"annotations `{annotations}`" in body
    assert "max_frames 4, temporal_layers 2" in body
    assert f"| best val/t2v_R1 | {float(best.best_model_score):.2f} |" in body
    for name, value in tested.items():  # the test metrics the run logged next to the checkpoint
        assert f"| {name} | {value:.2f} |" in body
    reloaded = XCLIP.from_pretrained(tmp_path / "model")
    assert all(torch.equal(a, b) for a, b in zip(reloaded.state_dict().values(), module.model.state_dict().values(),
                                                  strict=True))  # fmt: skip
