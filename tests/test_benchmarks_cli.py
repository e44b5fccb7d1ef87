"""Every benchmark on a miniature of its released files, through the CLI with its real config shrunk by overrides:
``fit`` with Lightning's sanity check on, ``test`` from the checkpoint, and ``test`` in a fresh folder that holds
only the test videos and no CLIP (the hub name of the config must never be read)."""

from __future__ import annotations

import csv
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import CAPTIONS, REPO
from miniatures import BUILDERS, Miniature
from xclip_lightning.cli import main
from xclip_lightning.data.benchmarks import READERS
from xclip_lightning.model.tiny import build_tiny_clip

FRAMES = 4


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    corpus = [*CAPTIONS, "a man is playing a guitar", "someone walks in", "the girl jumps", "a man runs he falls"]
    return build_tiny_clip(tmp_path_factory.mktemp("clip"), corpus * 4, seed=0)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_readers_take_the_released_layout_with_its_quirks(name, tmp_path):
    mini = BUILDERS[name](tmp_path)
    for split, count in mini.expected.items():
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            records = READERS[name](mini.annotations, mini.videos, split)
        assert len(records) == count, split
        assert sorted({r.video_path for r in records}) == sorted(set(mini.split_videos[split])), split


def last_metrics(runs: Path) -> dict[str, float]:
    """The last logged value of each column of the newest run's metrics.csv."""
    newest = max(runs.rglob("metrics.csv"), key=lambda p: int(p.parent.name.split("_")[1]))
    values: dict[str, float] = {}
    with open(newest) as f:
        for row in csv.DictReader(f):
            values.update({k: float(v) for k, v in row.items() if v})
    return values


def shrink(mini: Miniature, work: Path, clip: Path | None, eval_batch_size: int = 2) -> list[str]:
    """The benchmark's own config, made small and CPU-only by overrides."""
    args = [
        "--config",
        str(REPO / "configs" / mini.name / "vitb32.yaml"),
        f"--model.max_frames={FRAMES}",
        f"--data.annotations={mini.annotations}",
        f"--data.videos={mini.videos}",
        f"--data.cache_dir={work / 'cache'}",
        "--data.batch_size=2",
        f"--data.eval_batch_size={eval_batch_size}",
        "--data.num_workers=0",
        "--data.image_size=32",
        "--trainer.accelerator=cpu",
        "--trainer.devices=1",
        "--trainer.strategy=auto",
        "--trainer.precision=32-true",
        f"--trainer.logger.init_args.save_dir={work / 'runs'}",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        "--trainer.log_every_n_steps=1",
    ]
    return args + ([f"--model.clip_name_or_path={clip}"] if clip is not None else [])


def copy_test_only(mini: Miniature, root: Path) -> Miniature:
    """The annotation folder and only the test split's videos, in the same layout, somewhere else."""
    annotations = root / mini.annotations.name
    shutil.copytree(mini.annotations, annotations)
    for path in mini.split_videos["test"]:
        target = root / "videos" / path.relative_to(mini.videos)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    return Miniature(mini.name, annotations, root / "videos")


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(BUILDERS))
# the miniatures carry the released files' quirks (ids without captions), which the readers report as they drop them
@pytest.mark.filterwarnings("ignore:.* left out:RuntimeWarning")
def test_fit_with_sanity_check_then_test_then_test_only_elsewhere(name, clip, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # any attempt to reach the hub fails at once
    mini = BUILDERS[name](tmp_path / "data")
    work = tmp_path / "work"
    main(["fit", *shrink(mini, work, clip), "--trainer.max_epochs=1", "--trainer.limit_train_batches=2"])
    last = next(work.rglob("checkpoints/last.ckpt"))
    fitted = last_metrics(work / "runs")
    assert "val/t2v_R1" in fitted and "train/loss" in fitted

    main(["validate", *shrink(mini, work, clip), f"--ckpt_path={last}"])
    assert last_metrics(work / "runs")["val/t2v_R1"] == pytest.approx(fitted["val/t2v_R1"])  # the same weights
    main(["test", *shrink(mini, work, clip), f"--ckpt_path={last}"])
    tested = last_metrics(work / "runs")
    assert 0 <= tested["test/t2v_R1"] <= 100

    # a fresh machine: the checkpoint, the annotations and the test videos only; no CLIP folder, another cwd
    fresh = tmp_path / "fresh"
    only_test = copy_test_only(mini, fresh)
    ckpt = shutil.copyfile(last, fresh / "model.ckpt")
    shutil.rmtree(tmp_path / "data")  # the training videos, and the CLIP named by the config is a hub name
    shutil.rmtree(work / "cache")
    monkeypatch.chdir(fresh)
    main(["test", *shrink(only_test, fresh, None), f"--ckpt_path={ckpt}"])
    elsewhere = last_metrics(fresh / "runs")
    for key in ("test/t2v_R1", "test/v2t_R1", "test/t2v_MnR"):
        assert elsewhere[key] == pytest.approx(tested[key]), key
    main(["predict", *shrink(only_test, fresh, None), f"--ckpt_path={ckpt}"])
    (videos,) = fresh.rglob("predictions/videos.rank0.safetensors")
    assert len(load_file(videos)["video_index"]) == mini.expected["test"]
    cached = {p.stem.split(".")[0] for p in (fresh / "cache").rglob("*.json")}
    assert len(cached) <= len(set(mini.split_videos["test"]))  # only the test videos were decoded


def test_last_checkpoint_is_the_last_epoch_not_the_last_improvement(clip, tmp_path, monkeypatch):
    """One val caption and video: R@1 is 100 every epoch, so the best never improves after epoch 0."""
    mini = BUILDERS["lsmdc"](tmp_path / "data")
    work = tmp_path / "work"
    args = [*shrink(mini, work, clip, eval_batch_size=1), "--trainer.max_epochs=3", "--trainer.limit_train_batches=0.5"]
    with pytest.warns(RuntimeWarning, match=r"val metrics cover 1 of 2 captions and 1 of 2 videos"):
        main(["fit", *args, "--trainer.limit_val_batches=0.5"])  # a float: old jsonargparse reads "1" as 1.0
    checkpoints = next(work.rglob("checkpoints"))
    last = torch.load(checkpoints / "last.ckpt", weights_only=True, mmap=True)
    assert (last["epoch"], last["global_step"]) == (2, 3)
    (best,) = checkpoints.glob("best-*.ckpt")
    assert torch.load(best, weights_only=True, mmap=True)["epoch"] == 0
