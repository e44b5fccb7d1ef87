"""Checkpoints: loading never runs pickled code (even with torch's unsafe default forced), and a checkpoint whose
contents changed on disk (a tensor, a hyper-parameter, the embedded tokenizer, a truncation) is a
``CorruptCheckpointError`` naming the file, never a different model and never torch's advice to unpickle it."""

from __future__ import annotations

import os
import random
import zipfile
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from xclip_lightning.cli import main
from xclip_lightning.data.datamodule import VideoTextDataModule
from xclip_lightning.data.synthetic import make_synthetic_clip, make_synthetic_dataset
from xclip_lightning.lightning_module import CorruptCheckpointError, XCLIPRetrieval
from xclip_lightning.tools import export

MARKER = Path("/tmp/xclip-lightning-pwned")


class Payload:
    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("ckpt")
    annotations = make_synthetic_dataset(root / "data", train=4, val=2, test=2, seed=3)
    clip = make_synthetic_clip(root / "clip", annotations)
    module = XCLIPRetrieval(str(clip), max_words=16, max_frames=4)
    data = VideoTextDataModule(
        "generic", str(annotations), str(annotations.parent), str(clip), batch_size=2, eval_batch_size=2,
        num_workers=0, max_words=16, max_frames=4, cache_dir=str(root / "cache"),
    )  # fmt: skip
    trainer = L.Trainer(
        max_steps=1, accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=0, callbacks=[ModelCheckpoint(dirpath=root / "ckpt")], default_root_dir=root,
    )  # fmt: skip
    trainer.fit(module, data)
    (ckpt,) = (root / "ckpt").glob("*.ckpt")
    return ckpt, annotations, clip


def test_pickled_code_never_runs_even_with_the_unsafe_default_forced(trained, tmp_path, monkeypatch):
    ckpt, annotations, clip = trained
    checkpoint = torch.load(ckpt, weights_only=True)
    checkpoint["payload"] = Payload()
    evil = tmp_path / "evil.ckpt"
    torch.save(checkpoint, evil)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    MARKER.unlink(missing_ok=True)
    refused = rf"{evil}: not a readable checkpoint \(UnpicklingError\)"
    with pytest.raises(CorruptCheckpointError, match=refused) as raised:
        XCLIPRetrieval.load_from_checkpoint(evil)
    assert "weights_only" not in str(raised.value)  # torch's advice, unsafe for a file that is not what it seems
    with pytest.raises(CorruptCheckpointError, match=refused):
        export(["--ckpt_path", str(evil), "--out", str(tmp_path / "out")])
    args = [
        "test", "--model.clip_name_or_path", str(clip), "--model.max_words=16", "--model.max_frames=4",
        f"--data.annotations={annotations}", f"--data.videos={annotations.parent}", "--data.num_workers=0",
        f"--data.cache_dir={tmp_path / 'cache'}", f"--trainer.default_root_dir={tmp_path}", "--trainer.logger=false",
        f"--ckpt_path={evil}",
    ]  # fmt: skip
    with pytest.raises(SystemExit):
        main(args)
    assert not MARKER.exists()


def tensor_data_spans(path: Path) -> list[tuple[int, int]]:
    """(offset, length) of each stored tensor's bytes in torch's zip checkpoint."""
    spans = []
    with zipfile.ZipFile(path) as archive, open(path, "rb") as f:
        for info in archive.infolist():
            if "/data/" in info.filename and info.file_size > 0:
                f.seek(info.header_offset + 26)
                name_length, extra_length = (int.from_bytes(f.read(2), "little") for _ in range(2))
                spans.append((info.header_offset + 30 + name_length + extra_length, info.file_size))
    return spans


def flip_bit(source: Path, target: Path, offset: int, bit: int) -> None:
    data = bytearray(source.read_bytes())
    data[offset] ^= 1 << bit
    target.write_bytes(bytes(data))


def test_a_flipped_bit_in_any_tensor_is_an_error_naming_the_file(trained, tmp_path):
    ckpt, _, _ = trained
    rng = random.Random(0)
    spans = tensor_data_spans(ckpt)
    assert len(spans) > 100  # weights and optimizer states
    flipped = tmp_path / "flipped.ckpt"
    for _ in range(20):
        start, length = rng.choice(spans)
        flip_bit(ckpt, flipped, start + rng.randrange(length), rng.randrange(8))
        with pytest.raises(CorruptCheckpointError, match=rf"{flipped}: its contents do not match the checksum"):
            XCLIPRetrieval.load_from_checkpoint(flipped)


def test_a_flipped_bit_anywhere_never_gives_another_model(trained, tmp_path):
    ckpt, _, _ = trained
    original = XCLIPRetrieval.load_from_checkpoint(ckpt).state_dict()
    rng = random.Random(1)
    size = ckpt.stat().st_size
    flipped = tmp_path / "flipped.ckpt"
    outcomes = {"refused": 0, "same": 0}
    for _ in range(20):
        flip_bit(ckpt, flipped, rng.randrange(size), rng.randrange(8))
        try:
            loaded = XCLIPRetrieval.load_from_checkpoint(flipped).state_dict()
        except CorruptCheckpointError as err:  # never another error, never torch's advice to unpickle it
            assert str(flipped) in str(err) and "weights_only" not in str(err)
            outcomes["refused"] += 1
            continue
        assert all(torch.equal(loaded[k], v) for k, v in original.items())  # a harmless flip (padding, a name)
        outcomes["same"] += 1
    assert outcomes["refused"] >= 10


def rewrite(source: Path, target: Path, change) -> Path:
    """``source`` with ``change(checkpoint)`` applied and its checksum kept: an edit by hand, or a flip that still
    parses."""
    checkpoint = torch.load(source, weights_only=True)
    change(checkpoint)
    torch.save(checkpoint, target)
    return target


def test_an_edited_hyper_parameter_or_tokenizer_is_refused(trained, tmp_path):
    ckpt, _, _ = trained
    assert XCLIPRetrieval.load_from_checkpoint(ckpt).hparams.temperature == 0.01

    def temperature(c):
        c["hyper_parameters"]["temperature"] = 0.009969  # one flipped bit of 0.01's float64, as seen in the field

    def token(c):
        files = c["xclip_clip_spec"]["tokenizer"]
        name = next(n for n in files if n.endswith(".json") and '"yellow"' in files[n])
        files[name] = files[name].replace('"yellow"', '"yel1ow"', 1)

    def clip_config(c):
        c["xclip_clip_spec"]["config"]["text_config"]["num_attention_heads"] = 2

    for change in (temperature, token, clip_config):
        edited = rewrite(ckpt, tmp_path / f"{change.__name__}.ckpt", change)
        with pytest.raises(CorruptCheckpointError, match=rf"{edited}: its contents do not match the checksum"):
            XCLIPRetrieval.load_from_checkpoint(edited)
        with pytest.raises(CorruptCheckpointError):
            export(["--ckpt-path", str(edited), "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("keep", [0.0, 0.1, 0.5, 0.9, 0.999])
def test_a_truncated_checkpoint_is_refused_naming_the_file(trained, tmp_path, keep):
    ckpt, _, _ = trained
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(ckpt.read_bytes()[: int(ckpt.stat().st_size * keep)])
    with pytest.raises(CorruptCheckpointError, match=rf"{cut}: not a readable checkpoint") as raised:
        XCLIPRetrieval.load_from_checkpoint(cut)
    assert "weights_only" not in str(raised.value)
