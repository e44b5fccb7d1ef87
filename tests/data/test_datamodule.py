"""VideoTextDataModule on the synthetic dataset: batches, evaluation layout, cache vs on the fly, bad videos."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from xclip_lightning.data.datamodule import BadVideosError, VideoTextDataModule
from xclip_lightning.data.synthetic import make_synthetic_clip, make_synthetic_dataset


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    annotations = make_synthetic_dataset(root / "data", train=8, val=3, test=3, seed=5)
    clip = make_synthetic_clip(root / "clip", annotations)
    return annotations, clip


def datamodule(synthetic, tmp_path, **kwargs) -> VideoTextDataModule:
    annotations, clip = synthetic
    args = dict(
        benchmark="generic",
        annotations=str(annotations),
        videos=str(annotations.parent),
        clip_name_or_path=str(clip),
        batch_size=4,
        eval_batch_size=2,
        num_workers=0,
        max_words=24,
        max_frames=6,
        cache_dir=str(tmp_path / "cache"),
    )
    return VideoTextDataModule(**{**args, **kwargs})


def test_train_batches_are_pairs_of_uint8_frames_and_tokens(synthetic, tmp_path):
    dm = datamodule(synthetic, tmp_path)
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.datasets["train"][0]) == 16  # 8 videos x 2 captions, every caption a pair
    batch = next(iter(dm.train_dataloader()))
    assert batch["frames"].dtype == torch.uint8 and batch["frames"].shape == (4, 6, 3, 32, 32)
    assert batch["frame_mask"].dtype == torch.bool and batch["input_ids"].shape == (4, 24)
    lengths = batch["frame_mask"].sum(1)
    for frames, n in zip(batch["frames"], lengths, strict=True):
        assert frames[:n].float().mean() > 0 and not frames[n:].any()  # real frames, then zero padding
    ids, mask = batch["input_ids"], batch["word_mask"]
    assert (ids[:, 0] == dm_tokenizer(synthetic).bos_token_id).all() and not ids[~mask].any()  # 0-padding
    assert len(dm.train_dataloader()) == 4  # drop_last


def dm_tokenizer(synthetic):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(synthetic[1])


def test_evaluation_encodes_each_caption_and_each_video_once(synthetic, tmp_path):
    dm = datamodule(synthetic, tmp_path)
    dm.prepare_data()
    dm.setup("test")
    captions, videos = dm.test_dataloader()
    text = [b for b in captions]
    video = [b for b in videos]
    text_index = torch.cat([b["text_index"] for b in text])
    caption_video = torch.cat([b["video_index"] for b in text])
    assert text_index.tolist() == list(range(6))
    assert caption_video.tolist() == [0, 0, 1, 1, 2, 2]  # two phrasings per video, grouped by video
    assert torch.cat([b["video_index"] for b in video]).tolist() == [0, 1, 2]
    assert "frames" not in text[0] and "input_ids" not in video[0]
    records = dm.dataset_records("test")
    tokenizer = dm_tokenizer(synthetic)
    first = tokenizer.decode(text[0]["input_ids"][0][text[0]["word_mask"][0]][1:-1])
    assert first.replace(" ", "") == records[0].captions[0].replace(" ", "")


def test_cache_and_on_the_fly_give_the_same_batches(synthetic, tmp_path):
    cached = datamodule(synthetic, tmp_path)
    cached.prepare_data()
    cached.setup("validate")
    live = datamodule(synthetic, tmp_path, cache_dir=None, num_workers=1)
    live.prepare_data()
    live.setup("validate")
    for a, b in zip(cached.val_dataloader()[1], live.val_dataloader()[1], strict=True):
        assert torch.equal(a["frames"], b["frames"]) and torch.equal(a["frame_mask"], b["frame_mask"])


def test_bad_video_stops_the_run_or_is_skipped_never_zeros(synthetic, tmp_path):
    annotations, clip = synthetic
    data = tmp_path / "data"
    shutil.copytree(annotations.parent, data)
    lines = (data / "annotations.jsonl").read_text().splitlines()
    broken = json.loads(lines[-1])["video"]
    (data / broken).write_bytes(b"\x00" * 1000)  # a test video overwritten with zeros
    bad = (data / "annotations.jsonl", clip)
    dm = datamodule(bad, tmp_path)
    with pytest.raises(BadVideosError, match=rf"1 video\(s\) gave no frame \(.*{broken}.*bad_videos='skip'"):
        dm.prepare_data()
    dm = datamodule(bad, tmp_path, bad_videos="skip")
    with pytest.warns(RuntimeWarning, match="skipped"):
        dm.prepare_data()
    dm.setup("test")
    assert [r.video_path.name for r in dm.dataset_records("test")] == [
        json.loads(line)["video"].split("/")[-1] for line in lines[-3:-1]
    ]
    live = datamodule(bad, tmp_path, cache_dir=None)
    live.setup("test")
    with pytest.raises(Exception, match=rf"{broken}.*bad_videos='skip'"):
        list(live.test_dataloader()[1])


def test_predict_a_folder_of_videos(synthetic, tmp_path):
    annotations, _ = synthetic
    dm = datamodule(synthetic, tmp_path, predict_videos=str(annotations.parent / "videos"))
    dm.prepare_data()
    dm.setup("predict")
    (videos,) = dm.predict_dataloader()
    assert sum(len(b["video_index"]) for b in videos) == 14
    assert dm.dataset_records("predict")[0].video_id == "00000.mp4"


def test_on_the_fly_skipping_is_refused_under_ddp(synthetic, tmp_path):
    """Skipping bad videos while decoding on the fly would give the ranks batches of different sizes."""
    from types import SimpleNamespace

    dm = datamodule(synthetic, tmp_path, cache_dir=None, bad_videos="skip")
    dm.trainer = SimpleNamespace(world_size=2, lightning_module=None)
    with pytest.raises(ValueError, match=r"different sizes.*set cache_dir"):
        dm.setup("fit")
    dm.trainer = SimpleNamespace(world_size=1, lightning_module=None)
    dm.setup("fit")  # one process: fine


def test_the_distributed_training_order_follows_shuffle_seed_and_epoch(synthetic, tmp_path):
    from types import SimpleNamespace

    from torch.utils.data import DistributedSampler

    def order(seed: int, rank: int, epoch: int) -> list[int]:
        dm = datamodule(synthetic, tmp_path, shuffle_seed=seed)
        dm.prepare_data()
        dm.trainer = SimpleNamespace(world_size=2, global_rank=rank, lightning_module=None, state=None)
        dm.setup("fit")
        sampler = dm.train_dataloader().sampler
        assert isinstance(sampler, DistributedSampler) and sampler.seed == seed
        sampler.set_epoch(epoch)
        return list(sampler)

    assert order(3, 0, 0) == order(3, 0, 0)  # a function of (seed, epoch): a resumed run sees the same batches
    assert order(3, 0, 0) != order(4, 0, 0) and order(3, 0, 0) != order(3, 0, 1)
    assert sorted(order(3, 0, 0) + order(3, 1, 0)) == list(range(16))  # the two ranks share the 16 pairs
