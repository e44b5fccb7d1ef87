"""Training and evaluation end to end on the synthetic data: resume, DDP evaluation, the CLI, every config."""

from __future__ import annotations

import contextlib
import io
import json
import math
import re
import shutil
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from safetensors.torch import load_file

from conftest import REPO
from xclip_lightning.cli import main
from xclip_lightning.data.datamodule import VideoTextDataModule
from xclip_lightning.data.synthetic import make_synthetic_clip, make_synthetic_dataset
from xclip_lightning.lightning_module import XCLIPRetrieval, clip_from_checkpoint
from xclip_lightning.metrics import retrieval_metrics
from xclip_lightning.optim import BertAdam

WORDS, FRAMES = 32, 6


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("synthetic")
    annotations = make_synthetic_dataset(root / "data", train=16, val=5, test=5, seed=7)
    clip = make_synthetic_clip(root / "clip", annotations)
    return annotations, clip, root / "cache"


def datamodule(synthetic, **kwargs) -> VideoTextDataModule:
    annotations, clip, cache = synthetic
    args = dict(
        annotations=str(annotations),
        videos=str(annotations.parent),
        clip_name_or_path=str(clip),
        batch_size=4,
        eval_batch_size=2,
        num_workers=0,
        max_words=WORDS,
        max_frames=FRAMES,
        cache_dir=None if cache is None else str(cache),
    )
    return VideoTextDataModule(**{**args, **kwargs})


def model(synthetic, **kwargs) -> XCLIPRetrieval:
    args = dict(max_words=WORDS, max_frames=FRAMES, lr=1e-3, clip_lr_scale=1.0)
    return XCLIPRetrieval(str(synthetic[1]), **{**args, **kwargs})


def trainer(tmp_path: Path, **kwargs) -> L.Trainer:
    defaults = dict(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
    )
    return L.Trainer(**{**defaults, **kwargs})


class Interrupt(Callback):
    """Stops the run at the end of its first epoch, as a crash after the epoch's checkpoint would."""

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        trainer.should_stop = True


@pytest.mark.parametrize("grad_cache_chunk", [None, 3], ids=["plain", "gradient-caching"])
def test_resuming_an_interrupted_fit_gives_the_same_weights(synthetic, tmp_path, grad_cache_chunk):
    def fit(folder: Path, ckpt_path: str | None = None, interrupt: bool = False) -> dict[str, torch.Tensor]:
        L.seed_everything(0)
        module = model(synthetic, grad_cache_chunk=grad_cache_chunk)
        callbacks = [ModelCheckpoint(dirpath=folder, save_last=True), *([Interrupt()] if interrupt else [])]
        run = trainer(tmp_path, max_epochs=3, limit_val_batches=0, callbacks=callbacks)
        run.fit(module, datamodule(synthetic), ckpt_path=ckpt_path)
        return {k: v.clone() for k, v in module.state_dict().items()}

    uninterrupted = fit(tmp_path / "a")
    fit(tmp_path / "b", interrupt=True)  # the same run, stopped after its first epoch
    resumed = fit(tmp_path / "c", ckpt_path=str(tmp_path / "b" / "last.ckpt"))
    first_epoch = torch.load(tmp_path / "b" / "last.ckpt", weights_only=False)["state_dict"]
    changed = [k for k in uninterrupted if not torch.equal(first_epoch[k], uninterrupted[k])]
    assert len(changed) > 50  # training moved the weights after the interruption point
    worst = max((uninterrupted[k] - resumed[k]).abs().max().item() for k in uninterrupted)
    assert worst == 0.0


def test_load_from_checkpoint_restores_everything(synthetic, tmp_path):
    module = model(synthetic)
    run = trainer(tmp_path, max_steps=2, limit_val_batches=0, callbacks=[ModelCheckpoint(dirpath=tmp_path)])
    run.fit(module, datamodule(synthetic))
    path = next(tmp_path.glob("*.ckpt"))
    restored = XCLIPRetrieval.load_from_checkpoint(path)
    assert restored.hparams.lr == 1e-3 and restored.hparams.max_frames == FRAMES
    for key, value in module.state_dict().items():
        assert torch.equal(value, restored.state_dict()[key]), key


