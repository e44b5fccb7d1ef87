"""``VideoTextDataModule``: annotation files + a video folder -> training pairs and evaluation batches.

``prepare_data`` decodes the videos of the splits the stage needs (fit: train + val; validate: val; test: test;
predict: test or the predict folder) once into the frame cache (a process pool with a progress bar); ``setup``
reads the annotations, tokenizes every caption and builds the datasets of ``data/dataset.py``. Attached to a
trainer running an ``XCLIPRetrieval``, the tokenizer and the frame size are the model's own (a checkpoint carries
them), so evaluating a checkpoint needs neither the original CLIP folder nor the training videos.
Validation, test and predict return two loaders, ``[captions, videos]``, so that each caption and each unique video
is encoded once. Every init argument is a plain typed value, so LightningCLI exposes them as ``--data.*``.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Literal

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler
from transformers import AutoConfig, AutoTokenizer, PreTrainedTokenizerBase

from xclip_lightning.data.benchmarks import READERS, VideoRecord
from xclip_lightning.data.benchmarks.common import SHOW_MISSING, VIDEO_EXTENSIONS, MissingPolicy
from xclip_lightning.data.benchmarks.didemo import DidemoLookup
from xclip_lightning.data.dataset import (
    BadVideoPolicy,
    CaptionDataset,
    EpochShuffleSampler,
    FrameLoader,
    PairDataset,
    VideoDataset,
    all_captions,
    collate,
    video_source,
    worker_init,
)
from xclip_lightning.data.frame_cache import FrameCache, SamplerSettings
from xclip_lightning.data.video import SamplingMode
from xclip_lightning.errors import UserError
from xclip_lightning.inputs.tokenize import tokenize
from xclip_lightning.model.encoders import backbone_of
from xclip_lightning.model.head import DEFAULT_CLIP, DEFAULT_MAX_FRAMES, DEFAULT_MAX_WORDS

Benchmark = Literal["msrvtt", "msvd", "lsmdc", "didemo", "activitynet", "generic"]
Split = Literal["train", "val", "test"]
STAGE_SPLITS = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}
DEFAULT_CACHE_DIR = ".cache/xclip-lightning/frames"


class BadVideosError(UserError, RuntimeError):
    """Videos of the annotations that gave no frame (listed with their reasons)."""


class VideoTextDataModule(L.LightningDataModule):
    """Text-video retrieval data for one benchmark (or the generic jsonl/csv format).

    Args:
        benchmark: which annotation reader to use (xclip-spec.md §12).
        annotations: the annotation folder (a .jsonl or .csv file for ``generic``).
        videos: the video folder.
        clip_name_or_path: the CLIP whose tokenizer (and image size) to use; linked to the model's in the CLI.
        batch_size: training pairs per device (the contrastive batch is this x devices x nodes).
        eval_batch_size: captions or videos per device and step in validation, test and predict.
        num_workers: DataLoader workers per device; also the cache-building processes unless ``prepare_workers``.
        max_words, max_frames: word and frame slots (official 32 / 12; 64 / 64 for DiDeMo and ActivityNet).
        fps: frames sampled per second (official 1).
        sampling: ``timestamp`` (one frame per second of presentation time) or ``official`` (CLIP4Clip arithmetic).
        image_size: the square frame size; None = the CLIP vision config's.
        cache_dir: where decoded frames are stored; None decodes every video on the fly, every epoch.
        bad_videos: a video that gives no frame stops the run (``error``, the default) or is dropped (``skip``);
            it never becomes an all-zero sample.
        missing_videos: the same for videos named by the annotations but not on disk.
        train_split, val_split, test_split: split names passed to the reader.
        msrvtt_train_set: MSR-VTT training list, ``9k`` (official) or ``7k``.
        didemo_lookup: how DiDeMo ids find their files: ``any`` naming (default) or X-CLIP's exact ``official``
            rule, which drops the ids that contain ``.mp4`` (see ``data/benchmarks/didemo.py``).
        clean_captions: clean captions as the official tokenizer does (ftfy, HTML entities, whitespace) first.
        predict_videos: a folder (searched recursively) whose videos ``predict`` encodes; None = the test split.
        prepare_workers: processes that build the frame cache; None = ``num_workers`` (at least 1).
        shuffle_seed: the training order is a function of (shuffle_seed, epoch) only, on one process and under DDP,
            so resuming is exact.
    """

    def __init__(
        self,
        benchmark: Benchmark = "generic",
        annotations: str = "",
        videos: str = "",
        clip_name_or_path: str = DEFAULT_CLIP,
        batch_size: int = 32,
        eval_batch_size: int = 64,
        num_workers: int = 4,
        max_words: int = DEFAULT_MAX_WORDS,
        max_frames: int = DEFAULT_MAX_FRAMES,
        fps: float = 1.0,
        sampling: SamplingMode = "timestamp",
        image_size: int | None = None,
        cache_dir: str | None = DEFAULT_CACHE_DIR,
        bad_videos: BadVideoPolicy = "error",
        missing_videos: MissingPolicy = "error",
        train_split: str = "train",
        val_split: str = "val",
        test_split: str = "test",
        msrvtt_train_set: Literal["9k", "7k"] = "9k",
        didemo_lookup: DidemoLookup = "any",
        clean_captions: bool = True,
        predict_videos: str | None = None,
        prepare_workers: int | None = None,
        shuffle_seed: int = 42,
    ) -> None:
        super().__init__()
        if benchmark not in READERS:
            raise ValueError(f"unknown benchmark {benchmark!r}; expected one of {sorted(READERS)}")
        self.save_hyperparameters()
        self.benchmark, self.annotations, self.videos = benchmark, annotations, videos
        self.clip_name_or_path = clip_name_or_path
        self.batch_size, self.eval_batch_size, self.num_workers = batch_size, eval_batch_size, num_workers
        self.max_words, self.max_frames, self.fps, self.sampling = max_words, max_frames, fps, sampling
        self.image_size, self.cache_dir = image_size, cache_dir
        self.bad_videos, self.missing_videos = bad_videos, missing_videos
        self.splits = {"train": train_split, "val": val_split, "test": test_split}
        self.msrvtt_train_set, self.predict_videos = msrvtt_train_set, predict_videos
        self.didemo_lookup, self.clean_captions = didemo_lookup, clean_captions
        self.prepare_workers, self.shuffle_seed = prepare_workers, shuffle_seed
        self.datasets: dict[str, list[Dataset]] = {}
        self._backbone: tuple[int, str] | None = None  # (image size, resize) of the CLIP / SigLIP config

    # ---- records and frames -------------------------------------------------------------------------------------

    def records(self, split: Split, missing_videos: str | None = None) -> list[VideoRecord]:
        """The records of one split, through the benchmark's reader and the missing-video policy (this module's,
        unless ``missing_videos`` says otherwise: ``check-data`` keeps the missing ones to count them)."""
        kwargs = {
            "msrvtt": {"train_set": self.msrvtt_train_set},
            "didemo": {"lookup": self.didemo_lookup},
        }.get(self.benchmark, {})
        read = READERS[self.benchmark]
        policy = missing_videos or self.missing_videos
        return read(self.annotations, self.videos, self.splits[split], missing_videos=policy, **kwargs)

    def predict_records(self) -> list[VideoRecord]:
        folder = Path(self.predict_videos)
        if not folder.is_dir():
            raise FileNotFoundError(f"predict_videos={folder} is not a folder")
        paths = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)
        if not paths:
            raise FileNotFoundError(f"no video files ({', '.join(VIDEO_EXTENSIONS)}) under {folder}")
        return [VideoRecord(str(p.relative_to(folder)), p, (), "predict") for p in paths]

    def _model(self):
        """The X-CLIP model of the trainer's module, when there is one (its tokenizer and frame size rule)."""
        from xclip_lightning.model.xclip import XCLIP

        model = getattr(self.trainer.lightning_module, "model", None) if self.trainer is not None else None
        return model if isinstance(model, XCLIP) else None

    def tokenizer(self) -> PreTrainedTokenizerBase:
        model = self._model()
        return model.tokenizer if model is not None else AutoTokenizer.from_pretrained(self.clip_name_or_path)

    @property
    def sampler_settings(self) -> SamplerSettings:
        """What the frames depend on; the image size and resize are the backbone's (CLIP crops, SigLIP squashes)
        unless ``image_size`` is given."""
        if self._backbone is None:
            model = self._model()
            config = (
                model.encoders.clip.config if model is not None else AutoConfig.from_pretrained(self.clip_name_or_path)
            )
            self._backbone = (config.vision_config.image_size, backbone_of(config).resize)
        size, resize = self._backbone
        return SamplerSettings(self.fps, self.max_frames, self.sampling, self.image_size or size, resize)

    def _stage_splits(self) -> tuple[Split, ...]:
        """The splits the trainer's current stage reads; all three when no trainer runs."""
        if self.trainer is None or self.trainer.state.fn is None:
            return ("train", "val", "test")
        return STAGE_SPLITS[self.trainer.state.fn.value]

    @property
    def cache(self) -> FrameCache | None:
        return FrameCache(self.cache_dir, self.sampler_settings) if self.cache_dir is not None else None

    def prepare_data(self) -> None:
        """Decode every video of the stage's splits (or the predict folder) into the frame cache.

        Runs once per node. Videos that give no frame are recorded with their reason; with ``bad_videos='error'``
        the run stops here, listing them.
        """
        cache = self.cache
        if cache is None:
            return
        if self.predict_videos is not None:
            records = self.predict_records()
        else:
            records = {r.video_path: r for split in self._stage_splits() for r in self.records(split)}.values()
        workers = self.prepare_workers if self.prepare_workers is not None else max(1, self.num_workers)
        failures = cache.build([video_source(r) for r in records], workers=workers)
        if failures:
            listed = "; ".join(f"{path}: {reason}" for path, reason in list(failures.items())[:SHOW_MISSING])
            message = f"{len(failures)} video(s) gave no frame ({listed})"
            if self.bad_videos == "error":
                raise BadVideosError(f"{message}. Fix or remove them, or set bad_videos='skip' to train without them")
            warnings.warn(f"{message}; they are skipped (bad_videos='skip')", RuntimeWarning, stacklevel=2)

    def _drop_bad(self, records: list[VideoRecord], cache: FrameCache | None) -> list[VideoRecord]:
        """With a cache, the videos that failed in ``prepare_data`` (already reported) leave the split."""
        if cache is None:
            return records
        failed = cache.failures([video_source(r) for r in records])
        if failed and self.bad_videos == "error":
            raise BadVideosError(f"{len(failed)} video(s) gave no frame, e.g. {next(iter(failed.items()))}")
        records = [r for r in records if r.video_path not in failed]
        absent = [r.video_path for r in records if video_source(r) not in cache]
        if absent:
            raise FileNotFoundError(
                f"{len(absent)} video(s) are not in the frame cache {cache.folder}, e.g. {absent[0]}: run "
                f"prepare_data() first (Trainer.fit/test do), or set cache_dir=None to decode on the fly"
            )
        return records

    # ---- datasets -----------------------------------------------------------------------------------------------

    def setup(self, stage: str) -> None:
        cache = self.cache
        frames = FrameLoader(self.sampler_settings, cache)
        tokenizer = self.tokenizer()

        def text_of(records: list[VideoRecord]):
            return tokenize(tokenizer, all_captions(records), self.max_words, clean=self.clean_captions)

        if stage == "fit":
            world = self.trainer.world_size if self.trainer is not None else 1
            if cache is None and self.bad_videos == "skip" and world > 1:
                raise ValueError(
                    "bad_videos='skip' while decoding on the fly would give the ranks batches of different sizes, "
                    "which the global contrastive batch cannot gather: set cache_dir (bad videos then leave the "
                    "split before training) or bad_videos='error'"
                )
            train = self._drop_bad(self.records("train"), cache)
            self.datasets["train"] = [PairDataset(train, text_of(train), frames, self.bad_videos)]
        if stage in ("fit", "validate"):
            val = self._drop_bad(self.records("val"), cache)
            self.datasets["val"] = [CaptionDataset(val, text_of(val)), VideoDataset(val, frames, self.bad_videos)]
        if stage == "test" or (stage == "predict" and self.predict_videos is None):
            test = self._drop_bad(self.records("test"), cache)
            self.datasets["test"] = [CaptionDataset(test, text_of(test)), VideoDataset(test, frames, self.bad_videos)]
        if stage == "predict":
            if self.predict_videos is None:
                self.datasets["predict"] = self.datasets["test"]
            else:
                videos = self._drop_bad(self.predict_records(), cache)
                self.datasets["predict"] = [VideoDataset(videos, frames, self.bad_videos)]

    def _train_sampler(self, dataset: Dataset) -> Sampler:
        """The training order, a function of (shuffle_seed, epoch) only: on one process a seeded shuffle; under
        DDP a DistributedSampler seeded the same way (Lightning keeps a DistributedSampler it is given, and would
        otherwise put in its own, seeded 0 whatever shuffle_seed says)."""
        world = self.trainer.world_size if self.trainer is not None else 1
        if world == 1:
            return EpochShuffleSampler(dataset, self.shuffle_seed)
        return DistributedSampler(
            dataset, num_replicas=world, rank=self.trainer.global_rank, shuffle=True, seed=self.shuffle_seed
        )

    def _loader(self, dataset: Dataset, batch_size: int, train: bool = False) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=self._train_sampler(dataset) if train else None,
            drop_last=train,  # official: drop_last=True for training
            num_workers=self.num_workers,
            collate_fn=collate,
            worker_init_fn=worker_init,
            persistent_workers=train and self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.datasets["train"][0], self.batch_size, train=True)

    def val_dataloader(self) -> list[DataLoader]:
        return [self._loader(d, self.eval_batch_size) for d in self.datasets["val"]]

    def test_dataloader(self) -> list[DataLoader]:
        return [self._loader(d, self.eval_batch_size) for d in self.datasets["test"]]

    def predict_dataloader(self) -> list[DataLoader]:
        return [self._loader(d, self.eval_batch_size) for d in self.datasets["predict"]]

    def dataset_records(self, stage: Literal["train", "val", "test", "predict"]) -> list[VideoRecord]:
        """The records behind a stage's datasets (after the missing- and bad-video policies)."""
        return self.datasets[stage][-1].records
