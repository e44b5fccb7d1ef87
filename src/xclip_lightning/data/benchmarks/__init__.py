"""Annotation readers: one small parser per benchmark, each returning ``VideoRecord`` lists (xclip-spec.md §12)."""

from xclip_lightning.data.benchmarks.common import AnnotationError, MissingVideosError, VideoRecord
from xclip_lightning.data.benchmarks.generic import read_generic
from xclip_lightning.data.benchmarks.msrvtt import read_msrvtt
from xclip_lightning.data.benchmarks.msvd import read_msvd

__all__ = ["AnnotationError", "MissingVideosError", "VideoRecord", "read_generic", "read_msrvtt", "read_msvd"]