@pytest.mark.slow
def test_distributed_evaluation_equals_single_process_and_the_full_matrix(synthetic, tmp_path):
    """5 videos x 2 captions over 2 ranks: DistributedSampler pads with duplicates, which must not count."""
    module = model(synthetic)
    single = trainer(tmp_path).validate(module, datamodule(synthetic), verbose=False)[0]
    ddp = trainer(tmp_path, devices=2, strategy="ddp_spawn").validate(module, datamodule(synthetic), verbose=False)[0]
    assert single.keys() == ddp.keys() and "val/t2v_R1" in single
    for key in single:
        assert ddp[key] == pytest.approx(single[key], abs=1e-6), key
    # the same numbers from the full matrix, computed directly
    dm = datamodule(synthetic)
    dm.prepare_data()
    dm.setup("validate")
    captions, videos = dm.val_dataloader()
    with torch.no_grad():
        text = [module.model.encode_text(b["input_ids"], b["word_mask"]) for b in captions]
        video = [module.model.encode_video(b["frames"], b["frame_mask"]) for b in videos]
        cat = [torch.cat(parts) for parts in zip(*text, strict=True)], [torch.cat(p) for p in zip(*video, strict=True)]
        sim = module.model.score_matrix(type(text[0])(*cat[0]), type(video[0])(*cat[1]))
    expected = retrieval_metrics(sim, captions_per_video=[2] * 5)
    assert single["val/t2v_R1"] == pytest.approx(expected["t2v"]["R1"])
    assert single["val/v2t_MnR"] == pytest.approx(expected["v2t"]["MnR"])


class RecordingAutocast(XCLIPRetrieval):
    """Records the autocast dtype the training step really ran under."""

    seen: torch.dtype | None = None

    def training_step(self, batch, batch_idx):
        self.seen = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None
        return super().training_step(batch, batch_idx)


@pytest.mark.parametrize(
    ("precision", "autocast_on_cpu"),
    [("bf16-mixed", torch.bfloat16), ("16-mixed", torch.bfloat16)],  # Lightning turns 16-mixed into bf16 on a CPU
    ids=["bf16-mixed", "16-mixed-runs-as-bf16-on-cpu"],
)
def test_mixed_precision_training_keeps_the_head_in_fp32(synthetic, tmp_path, precision, autocast_on_cpu):
    module = RecordingAutocast(str(synthetic[1]), max_words=WORDS, max_frames=FRAMES, lr=1e-3, clip_lr_scale=1.0)
    before = module.model.head.global_mat_weight.detach().clone()
    run = trainer(tmp_path, max_steps=2, limit_val_batches=0, precision=precision, enable_checkpointing=False)
    run.fit(module, datamodule(synthetic))
    assert module.seen == autocast_on_cpu  # the dtype the step really used
    after = module.model.head.global_mat_weight
    assert after.dtype == torch.float32 and torch.isfinite(after).all() and not torch.equal(before, after)


def test_gradient_caching_trains_with_mixed_precision_clipping_and_the_clamp(synthetic, tmp_path):
    module = model(synthetic, grad_cache_chunk=2, optimizer="bertadam")
    with torch.no_grad():
        module.model.encoders.clip.logit_scale.fill_(5.0)  # above ln(100): the clamp must bring it back
    before = {k: v.detach().clone() for k, v in module.state_dict().items()}
    run = trainer(tmp_path, max_steps=3, limit_val_batches=0, precision="bf16-mixed", enable_checkpointing=False)
    run.fit(module, datamodule(synthetic))
    after = module.state_dict()
    assert run.global_step == 3 and all(torch.isfinite(v).all() for v in after.values() if v.is_floating_point())
    assert sum(not torch.equal(before[k], after[k]) for k in before) > 50
    assert module.model.encoders.clip.logit_scale.item() <= math.log(100) + 1e-6  # 3 steps alone: still ~5.0
    assert isinstance(run.optimizers[0], BertAdam)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_the_head_scores_in_fp32_under_any_autocast(synthetic, dtype):
    """fp16 autocast exists on the CPU too (what 16-mixed uses on a GPU): the logits still come out fp32."""
    module = model(synthetic)
    batch = next(iter(datamodule_with_setup(synthetic).train_dataloader()))
    with torch.autocast("cpu", dtype=dtype):
        assert module.model.encode_text(batch["input_ids"], batch["word_mask"]).words.dtype == torch.float32
        assert module(batch).dtype == torch.float32


