"""Annotation readers: one small parser per benchmark, each returning ``VideoRecord`` lists (xclip-spec.md §12)."""

from xclip_lightning.data.benchmarks.activitynet import read_activitynet
from xclip_lightning.data.benchmarks.common import AnnotationError, MissingVideosError, VideoRecord
from xclip_lightning.data.benchmarks.didemo import read_didemo
from xclip_lightning.data.benchmarks.generic import read_generic
from xclip_lightning.data.benchmarks.lsmdc import read_lsmdc
from xclip_lightning.data.benchmarks.msrvtt import read_msrvtt
from xclip_lightning.data.benchmarks.msvd import read_msvd

READERS = {
    "msrvtt": read_msrvtt,
    "msvd": read_msvd,
    "lsmdc": read_lsmdc,
    "didemo": read_didemo,
    "activitynet": read_activitynet,
    "generic": read_generic,
}

__all__ = [
    "READERS",
    "AnnotationError",
    "MissingVideosError",
    "VideoRecord",
    "read_activitynet",
    "read_didemo",
    "read_generic",
    "read_lsmdc",
    "read_msrvtt",
    "read_msvd",
]
