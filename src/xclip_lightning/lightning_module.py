"""``XCLIPRetrieval``: X-CLIP training and evaluation in Lightning (xclip-spec.md §7-§10).

Training: encode the local batch, gather the normalised sentence, word, frame and video features of every rank
with their gradients, score the global batch, symmetric InfoNCE. Lightning's ``all_gather(sync_grads=True)`` sums
the gradients flowing back into each rank's slice and DDP averages over ranks, so every gradient equals
single-process training on the global batch (the official code scales the backbone's by 1/world_size; we do not).

Evaluation: each caption and each unique video is encoded once (two loaders), video features are gathered across
ranks, each rank scores its own captions against every video block-wise, and ``RetrievalMetrics`` gathers the
rows, drops the duplicates of distributed padding and computes R@K / MdR / MnR (the multi-caption protocol when a
video has several captions).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from torch import Tensor

from xclip_lightning.data.benchmarks.common import KEEP_MISSING
from xclip_lightning.data.dataset import all_captions
from xclip_lightning.errors import CheckpointError, CorruptCheckpointError, check_checkpoint_file, is_lightning_alias
from xclip_lightning.inputs.tokenize import TokenizedText, tokenize
from xclip_lightning.loss import symmetric_infonce
from xclip_lightning.metrics import RetrievalMetrics, first_of_each
from xclip_lightning.model.encoders import Attention
from xclip_lightning.model.head import (
    DEFAULT_BLOCK_ELEMENTS,
    DEFAULT_CLIP,
    DEFAULT_MAX_FRAMES,
    DEFAULT_MAX_WORDS,
    DEFAULT_TEMPORAL_LAYERS,
    TextFeatures,
    VideoFeatures,
)
from xclip_lightning.model.similarity import AOSM_TEMPERATURE, CONTRASTS, Aggregation, Contrast
from xclip_lightning.model.xclip import XCLIP, tensors_sha256
from xclip_lightning.optim import BertAdam

# Official optimisation (xclip-spec.md §9): lr 1e-4, CLIP at lr x 1e-3, AdamW-style decoupled decay 0.2,
# betas (0.9, 0.98), eps 1e-6, 10% linear warmup then 0.5 (1 + cos(pi p)) of the *total* progress p.
LR = 1e-4
CLIP_LR_SCALE = 1e-3
WEIGHT_DECAY = 0.2
BETAS = (0.9, 0.98)
EPS = 1e-6
WARMUP_FRACTION = 0.1
MAX_GRAD_NORM = 1.0
QB_BANK_SIZE = 10_000  # training captions in QB-Norm's query bank
QB_ENCODE_BATCH = 256
MAX_LOGIT_SCALE = math.log(100.0)  # clamped after every step
# CLIP parameters the official run freezes (--freeze_layer_num 0): embeddings, patch conv, ln_pre
FROZEN_CLIP_PARAMETERS = (
    "text_model.embeddings.token_embedding.",
    "text_model.embeddings.position_embedding.",
    "vision_model.embeddings.",  # class_embedding, patch_embedding (conv1), position_embedding
    "vision_model.pre_layrnorm.",  # transformers' spelling of ln_pre
)


CLIP_SPEC_KEY = "xclip_clip_spec"  # CLIP's config + tokenizer files in every checkpoint (XCLIP.clip_spec)
CHECKSUM_KEY = "xclip_sha256"  # SHA-256 of all the checkpoint holds: tensors, hyper-parameters, CLIP spec, states
TENSORS_CHECKSUM_KEY = "xclip_tensors_sha256"  # what checkpoints of 0.1.0 carry: the tensors only (still checked)
FORMAT_KEY = "xclip_checkpoint_format"
CHECKPOINT_FORMAT = 1  # the checkpoint layout this version writes and reads


def checkpoint_checksum(checkpoint: dict[str, Any]) -> str:
    """SHA-256 of everything in ``checkpoint`` but its checksums."""
    content = {k: v for k, v in checkpoint.items() if k not in (CHECKSUM_KEY, TENSORS_CHECKSUM_KEY)}
    return tensors_sha256(content, everything=True)


def verify_checkpoint(checkpoint: dict[str, Any], path: str | Path) -> None:
    """Raises ``CorruptCheckpointError`` naming ``path`` when ``checkpoint`` changed since it was saved (a bit flip
    on disk, an edit of a weight, a hyper-parameter or the embedded tokenizer), ``CheckpointError`` when a newer
    version wrote it. A checkpoint without a checksum (not written by xclip-lightning) is taken as it is."""
    written = checkpoint.get(FORMAT_KEY, CHECKPOINT_FORMAT)
    if not isinstance(written, int) or written > CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path}: written by a newer xclip-lightning (checkpoint format {written!r}; this version reads "
            f"{CHECKPOINT_FORMAT}): upgrade xclip-lightning to use it"
        )
    if CHECKSUM_KEY in checkpoint:
        good = checkpoint_checksum(checkpoint) == checkpoint[CHECKSUM_KEY]
    elif TENSORS_CHECKSUM_KEY in checkpoint:
        content = {k: v for k, v in checkpoint.items() if k != TENSORS_CHECKSUM_KEY}
        good = tensors_sha256(content) == checkpoint[TENSORS_CHECKSUM_KEY]
    else:
        return
    if not good:
        raise CorruptCheckpointError(
            f"{path}: its contents do not match the checksum written when it was saved (corrupted on disk, or "
            f"edited): load a good copy, e.g. another checkpoint of the run"
        )


_VERIFIED: set[tuple] = set()  # the stamps of the checkpoint files verified in this process


def _stamp(path: str | Path) -> tuple | None:
    """A file's path, inode, size and change times: any write or replacement changes one of them."""
    try:
        stat = Path(path).stat()
    except OSError:
        return None
    return str(Path(path).resolve()), stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns


