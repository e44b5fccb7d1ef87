"""``FeatureWriter``: what ``predict`` writes, the normalised text and video features, as safetensors.

``xclip-lightning predict --config ... --ckpt_path ...`` encodes the test split's captions and videos (or the
videos of ``--data.predict_videos``) and, with this callback (a default of the CLI), writes per rank:

    <output_dir>/texts.rank<r>.safetensors    sentence [N,D], words [N,L,D], word_mask [N,L], text_index [N]
    <output_dir>/videos.rank<r>.safetensors   video [N,D], frames [N,T,D], frame_mask [N,T], video_index [N]

``*_index`` is the position in the split (or the sorted folder listing); distributed padding can repeat a few
rows, which the index identifies.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from safetensors.torch import save_file


class FeatureWriter(BasePredictionWriter):
    """Writes what ``XCLIPRetrieval.predict_step`` returns; ``output_dir`` None = ``<log_dir>/predictions``."""

    def __init__(self, output_dir: str | None = None) -> None:
        super().__init__(write_interval="epoch")
        self.output_dir = output_dir

    def folder(self, trainer: L.Trainer) -> Path:
        return Path(self.output_dir) if self.output_dir else Path(trainer.log_dir or ".") / "predictions"

    def write_on_epoch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, predictions: Any, batch_indices: Any
    ) -> None:
        per_loader = predictions if predictions and isinstance(predictions[0], list) else [predictions]
        folder = self.folder(trainer)
        folder.mkdir(parents=True, exist_ok=True)
        for batches in per_loader:
            if not batches:
                continue
            kind = "texts" if "sentence" in batches[0] else "videos"
            tensors = {k: torch.cat([b[k] for b in batches]).detach().cpu().contiguous() for k in batches[0]}
            tensors = {k: v.to(torch.uint8) if v.dtype == torch.bool else v for k, v in tensors.items()}
            save_file(tensors, str(folder / f"{kind}.rank{trainer.global_rank}.safetensors"))
