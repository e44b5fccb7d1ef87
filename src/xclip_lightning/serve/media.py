"""The indexed files as a browser plays them.

A file Chromium plays as it is (MP4 / MOV with H.264, VP9 or AV1; WebM with VP8, VP9 or AV1) is served from disk
with HTTP Range requests, so the player seeks. Anything else (MPEG-TS, AVI, WMV, FLV, MPEG-PS, a Matroska file with
H.264 or MPEG-4 video, ...) is served as the moment alone, transcoded on the fly with PyAV to MP4 / H.264 (no audio,
at most 480 lines, kept in a small in-memory cache), whose time 0 is the moment's start: the page adds the offset.
"""

from __future__ import annotations

import os
import re
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av

from xclip_lightning.data.video import presentation_start

PLAYABLE = {  # PyAV's container name -> the video codecs Chromium plays in it
    "mov,mp4,m4a,3gp,3g2,mj2": {"h264", "vp9", "av1"},
    "webm": {"vp8", "vp9", "av1"},
}
PLAYABLE_AUDIO = {"aac", "mp3", "opus", "vorbis", "flac"}
TYPES = {".mp4": "video/mp4", ".m4v": "video/mp4", ".mov": "video/mp4", ".webm": "video/webm"}
CLIP_HEIGHT = 480  # transcoded moments are scaled down to at most this many lines
CLIP_CACHE_BYTES = 256 * 2**20
_RANGE = re.compile(r"bytes=(\d*)-(\d*)$")


class MediaError(Exception):
    """A file that cannot be served (gone, unreadable, or no video stream)."""


@dataclass(frozen=True)
class Playback:
    """How the page plays one indexed file: ``direct`` from disk, or as a transcoded clip of one moment."""

    direct: bool
    media_type: str


def playback(path: str) -> Playback:
    """Whether Chromium plays the file as it is (its container and codecs, read from the header)."""
    try:
        with av.open(path, metadata_errors="ignore") as container:
            names = set(container.format.name.split(","))
            video = container.streams.video[0].codec_context.name if container.streams.video else None
            audio = {s.codec_context.name for s in container.streams.audio}
    except (av.FFmpegError, OSError, IndexError) as err:
        raise MediaError(f"{path}: cannot be read ({err})") from None
    for container_name, codecs in PLAYABLE.items():
        fits = names & set(container_name.split(",")) and (container_name != "webm" or Path(path).suffix == ".webm")
        if fits and video in codecs and audio <= PLAYABLE_AUDIO:
            return Playback(True, TYPES.get(Path(path).suffix.lower(), "video/mp4"))
    return Playback(False, "video/mp4")


def transcode_moment(path: str, start: float, end: float, height: int = CLIP_HEIGHT) -> bytes:
    """The frames of ``path`` from ``start`` to ``end`` (seconds on the player's clock: from the file's presentation
    start, as the index times moments) as an MP4 / H.264 file whose time 0 is ``start``."""
    with av.open(path, metadata_errors="ignore") as source, tempfile.TemporaryDirectory() as folder:
        if not source.streams.video:
            raise MediaError(f"{path}: no video stream")
        stream = source.streams.video[0]
        stream.thread_type = "AUTO"
        zero = presentation_start(source, stream)
        origin = float(zero) if zero is not None else 0.0  # the index times moments from the presentation start
        if start > 0:
            try:
                source.seek(int((start + origin) / stream.time_base), stream=stream, backward=True)
            except av.FFmpegError:
                source.seek(0)  # no index to seek by: decode from the start
        out_path = os.path.join(folder, "clip.mp4")
        with av.open(out_path, "w", format="mp4", options={"movflags": "+faststart"}) as out:
            encoder, last = None, -1
            try:
                frames = source.decode(stream)
                for frame in frames:
                    if frame.pts is None:
                        continue
                    t = float(frame.pts * stream.time_base) - origin
                    if t < start - 1e-3:
                        continue
                    if t > end + 1e-3:
                        break
                    if encoder is None:
                        encoder = _encoder(out, frame.width, frame.height, height)
                    pts = round((t - start) * 1000)
                    if pts <= last:  # out-of-order or repeated timestamps: keep the first
                        continue
                    last = pts
                    image = frame.reformat(encoder.width, encoder.height, format="yuv420p")
                    image.pts, image.time_base = pts, Fraction(1, 1000)
                    out.mux(encoder.encode(image))
            except av.FFmpegError:
                pass  # a corrupt packet ends the clip where it is (the index sampled what decodes)
            if encoder is None:
                raise MediaError(f"{path}: no frame between {start:.1f} and {end:.1f} s")
            out.mux(encoder.encode(None))
        return Path(out_path).read_bytes()


def _encoder(out: av.container.OutputContainer, width: int, height: int, max_height: int) -> av.VideoStream:
    scale = min(1.0, max_height / height)
    encoder = out.add_stream("libx264", rate=30, options={"preset": "ultrafast", "crf": "26", "tune": "zerolatency"})
    encoder.width, encoder.height = max(2, round(width * scale / 2) * 2), max(2, round(height * scale / 2) * 2)
    encoder.pix_fmt = "yuv420p"
    encoder.codec_context.time_base = Fraction(1, 1000)
    return encoder


class ClipCache:
    """The transcoded moments last served, up to ``limit`` bytes (least recently used dropped first)."""

    def __init__(self, limit: int = CLIP_CACHE_BYTES) -> None:
        self.limit, self.clips, self.lock = limit, OrderedDict(), threading.Lock()
        self.size = 0

    def get(self, key: tuple, make) -> bytes:
        with self.lock:
            if key in self.clips:
                self.clips.move_to_end(key)
                return self.clips[key]
        data = make()
        with self.lock:
            if key not in self.clips:
                self.clips[key] = data
                self.size += len(data)
            while self.size > self.limit and len(self.clips) > 1:
                _, dropped = self.clips.popitem(last=False)
                self.size -= len(dropped)
        return data


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The first range of a ``Range: bytes=a-b`` header as (first, last) inclusive, clipped to ``size``; None for
    no header; ValueError for a range that cannot be satisfied (416)."""
    if not header:
        return None
    found = _RANGE.match(header.split(",")[0].strip())
    if found is None:
        raise ValueError(f"unsupported Range header {header!r}")
    first, last = found.groups()
    if not first:  # the last N bytes
        if not last or int(last) == 0:
            raise ValueError(f"unsatisfiable range {header!r}")
        return max(0, size - int(last)), size - 1
    first_byte = int(first)
    last_byte = min(int(last), size - 1) if last else size - 1
    if first_byte >= size or last_byte < first_byte:
        raise ValueError(f"unsatisfiable range {header!r} for {size} bytes")
    return first_byte, last_byte