def datamodule_with_setup(synthetic) -> VideoTextDataModule:
    dm = datamodule(synthetic)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def cli_args(synthetic, tmp_path) -> list[str]:
    annotations, clip, cache = synthetic
    return [
        "--config",
        str(REPO / "configs" / "synthetic.yaml"),
        f"--model.clip_name_or_path={clip}",
        f"--data.annotations={annotations}",
        f"--data.videos={annotations.parent}",
        f"--data.cache_dir={cache}",
        "--data.batch_size=4",
        "--data.num_workers=0",
        f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}",
        "--trainer.enable_progress_bar=false",
    ]


def test_cli_fit_then_test_writes_logs_checkpoints_and_config(synthetic, tmp_path):
    main(["fit", *cli_args(synthetic, tmp_path), "--trainer.max_epochs=1", "--trainer.limit_train_batches=2"])
    run = tmp_path / "runs" / "synthetic" / "version_0"
    assert (run / "config.yaml").is_file() and (run / "metrics.csv").is_file()
    model_part, data_part = (run / "config.yaml").read_text().split("\nmodel:\n")[1].split("\ndata:\n")
    assert f"clip_name_or_path: {synthetic[1]}" in model_part and "clip_name_or_path" not in data_part  # linked
    saved = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["datamodule_hyper_parameters"]
    assert (saved["clip_name_or_path"], saved["max_words"], saved["max_frames"]) == (str(synthetic[1]), 32, 6)
    best = [p for p in (run / "checkpoints").iterdir() if p.name.startswith("best-")]
    assert len(best) == 1 and "t2v_R1" in best[0].name and (run / "checkpoints" / "last.ckpt").is_file()
    assert "val/t2v_R1" in (run / "metrics.csv").read_text().splitlines()[0]
    # the evaluation options given at test time win over the checkpoint's (Lightning loads its hparams over the args)
    evaluation = ["--model.eval_dsl=true", "--model.eval_qb_norm=true"]
    main(["test", *cli_args(synthetic, tmp_path), f"--ckpt_path={run / 'checkpoints' / 'last.ckpt'}", *evaluation])
    test_run = tmp_path / "runs" / "synthetic" / "version_1"
    logged = (test_run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"test/t2v_R1", "test/t2v_R1_dsl", "test/v2t_R1_dsl", "test/t2v_R1_qb"} <= set(logged)
    main(["predict", *cli_args(synthetic, tmp_path), f"--ckpt_path={run / 'checkpoints' / 'last.ckpt'}"])
    predictions = tmp_path / "runs" / "synthetic" / "version_2" / "predictions"
    texts, videos = (load_file(predictions / f"{k}.rank0.safetensors") for k in ("texts", "videos"))
    assert texts["words"].shape == (10, 32, 64) and texts["text_index"].tolist() == list(range(10))
    assert videos["frames"].shape == (5, 6, 64) and torch.allclose(videos["video"].norm(dim=-1), torch.ones(5))


CONFIGS = sorted(p for p in (REPO / "configs").rglob("*.yaml") if p.parent.name != "ablations")
ABLATIONS = sorted((REPO / "configs" / "ablations").glob("*.yaml"))


def print_config(*configs: Path) -> str:
    out = io.StringIO()
    args = ["fit", *(a for c in configs for a in ("--config", str(c))), "--print_config"]
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code in (0, None)
    return out.getvalue()


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: str(p.relative_to(REPO / "configs")))
def test_every_config_parses_with_linked_arguments(config):
    parsed = yaml.safe_load(print_config(config))
    linked = {"clip_name_or_path", "max_words", "max_frames"}
    assert linked <= set(parsed["model"]) and not linked & set(parsed["data"])  # given once, on the model
    header = re.search(r"= global batch (\d+)", config.read_text())
    if header:  # the per-device batch x devices x nodes arithmetic of the header holds
        trainer_args = parsed["trainer"]
        assert parsed["data"]["batch_size"] * trainer_args["devices"] * trainer_args["num_nodes"] == int(header[1])