_CLIP_SPEC: ContextVar[dict[str, Any] | None] = ContextVar("xclip_clip_spec", default=None)
_LOADING: ContextVar[str | None] = ContextVar("xclip_loading_checkpoint", default=None)  # for error messages


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint of ``fit``, loaded without running any pickled code and verified against its checksum.

    Every way it can fail is a ``CheckpointError`` naming the file: missing, a folder, truncated or flipped (torch's
    own messages, which advise ``weights_only=False``, unsafe for a damaged file, are not repeated), not a Lightning
    checkpoint, from a newer version, or changed since it was saved.
    """
    check_checkpoint_file(path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # zip, pickle, unicode, JSON errors of a truncated or flipped file
        raise CorruptCheckpointError(
            f"{path}: not a readable checkpoint ({type(err).__name__}): the file is damaged or is not a checkpoint "
            f"written by xclip-lightning fit; load a good copy"
        ) from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise CheckpointError(
            f"{path}: not a Lightning checkpoint (no state_dict); an official X-CLIP checkpoint is turned into a "
            f"model folder with `xclip-lightning convert --official {path} --out DIR`"
        )
    stamp = _stamp(path)
    if stamp not in _VERIFIED:  # once per file and process: the CLI, Lightning and the model each load it
        verify_checkpoint(checkpoint, path)
        _VERIFIED.add(stamp)
    return checkpoint


@contextmanager
def clip_from_checkpoint(path: str | Path | None) -> Iterator[None]:
    """Inside, ``XCLIPRetrieval(...)`` builds CLIP from the config and tokenizer stored in the checkpoint at
    ``path`` instead of reading ``clip_name_or_path``: the weights come from the checkpoint right after, so neither
    the original CLIP folder nor the original working directory is needed. The checkpoint is verified first
    (``read_checkpoint``), so a damaged one fails here, before anything is built from it. No-op for None, for
    Lightning's ``"last"`` / ``"best"`` / ..., and for a checkpoint written before checkpoints carried their CLIP."""
    spec = None
    if path is not None and not is_lightning_alias(path):
        spec = read_checkpoint(path).get(CLIP_SPEC_KEY)
    token = _CLIP_SPEC.set(spec)
    try:
        yield
    finally:
        _CLIP_SPEC.reset(token)


