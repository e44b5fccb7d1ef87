"""Searching your own videos: encode a folder once into an index, then query it by text with the full X-CLIP score.

    from xclip_lightning.index import VideoIndex
    index = VideoIndex.build("models/my-xclip", "my_videos/", "my_index/")
    hits = VideoIndex.load("my_index/").search(["a dog catches a frisbee"], k=10)

The wing, one responsibility a module: ``records`` (IndexEntry, SearchHit), ``store`` (the index on disk),
``ann`` (the approximate first stage), ``plan`` (what an update must do), ``encode`` (decoding and encoding
videos), ``build`` (one process) and ``distributed`` (several, under DDP), ``video_index`` (load and search),
``ranking`` (the two stages), ``report`` (the HTML page).
"""

from typing import Any

__all__ = ["IndexBusyError", "IndexEntry", "SearchHit", "VideoIndex", "VideoIndexError"]


def __getattr__(name: str) -> Any:
    """The public names load on first use: importing the package costs nothing until one is needed."""
    if name in ("VideoIndex", "IndexEntry", "SearchHit", "VideoIndexError", "IndexBusyError"):
        from xclip_lightning.index import video_index

        return getattr(video_index, name)
    raise AttributeError(f"module 'xclip_lightning.index' has no attribute {name!r}")