@pytest.mark.parametrize("ablation", ABLATIONS, ids=lambda p: p.stem)
def test_every_ablation_composes_with_the_msrvtt_config(ablation):
    parsed = yaml.safe_load(print_config(REPO / "configs" / "msrvtt" / "vitb32.yaml", ablation))
    for key, value in yaml.safe_load(ablation.read_text())["model"].items():
        assert parsed["model"][key] == value
    assert parsed["model"]["max_words"] == 32 and parsed["data"]["benchmark"] == "msrvtt"


def full_sim(module: XCLIPRetrieval, dm: VideoTextDataModule, stage: str) -> torch.Tensor:
    """The whole texts x videos matrix of a split, encoded and scored directly (no Lightning loop)."""
    captions, videos = dm.val_dataloader() if stage == "val" else dm.test_dataloader()
    with torch.no_grad():
        text = [module.model.encode_text(b["input_ids"], b["word_mask"]) for b in captions]
        video = [module.model.encode_video(b["frames"], b["frame_mask"]) for b in videos if b]
        cat = [torch.cat(parts) for parts in zip(*text, strict=True)], [torch.cat(p) for p in zip(*video, strict=True)]
        return module.model.score_matrix(type(text[0])(*cat[0]), type(video[0])(*cat[1]))


def test_a_partial_evaluation_scores_what_it_saw(synthetic, tmp_path):
    """One batch of 3 captions (video 0 twice, video 1 once) and 3 videos: the metrics are those of the 3 x 2
    sub-matrix with the multi-caption protocol, and a warning gives the counts."""
    module = model(synthetic)
    dm = datamodule(synthetic, eval_batch_size=3)
    with pytest.warns(RuntimeWarning, match=r"val metrics cover 3 of 10 captions and 2 of 5 videos"):
        result = trainer(tmp_path, limit_val_batches=1).validate(module, dm, verbose=False)[0]
    sim = full_sim(module, dm, "val")
    expected = retrieval_metrics(sim[:3, :2], captions_per_video=[2, 1])
    for direction in ("t2v", "v2t"):
        for name, value in expected[direction].items():
            assert result[f"val/{direction}_{name}"] == pytest.approx(value), (direction, name)


def test_the_sanity_check_on_a_multi_caption_split_does_not_crash(synthetic, tmp_path):
    module = model(synthetic)
    run = trainer(tmp_path, max_steps=1, num_sanity_val_steps=1, limit_val_batches=0, enable_checkpointing=False)
    run.fit(module, datamodule(synthetic, eval_batch_size=3))  # the sanity pass sees 3 captions, 3 videos
    assert run.global_step == 1


# the video is broken on purpose: the dataset's "skipping a bad video" warning (sometimes from a loader worker)
@pytest.mark.filterwarnings("ignore:skipping a bad video:RuntimeWarning")
def test_on_the_fly_skipping_evaluates_without_the_bad_video(synthetic, tmp_path):
    annotations, clip, _ = synthetic
    data = tmp_path / "data"
    shutil.copytree(annotations.parent, data)
    lines = (data / "annotations.jsonl").read_text().splitlines()
    broken = json.loads(lines[-1])["video"]  # the last test video
    (data / broken).write_bytes(b"\x00" * 1000)
    module = model(synthetic)
    dm = datamodule((data / "annotations.jsonl", clip, None), cache_dir=None, bad_videos="skip")
    with pytest.warns(RuntimeWarning, match=r"test metrics cover 8 of 10 captions and 4 of 5 videos"):
        result = trainer(tmp_path).test(module, dm, verbose=False)[0]
    expected = retrieval_metrics(full_sim(module, dm, "test")[:8], captions_per_video=[2] * 4)
    assert result["test/t2v_R1"] == pytest.approx(expected["t2v"]["R1"])
    assert result["test/v2t_MnR"] == pytest.approx(expected["v2t"]["MnR"])


