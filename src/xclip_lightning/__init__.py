"""xclip-lightning: X-CLIP text-video retrieval (Ma et al., ACM MM 2022) in PyTorch Lightning.

Not Microsoft's X-CLIP for video recognition (transformers' ``XCLIPModel``).
"""

from typing import Any

from xclip_lightning.inputs.tokenize import TokenizedText, tokenize
from xclip_lightning.loss import symmetric_infonce
from xclip_lightning.metrics import RetrievalMetrics, retrieval_metrics
from xclip_lightning.model.head import TextFeatures, VideoFeatures, XCLIPHead
from xclip_lightning.model.xclip import XCLIP

__version__ = "0.1.0"
__all__ = [
    "XCLIP",
    "RetrievalMetrics",
    "TextFeatures",
    "TokenizedText",
    "VideoFeatures",
    "VideoTextDataModule",
    "XCLIPHead",
    "XCLIPRetrieval",
    "retrieval_metrics",
    "symmetric_infonce",
    "tokenize",
]


def __getattr__(name: str) -> Any:
    """The Lightning classes load on first use, so the model and search code import without Lightning."""
    if name == "XCLIPRetrieval":
        from xclip_lightning.lightning_module import XCLIPRetrieval

        return XCLIPRetrieval
    if name == "VideoTextDataModule":
        from xclip_lightning.data.datamodule import VideoTextDataModule

        return VideoTextDataModule
    raise AttributeError(f"module 'xclip_lightning' has no attribute {name!r}")
