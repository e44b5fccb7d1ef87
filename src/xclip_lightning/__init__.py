"""xclip-lightning: X-CLIP text-video retrieval (Ma et al., ACM MM 2022) in PyTorch Lightning.

Not Microsoft's X-CLIP for video recognition (transformers' ``XCLIPModel``).
"""

from xclip_lightning.data.datamodule import VideoTextDataModule
from xclip_lightning.data.tokenize import TokenizedText, tokenize
from xclip_lightning.lightning_module import XCLIPRetrieval
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