def test_a_checkpoint_stands_alone_without_clip_or_the_working_directory(tmp_path, monkeypatch):
    """Trained from a *relative* CLIP folder, then the folder is deleted and the cwd changed: loading, export and
    test still work (the checkpoint carries CLIP's config and tokenizer), with weights only, nothing pickled."""
    from xclip_lightning import XCLIP
    from xclip_lightning.tools import export

    root = tmp_path / "train"
    annotations = make_synthetic_dataset(root / "data", train=8, val=3, test=3, seed=7)
    make_synthetic_clip(root / "clip", annotations)
    monkeypatch.chdir(root)
    module = XCLIPRetrieval("clip", max_words=WORDS, max_frames=FRAMES)
    dm = datamodule((annotations, Path("clip"), root / "cache"))
    trainer(tmp_path, max_steps=2, limit_val_batches=0, callbacks=[ModelCheckpoint(dirpath=root / "ckpt")]).fit(
        module, dm
    )
    (ckpt,) = (root / "ckpt").glob("*.ckpt")
    shutil.rmtree(root / "clip")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    restored = XCLIPRetrieval.load_from_checkpoint(ckpt)
    for key, value in module.state_dict().items():
        assert torch.equal(value, restored.state_dict()[key]), key
    export(["--ckpt_path", str(ckpt), "--out", "exported"])
    exported = XCLIP.from_pretrained("exported")
    ids = exported.tokenize(["a red circle moves left"])
    assert torch.equal(ids.input_ids, module.model.tokenize(["a red circle moves left"]).input_ids)
    with torch.no_grad():
        a = exported.encode_text(*ids).sentence
        b = module.model.encode_text(*ids).sentence
    assert torch.equal(a, b)
    # test through the Trainer from the checkpoint, the data module using the checkpoint's tokenizer
    test_dm = datamodule((annotations, Path("gone"), elsewhere / "cache"))
    with clip_from_checkpoint(ckpt):
        fresh = XCLIPRetrieval("gone", max_words=WORDS, max_frames=FRAMES)
    result = trainer(tmp_path).test(fresh, test_dm, ckpt_path=str(ckpt), verbose=False)[0]
    assert 0 <= result["test/t2v_R1"] <= 100


def test_the_official_overlay_composes_with_every_benchmark_and_trains(synthetic, tmp_path):
    official = REPO / "configs" / "official.yaml"
    for config in sorted((REPO / "configs").glob("*/vitb32.yaml")):
        parsed = yaml.safe_load(print_config(config, official))
        assert parsed["model"]["optimizer"] == "bertadam" and parsed["data"]["sampling"] == "official"
    main(["fit", *cli_args(synthetic, tmp_path), "--config", str(official), "--trainer.max_steps=2"])
    run = tmp_path / "runs" / "synthetic" / "version_0"
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["model"]["optimizer"] == "bertadam" and saved["data"]["didemo_lookup"] == "official"
    assert (run / "checkpoints" / "last.ckpt").is_file()


def test_official_fp16_clip_weights_train_in_place_with_layer_norms_in_fp32(synthetic, tmp_path):
    fp16 = model(synthetic, clip_fp16_weights=True)
    fp32 = model(synthetic)
    clip = fp16.model.encoders.clip
    assert clip.text_model.encoder.layers[0].mlp.fc1.weight.dtype == torch.float16
    assert clip.vision_model.encoder.layers[0].layer_norm1.weight.dtype == torch.float32
    assert clip.logit_scale.dtype == torch.float32 and fp16.model.head.global_mat_weight.dtype == torch.float32
    batch = next(iter(datamodule_with_setup(synthetic).train_dataloader()))
    with torch.no_grad():  # the same weights, rounded to fp16: the same features up to fp16 precision
        a = fp16.model.encode_video(batch["frames"], batch["frame_mask"]).video
        b = fp32.model.encode_video(batch["frames"], batch["frame_mask"]).video
        text = fp16.model.encode_text(batch["input_ids"], batch["word_mask"])
    assert a.dtype == torch.float32 and (a - b).abs().max() < 2e-2 and not torch.equal(a, b)
    assert clip.text_model.final_layer_norm._input_dtype == torch.float16 and text.words.dtype == torch.float32
    before = clip.text_model.encoder.layers[0].mlp.fc1.weight.detach().clone()
    run = trainer(tmp_path, max_steps=2, limit_val_batches=0, precision="32-true", enable_checkpointing=False)
    run.fit(fp16, datamodule(synthetic))
    after = clip.text_model.encoder.layers[0].mlp.fc1.weight
    assert after.dtype == torch.float16 and torch.isfinite(after).all() and not torch.equal(before, after)