POSTPROCESSED = ("_dsl", "_qb")  # suffixes of the metrics after dual softmax and QB-Norm


def _log_name(key: str) -> str:
    """``t2v/R1`` -> ``t2v_R1``; ``t2v_dsl/R1`` -> ``t2v_R1_dsl``, ``t2v_qb/R1`` -> ``t2v_R1_qb`` (a post-processed
    number keeps its plain name's prefix)."""
    group, name = key.split("/")
    for suffix in POSTPROCESSED:
        if group.endswith(suffix):
            return f"{group.removesuffix(suffix)}_{name}{suffix}"
    return f"{group}_{name}"


def warmup_cosine(step: int, total_steps: int, warmup_fraction: float = WARMUP_FRACTION) -> float:
    """Official ``warmup_cosine``: p / warmup while p < warmup, then 0.5 (1 + cos(pi p)), p = step / total.

    Example:
        >>> [round(warmup_cosine(s, 100), 3) for s in (0, 5, 10, 50, 100)]
        [0.0, 0.5, 0.976, 0.5, 0.0]
    """
    p = step / max(1, total_steps)
    if p < warmup_fraction:
        return p / warmup_fraction
    return 0.5 * (1.0 + math.cos(math.pi * p))


class XCLIPRetrieval(L.LightningModule):
    """X-CLIP text-video retrieval (Ma et al., ACM MM 2022) as a LightningModule.

    Args:
        clip_name_or_path: CLIP weights (a local folder or a hub name) to start from; its tokenizer too.
        max_words, max_frames: word and frame slots; the AOSM matrices are sized to them.
        temporal_layers, contrasts, aggregation, temperature, mask_padding: the head options (``XCLIPHead``).
        lr: learning rate of the head (temporal encoder, position embeddings, AOSM matrices).
        clip_lr_scale: CLIP's learning rate is ``lr * clip_lr_scale`` (official 1e-3).
        weight_decay: decoupled weight decay on every parameter except biases (the official set).
        betas, eps: AdamW moments (official BertAdam values).
        warmup_fraction: linear warmup over this fraction of all steps, then the official cosine.
        freeze_clip_embeddings: freeze CLIP's token / position / patch embeddings and ln_pre (official).
        max_grad_norm: global gradient-norm clipping (official 1.0); None turns it off.
        eval_block_elements: memory bound of one block of the full evaluation matrix.
        eval_dsl: also log the metrics after dual-softmax re-ranking (an inference trick many peers' tables include,
            not the official X-CLIP numbers) under their own names, ``val/t2v_R1_dsl`` ...; the plain metrics are
            unchanged.
        eval_qb_norm: also log text->video after QB-Norm (``metrics.querybank_normalise``; another peers' trick),
            as ``test/t2v_R1_qb`` ...; its query bank is ``qb_norm_bank_size`` captions of the *training* split
            (a seeded sample; only the annotations are read, not the training videos), never the evaluated texts.
        optimizer: ``adamw`` (torch's, bias-corrected) or ``bertadam`` (the official one: no bias correction).
        grad_cache_chunk: gradient caching: encode the batch in chunks of this many pairs without a graph, take the
            loss over the whole (global) batch, then re-encode chunk by chunk and back-propagate the cached feature
            gradients. The gradients equal plain training on the same batch; activation memory is that of one
            chunk, so the official global batch fits on fewer or smaller GPUs. None: plain training.
        gradient_checkpointing: recompute the CLIP towers' activations in the backward pass instead of storing
            them (transformers' activation checkpointing, non-reentrant): less memory, one more forward pass.
        attention: CLIP's attention through torch's scaled-dot-product kernels (``sdpa``) or transformers'
            ``eager`` code: the same values (tested), the kernel differs.
        clip_fp16_weights: the official precision: CLIP's weights in fp16 and updated in place, LayerNorms in fp32
            (use with ``trainer.precision=32-true``: no AMP on top). Most updates at CLIP's lr of 1e-7 are lost to
            fp16 rounding, as in the official run; the default keeps fp32 weights.
        compile: ``torch.compile`` the two CLIP towers in place (same parameter names, same values; the first steps
            pay the compilation, minutes on a CPU).
    """

    def __init__(
        self,
        clip_name_or_path: str = DEFAULT_CLIP,
        max_words: int = DEFAULT_MAX_WORDS,
        max_frames: int = DEFAULT_MAX_FRAMES,
        temporal_layers: int = DEFAULT_TEMPORAL_LAYERS,
        contrasts: Sequence[Contrast] = CONTRASTS,
        aggregation: Aggregation = "aosm",
        temperature: float = AOSM_TEMPERATURE,
        mask_padding: bool = False,
        lr: float = LR,
        clip_lr_scale: float = CLIP_LR_SCALE,
        weight_decay: float = WEIGHT_DECAY,
        betas: tuple[float, float] = BETAS,
        eps: float = EPS,
        warmup_fraction: float = WARMUP_FRACTION,
        freeze_clip_embeddings: bool = True,
        max_grad_norm: float | None = MAX_GRAD_NORM,
        eval_block_elements: int = DEFAULT_BLOCK_ELEMENTS,
        eval_dsl: bool = False,
        eval_qb_norm: bool = False,
        qb_norm_bank_size: int = QB_BANK_SIZE,
        optimizer: Literal["adamw", "bertadam"] = "adamw",
        grad_cache_chunk: int | None = None,
        gradient_checkpointing: bool = False,
        attention: Attention = "sdpa",
        clip_fp16_weights: bool = False,
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = XCLIP.from_clip(
            clip_name_or_path,
            max_words=max_words,
            max_frames=max_frames,
            temporal_layers=temporal_layers,
            contrasts=list(contrasts),
            aggregation=aggregation,
            temperature=temperature,
            mask_padding=mask_padding,
            clip_spec=_CLIP_SPEC.get(),
            attention=attention,
        )
        self._clip_spec: dict[str, Any] | None = None
        if freeze_clip_embeddings:
            for name, parameter in self.model.encoders.clip.named_parameters():
                if name.startswith(FROZEN_CLIP_PARAMETERS):
                    parameter.requires_grad_(False)
        if grad_cache_chunk is not None and grad_cache_chunk < 1:
            raise ValueError(f"grad_cache_chunk must be at least 1 (or None), got {grad_cache_chunk}")
        if optimizer not in ("adamw", "bertadam"):
            raise ValueError(f"unknown optimizer {optimizer!r}: use 'adamw' or 'bertadam'")
        self.automatic_optimization = grad_cache_chunk is None  # gradient caching runs its own backward passes
        if clip_fp16_weights:
            self.model.encoders.use_fp16_weights()
        if gradient_checkpointing:
            clip = self.model.encoders.clip  # transformers 5.x renamed it; older versions have the old name only
            enable = getattr(clip, "activation_checkpointing_enable", None)
            if enable is not None:
                enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                clip.gradient_checkpointing_enable({"use_reentrant": False})
        if compile:
            self.model.encoders.clip.vision_model.compile()
            self.model.encoders.clip.text_model.compile()
        self.model.train()  # from_pretrained leaves CLIP in eval mode
        self._texts: list[dict[str, Tensor]] = []
        self._videos: list[dict[str, Tensor]] = []
        self._bank_tokens: TokenizedText | None = None

    # ---- checkpoints ----------------------------------------------------------------------------------------------

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: str | Path, *args: Any, **kwargs: Any) -> XCLIPRetrieval:
        """Lightning's ``load_from_checkpoint``, needing neither the original CLIP folder nor its working directory
        (the checkpoint carries CLIP's config and tokenizer); nothing pickled is executed."""
        kwargs.setdefault("weights_only", True)
        token = _LOADING.set(str(checkpoint_path))
        try:
            with clip_from_checkpoint(checkpoint_path):
                return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)
        finally:
            _LOADING.reset(token)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Adds CLIP's config and tokenizer, the format, and the checksum of everything (``checkpoint_checksum``)."""
        if self._clip_spec is None:  # the config and tokenizer never change during a run: build it once
            self._clip_spec = self.model.clip_spec()
        checkpoint[CLIP_SPEC_KEY] = self._clip_spec
        checkpoint[FORMAT_KEY] = CHECKPOINT_FORMAT
        checkpoint[CHECKSUM_KEY] = checkpoint_checksum(checkpoint)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuses a checkpoint whose contents changed since they were saved (a bit flip on disk, an edit)."""
        path = _LOADING.get() or (self._trainer.ckpt_path if self._trainer is not None else None)
        if path is None or _stamp(path) not in _VERIFIED:
            verify_checkpoint(checkpoint, path or "checkpoint")

    # ---- training -----------------------------------------------------------------------------------------------

    def _gather_features(self, text: TextFeatures, video: VideoFeatures) -> tuple[TextFeatures, VideoFeatures]:
        """Local [B,...] features -> global [W*B,...], in rank order, gradients kept.

        The float features travel packed in one [B,K] tensor, so each step makes one collective forward and one
        backward: several gathers with gradients would each need a collective in the backward pass, in an order
        that autograd does not promise to keep the same on every rank.
        """
        if self._trainer is None or self.trainer.world_size == 1:
            return text, video
        floats = [text.sentence, text.words, video.video, video.frames]
        packed = torch.cat([x.reshape(x.shape[0], -1) for x in floats], dim=1)  # [B,K]
        masks = [m for m in (text.word_mask, video.frame_mask) if m is not None]
        gathered = self.all_gather(packed, sync_grads=True).flatten(0, 1)  # [W*B,K]
        with torch.no_grad():
            gathered_masks = [self.all_gather(m).flatten(0, 1) for m in masks]
        parts = gathered.split([x[0].numel() for x in floats], dim=1)
        sentence, words, video_emb, frames = (p.reshape(-1, *x.shape[1:]) for p, x in zip(parts, floats, strict=True))
        word_mask = gathered_masks.pop(0) if text.word_mask is not None else None
        return TextFeatures(sentence, words, word_mask), VideoFeatures(video_emb, frames, gathered_masks.pop(0))

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        """Logits [B,B] of a batch of (caption, video) pairs, texts as rows (local batch, no process group)."""
        return self.model(batch["input_ids"], batch["word_mask"], batch["frames"], batch["frame_mask"])

    def _global_loss(self, text: TextFeatures, video: VideoFeatures) -> Tensor:
        """Symmetric InfoNCE over the global batch (every rank's features gathered, gradients kept)."""
        text, video = self._gather_features(text, video)
        logits = self.model.head.score(text, video, self.model.logit_scale())["logits"]
        loss = symmetric_infonce(logits)
        self.log("train/loss", loss, prog_bar=True, batch_size=logits.shape[0])
        self.log("train/logit_scale", self.model.logit_scale().detach(), batch_size=logits.shape[0])
        return loss

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor | None:
        if not batch:  # every item of the batch was a skipped bad video (on-the-fly decoding, bad_videos='skip')
            return None
        if not self.automatic_optimization:
            return self._grad_cache_step(batch)
        text = self.model.encode_text(batch["input_ids"], batch["word_mask"])
        video = self.model.encode_video(batch["frames"], batch["frame_mask"])
        return self._global_loss(text, video)

    def _encode_chunk(self, batch: dict[str, Tensor], rows: slice) -> tuple[TextFeatures, VideoFeatures]:
        text = self.model.encode_text(batch["input_ids"][rows], batch["word_mask"][rows])
        return text, self.model.encode_video(batch["frames"][rows], batch["frame_mask"][rows])

    def _grad_cache_step(self, batch: dict[str, Tensor]) -> Tensor:
        """One optimiser step with gradient caching (Gao et al. 2021), exact for the global contrastive batch.

        1. encode every chunk without a graph; 2. the loss over the gathered global batch, back-propagated into the
        head's parameters and into the (detached) features; 3. each chunk re-encoded with its graph, back-propagating
        the cached feature gradients into the encoders. Under DDP the reducer stays out of these passes (it expects
        one backward per forward); the gradients are then averaged over ranks in one all-reduce, as DDP would.
        """
        optimizer, schedule = self.optimizers(), self.lr_schedulers()
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)  # fp16 AMP: gradients stay scaled
        size = batch["input_ids"].shape[0]
        chunks = [slice(i, i + self.hparams.grad_cache_chunk) for i in range(0, size, self.hparams.grad_cache_chunk)]
        with torch.no_grad():
            encoded = [self._encode_chunk(batch, rows) for rows in chunks]
        text = TextFeatures(*(torch.cat(x) for x in zip(*(t for t, _ in encoded), strict=True)))
        video = VideoFeatures(*(torch.cat(x) for x in zip(*(v for _, v in encoded), strict=True)))
        leaves = [x.detach().requires_grad_() for x in (text.sentence, text.words, video.video, video.frames)]
        optimizer.zero_grad()
        loss = self._global_loss(
            TextFeatures(leaves[0], leaves[1], text.word_mask), VideoFeatures(leaves[2], leaves[3], video.frame_mask)
        )
        (scaler.scale(loss) if scaler is not None else loss).backward()
        cached = [leaf.grad for leaf in leaves]
        for rows in chunks:
            text_chunk, video_chunk = self._encode_chunk(batch, rows)
            features = (text_chunk.sentence, text_chunk.words, video_chunk.video, video_chunk.frames)
            torch.autograd.backward(features, [grad[rows] for grad in cached])
        self._average_gradients_over_ranks()
        if self.hparams.max_grad_norm is not None:
            if scaler is not None:
                scaler.unscale_(optimizer.optimizer)
            self.clip_gradients(optimizer, gradient_clip_val=self.hparams.max_grad_norm)
        optimizer.step()
        schedule.step()
        return loss.detach()

    def on_train_start(self) -> None:
        model = self.trainer.strategy.model
        if not self.automatic_optimization and isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model.require_backward_grad_sync = False  # gradient caching averages the gradients itself

    def _average_gradients_over_ranks(self) -> None:
        if self.trainer.world_size == 1:
            return
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads])
        torch.distributed.all_reduce(flat)
        flat /= self.trainer.world_size
        for grad, part in zip(grads, flat.split([g.numel() for g in grads]), strict=True):
            grad.copy_(part.view_as(grad))

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
        for name, parameter in self.model.named_parameters():
            if parameter.requires_grad:
                is_clip = name.startswith("encoders.clip.")
                decay = "bias" not in name  # official: no module is called LayerNorm, so only biases are exempt
                groups.setdefault((is_clip, decay), []).append(parameter)
        param_groups = [
            {
                "params": params,
                "lr": hp.lr * (hp.clip_lr_scale if is_clip else 1.0),
                "weight_decay": hp.weight_decay if decay else 0.0,
            }
            for (is_clip, decay), params in sorted(groups.items())
        ]
        if hp.optimizer == "bertadam":
            optimizer = BertAdam(param_groups, lr=hp.lr, betas=tuple(hp.betas), eps=hp.eps)
        else:
            optimizer = torch.optim.AdamW(param_groups, lr=hp.lr, betas=tuple(hp.betas), eps=hp.eps)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_cosine(step, total, hp.warmup_fraction)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def configure_gradient_clipping(
        self, optimizer: torch.optim.Optimizer, gradient_clip_val: float | None = None, gradient_clip_algorithm=None
    ) -> None:
        """Global norm clipping at ``max_grad_norm`` (official 1.0) unless the Trainer sets its own."""
        value = gradient_clip_val if gradient_clip_val is not None else self.hparams.max_grad_norm
        if value is not None:
            self.clip_gradients(optimizer, gradient_clip_val=value, gradient_clip_algorithm=gradient_clip_algorithm)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        with torch.no_grad():  # official: logit_scale clamped to at most ln(100) after every step
            if self.model.encoders.clamp_logit_scale:  # CLIP's; SigLIP's scale is its own
                self.model.encoders.clip.logit_scale.clamp_(max=MAX_LOGIT_SCALE)

    # ---- evaluation -----------------------------------------------------------------------------------------------

    def _eval_step(self, batch: dict[str, Tensor]) -> None:
        if not batch:
            return
        if "input_ids" in batch:
            text = self.model.encode_text(batch["input_ids"], batch["word_mask"])
            self._texts.append(
                {
                    "sentence": text.sentence.float(),
                    "words": text.words.float(),
                    "word_mask": batch["word_mask"],
                    "text_index": batch["text_index"],
                    "video_index": batch["video_index"],
                }
            )
        else:
            video = self.model.encode_video(batch["frames"], batch["frame_mask"])
            self._videos.append(
                {
                    "video": video.video.float(),
                    "frames": video.frames.float(),
                    "frame_mask": video.frame_mask,
                    "video_index": batch["video_index"],
                    "captions": batch.get("captions", torch.ones_like(batch["video_index"])),
                }
            )

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch)

    def test_step(self, batch: dict[str, Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch)

    def _all_unique(self, parts: list[dict[str, Tensor]], key: str) -> dict[str, Tensor]:
        """Concatenate the local parts, gather every rank's, keep one row per ``key`` index, sorted by it."""
        local = {name: torch.cat([p[name] for p in parts]) for name in parts[0]}
        if self.trainer.world_size > 1:
            local = {name: self.all_gather(x).flatten(0, 1) for name, x in local.items()}
        kept = first_of_each(local[key])
        return {name: x[kept] for name, x in local.items()}

    def _evaluate(self, stage: str) -> dict[str, float]:
        """Metrics over the captions and videos this evaluation encoded.

        Normally that is the whole split. A partial pass (the sanity check, ``limit_val_batches``, videos skipped
        with ``bad_videos='skip'``) is scored over what it saw: the captions whose video was encoded, against the
        videos that have such a caption; outside the sanity check a warning gives the counts.
        """
        texts, videos = self._texts, self._videos
        self._texts, self._videos = [], []
        if not texts or not videos:
            return {}
        video = self._all_unique(videos, "video_index")
        pairs = self._all_unique([{k: t[k] for k in ("text_index", "video_index")} for t in texts], "text_index")
        if not bool((pairs["video_index"].diff() >= 0).all()):
            raise RuntimeError("evaluation captions must be grouped by video (CaptionDataset keeps them so)")
        # captions whose video was encoded, then the videos that kept a caption, and the distractors (no caption)
        text_kept = torch.isin(pairs["video_index"], video["video_index"])
        video_kept = torch.isin(video["video_index"], pairs["video_index"][text_kept]) | (video["captions"] == 0)
        kept_text_index, kept_video_index = pairs["text_index"][text_kept], video["video_index"][video_kept]
        if len(kept_text_index) == 0:
            return {}
        self._warn_if_partial(stage, len(kept_text_index), len(kept_video_index))
        video_features = VideoFeatures(
            video["video"][video_kept], video["frames"][video_kept], video["frame_mask"][video_kept]
        )
        column = torch.searchsorted(kept_video_index, pairs["video_index"][text_kept])
        captions_per_video = torch.bincount(column, minlength=len(kept_video_index))
        single = bool((captions_per_video == 1).all())
        dsl = bool(self.hparams.get("eval_dsl", False))  # checkpoints of 0.1.0 do not have it
        bank = None
        if self.hparams.get("eval_qb_norm", False):
            bank = self.model.score_matrix(self._querybank(), video_features, self.hparams.eval_block_elements)
        counts = None if single else captions_per_video.tolist()
        metric = RetrievalMetrics(counts, dsl=dsl, querybank=bank).to(self.device)
        for part in texts:  # each rank scores its own captions against every kept video
            keep = torch.isin(part["text_index"], kept_text_index)
            text = TextFeatures(part["sentence"][keep], part["words"][keep], part["word_mask"][keep])
            rows = self.model.score_matrix(text, video_features, self.hparams.eval_block_elements)
            metric.update(rows, torch.searchsorted(kept_text_index, part["text_index"][keep]))
        result = {f"{stage}/{_log_name(k)}": v.item() for k, v in metric.compute().items()}
        self.log_dict(result, sync_dist=False)
        return result

    def _querybank(self) -> TextFeatures:
        """QB-Norm's query bank: a seeded sample of the training split's captions, encoded by the current model."""
        if self._bank_tokens is None:
            datamodule = getattr(self.trainer, "datamodule", None)
            if datamodule is None or not hasattr(datamodule, "records"):
                raise ValueError("eval_qb_norm needs a VideoTextDataModule: its training captions are the query bank")
            try:
                records = datamodule.records("train", missing_videos=KEEP_MISSING)  # captions only: no video needed
            except (OSError, ValueError) as err:
                raise ValueError(f"eval_qb_norm needs the training split's captions for its query bank: {err}") from err
            captions = all_captions(records)
            order = torch.randperm(len(captions), generator=torch.Generator().manual_seed(0))
            chosen = [captions[i] for i in order[: self.hparams.qb_norm_bank_size].tolist()]
            clean = getattr(datamodule, "clean_captions", True)
            self._bank_tokens = tokenize(self.model.tokenizer, chosen, self.hparams.max_words, clean=clean)
        parts = []
        tokens = self._bank_tokens
        for start in range(0, len(tokens.input_ids), QB_ENCODE_BATCH):
            rows = slice(start, start + QB_ENCODE_BATCH)
            ids, mask = tokens.input_ids[rows].to(self.device), tokens.word_mask[rows].to(self.device)
            text = self.model.encode_text(ids, mask)
            parts.append((text.sentence.float(), text.words.float(), mask))
        return TextFeatures(*(torch.cat(p) for p in zip(*parts, strict=True)))

    def _warn_if_partial(self, stage: str, num_texts: int, num_videos: int) -> None:
        if self.trainer.sanity_checking:
            return
        loaders = self.trainer.val_dataloaders if stage == "val" else self.trainer.test_dataloaders
        total_texts, total_videos = (len(loader.dataset) for loader in loaders)
        if (num_texts, num_videos) != (total_texts, total_videos):
            warnings.warn(
                f"{stage} metrics cover {num_texts} of {total_texts} captions and {num_videos} of {total_videos} "
                f"videos (limited batches or skipped bad videos): not comparable to a full evaluation",
                RuntimeWarning,
                stacklevel=2,
            )

    def on_validation_epoch_end(self) -> None:
        self._evaluate("val")

    def on_test_epoch_end(self) -> None:
        self._evaluate("test")

    # ---- prediction -------------------------------------------------------------------------------------------

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Tensor]:
        """Features of a batch of captions (sentence, words) or videos (video, frames), with their indices."""
        if "input_ids" in batch:
            text = self.model.encode_text(batch["input_ids"], batch["word_mask"])
            return {
                "sentence": text.sentence,
                "words": text.words,
                "word_mask": batch["word_mask"],
                "text_index": batch["text_index"],
            }
        video = self.model.encode_video(batch["frames"], batch["frame_mask"])
        return {
            "video": video.video,
            "frames": video.frames,
            "frame_mask": video.frame_mask,
            "video_index": batch["video_index"],
        }
