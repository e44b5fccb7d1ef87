"""xclip-lightning: X-CLIP text-video retrieval (Ma et al., ACM MM 2022) in PyTorch Lightning.

Not Microsoft's X-CLIP for video recognition (transformers' ``XCLIPModel``).

The public names load on first use (``from xclip_lightning import XCLIP`` imports torch and transformers then),
so the command line parses its arguments and answers ``--help`` before any of them is imported.
"""

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_WHERE = {  # public name -> the module that defines it
    "XCLIP": "xclip_lightning.model.xclip",
    "XCLIPHead": "xclip_lightning.model.head",
    "TextFeatures": "xclip_lightning.model.head",
    "VideoFeatures": "xclip_lightning.model.head",
    "RetrievalMetrics": "xclip_lightning.metrics",
    "retrieval_metrics": "xclip_lightning.metrics",
    "symmetric_infonce": "xclip_lightning.loss",
    "TokenizedText": "xclip_lightning.inputs.tokenize",
    "tokenize": "xclip_lightning.inputs.tokenize",
    "XCLIPRetrieval": "xclip_lightning.lightning_module",
    "VideoTextDataModule": "xclip_lightning.data.datamodule",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'xclip_lightning' has no attribute {name!r}")
    value = getattr(import_module(_WHERE[name]), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])
