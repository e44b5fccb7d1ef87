"""X-CLIP model: CLIP encoders, the temporal encoder and the multi-grained similarity head."""

from xclip_lightning.model.head import TextFeatures, VideoFeatures, XCLIPHead

__all__ = ["TextFeatures", "VideoFeatures", "XCLIPHead"]
