"""PyAV frame sampler: one frame per second of presentation time (xclip-spec.md §11, decoding-notes.md).

``sample_frames(path)`` returns upright RGB uint8 frames [T,3,H,W] and their timestamps in seconds, measured from
the first decodable frame. Two rules:

- ``mode="timestamp"`` (default): for second k, the first frame whose pts is at or after k seconds after the first
  frame, if it falls inside second k; a second with no frame is skipped, never filled with a duplicate.
  Timestamps come from pts in presentation order (AVI and B-frame files decode out of order).
- ``mode="official"``: the CLIP4Clip / X-CLIP arithmetic: frame index ``k * int(fps)`` for every second k, counted
  in presentation order, so the official frame choice can be reproduced exactly.

More seconds than ``max_frames``: the frames at ``linspace(0, n-1, max_frames)`` truncated to int are kept (the
official ``slice_framepos=2``). Bad input never becomes a zero-filled sample: it raises ``FileNotFoundError`` or
``VideoDecodeError`` naming the file and the reason. A corrupt packet in the middle costs only its own frames:
decoder errors are caught per packet, counted, and reported in one warning.
"""

from __future__ import annotations

import bisect
import functools
import heapq
import itertools
import math
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal, NamedTuple

import av
import numpy as np
import torch
from torch import Tensor

from xclip_lightning.errors import UserError

SamplingMode = Literal["timestamp", "official"]
FrameTransform = Callable[[Tensor], Tensor]  # uint8 [3,H,W] -> uint8 [3,S,S], applied to each frame as it is taken
FrameSelector = Callable[[list[Fraction]], list[int]]  # seconds of every picked frame -> the ones to keep (sorted)
NO_PTS_FORMATS = {"avi"}  # pts derived from decode order (MPEG-4 packed B-frames): frames don't map 1:1 to packets
REORDER_WINDOW = 64  # frames held to restore presentation order (AVI / B-frame decode order is only locally off)
PACKET_BUDGET = 64 << 20  # bytes of packets the fast path keeps between its passes; a larger file is demuxed twice


class VideoDecodeError(UserError, RuntimeError):
    """A video that cannot give a single usable frame: names the file and the reason."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path, self.reason = str(path), reason
        super().__init__(f"{path}: {reason}")


@dataclass(frozen=True)
class SampledFrames:
    """frames: uint8 [T,3,H,W] RGB upright; timestamps: float64 [T] seconds from the first decodable frame;
    late_start: seconds from the file's presentation start (a player's time 0) to that frame: a player shows the
    frame of ``timestamps[i]`` at ``late_start + timestamps[i]`` (0 for most files)."""

    frames: Tensor
    timestamps: Tensor
    late_start: float = 0.0


class _Picked(NamedTuple):
    """What a decoding path picked: (seconds from the first decodable frame, frame), and ``late_start``."""

    frames: list[tuple[Fraction, Tensor]]
    late_start: float


def presentation_start(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> Fraction | None:
    """Where players put time 0, in seconds of the file's clock: the container's start (its earliest stream's), or
    the video stream's when the container does not say; None when neither is known."""
    if container.start_time is not None:
        return Fraction(container.start_time, av.time_base)
    if stream.start_time is not None:
        return stream.start_time * stream.time_base
    return None


def _late_start(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, first: int | None
) -> float:
    """Seconds from the presentation start to the frame of pts ``first``; 0 when either is unknown."""
    zero = presentation_start(container, stream)
    if first is None or zero is None:
        return 0.0
    return max(0.0, float(first * stream.time_base - zero))


def linspace_indices(count: int, max_frames: int) -> list[int]:
    """Official ``slice_framepos=2``: ``np.linspace(0, count-1, max_frames)`` truncated to int when count > max."""
    if count <= max_frames:
        return list(range(count))
    return np.linspace(0, count - 1, num=max_frames, dtype=int).tolist()


def _linspace_select(times: list[Fraction], max_frames: int) -> list[int]:
    return linspace_indices(len(times), max_frames)


def _selector(select: FrameSelector | int) -> FrameSelector:
    """A selector, or ``max_frames`` for the linspace rule."""
    return functools.partial(_linspace_select, max_frames=select) if isinstance(select, int) else select


@dataclass(frozen=True)
class Window:
    """One moment of a long video: [start, end) seconds from the first frame, and which of the sampled frames are
    its own (``positions`` into the frames ``sample_frames`` returned; overlapping windows share frames)."""

    start: float
    end: float
    positions: tuple[int, ...]

    @property
    def count(self) -> int:
        return len(self.positions)


class WindowSelector:
    """Splits a video into moments and keeps up to ``max_frames`` frames of each by the linspace rule. After
    sampling, ``windows`` says which of the returned frames belong to which window (windows without a frame are left
    out). D is the time of the last picked frame plus one sampling period; a clip shorter than 1.5 windows stays one
    window, as the model was trained.

    Without ``stride`` (or a stride of at least the window): ``round(D / window)`` equal consecutive windows (at
    least one). With a shorter ``stride``: windows of ``window`` seconds starting every ``stride`` seconds, the last
    one ending at D, so an event on one window's boundary lies inside the next (``--stride 15`` with the default 30 s
    window: twice the moments)."""

    def __init__(self, window: float, fps: float, max_frames: int, stride: float | None = None) -> None:
        if window <= 0:
            raise ValueError(f"window must be positive (seconds), got {window}")
        if stride is not None and not stride > 0:
            raise ValueError(f"stride must be positive (seconds), got {stride}")
        self.window, self.period, self.max_frames = window, 1 / fps, max_frames
        self.stride = stride if stride is not None and stride < window else None
        self.windows: list[Window] = []

    def spans(self, duration: float) -> list[tuple[float, float]]:
        """The [start, end) seconds of each window of a video of ``duration`` seconds."""
        if self.stride is None or duration < 1.5 * self.window:
            count = max(1, round(duration / self.window))
            return [(duration * k / count, duration * (k + 1) / count) for k in range(count)]
        count = math.ceil((duration - self.window) / self.stride - 1e-9) + 1
        return [(k * self.stride, min(k * self.stride + self.window, duration)) for k in range(count)]

    def __call__(self, times: list[Fraction]) -> list[int]:
        if not times:
            self.windows = []
            return []
        seconds = [float(t) for t in times]
        duration = seconds[-1] + self.period
        spans = self.spans(duration)
        if self.stride is None:  # consecutive windows: each frame in exactly one
            groups: list[list[int]] = [[] for _ in spans]
            for i, time in enumerate(seconds):
                groups[min(len(spans) - 1, int(time * len(spans) / duration))].append(i)
        else:  # the frames are in presentation order: each window is a slice
            groups = [list(range(bisect.bisect_left(seconds, a), bisect.bisect_left(seconds, b))) for a, b in spans]
        chosen = [[group[j] for j in linspace_indices(len(group), self.max_frames)] for group in groups]
        kept = sorted({i for picks in chosen for i in picks})
        position = {index: p for p, index in enumerate(kept)}
        pairs = zip(spans, chosen, strict=True)
        self.windows = [Window(a, b, tuple(position[i] for i in picks)) for (a, b), picks in pairs if picks]
        return kept


def _open(path: str | os.PathLike) -> av.container.InputContainer:
    if not os.path.exists(path):
        raise FileNotFoundError(f"video file not found: {path}")
    if os.path.getsize(path) == 0:
        raise VideoDecodeError(path, "the file is empty (0 bytes)")
    try:
        return av.open(str(path), metadata_errors="ignore")
    except av.error.FFmpegError as err:
        raise VideoDecodeError(path, f"not a readable video container ({type(err).__name__}: {err})") from err


class _CorruptPacket(Exception):
    """A packet failed to decode while frames were held: the pass restarts, converting each frame as it comes."""


def _presentation_order(
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    path: str | os.PathLike,
    convert: Callable[[av.VideoFrame], Tensor] | None = None,
) -> Iterator[tuple[int, av.VideoFrame | Tensor]]:
    """Yield (pts in ``stream.time_base`` ticks, frame) in increasing presentation time.

    Packets are decoded one by one, so a corrupt packet costs only its own frames; failures are counted and
    reported once. Frames are reordered through a small heap (decode order is only locally out of order). A stream
    without pts (raw .h264) gets ticks from the frame count and the nominal rate.

    Holding decoded frames is free on a sound stream, but once a packet fails, the decoder's error concealment
    depends on which of its buffers the caller still holds (measured on ../shared/videos/decord_corrupted.mp4:
    frames held while decoding went on came out with a band of undecoded macroblocks; frames converted at once
    are whole). So without ``convert`` a failed packet raises ``_CorruptPacket``; with it, each frame is
    converted to a tensor the moment it comes out and no frame is held.
    """
    heap: list[tuple[int, int, av.VideoFrame | Tensor]] = []
    counter = itertools.count()
    failed = 0
    rate = Fraction(stream.average_rate or stream.guessed_rate or 25)
    step_ticks = max(1, round(1 / (rate * stream.time_base)))  # for streams without pts

    def flush(size: int) -> Iterator[tuple[int, av.VideoFrame]]:
        while len(heap) > size:
            ticks, _, frame = heapq.heappop(heap)
            yield ticks, frame

    decoded = 0
    for packet in container.demux(stream):
        try:
            frames = packet.decode()
        except av.error.FFmpegError:
            if convert is None:
                raise _CorruptPacket from None
            failed += 1
            continue
        for frame in frames:
            ticks = frame.pts if frame.pts is not None else decoded * step_ticks
            decoded += 1
            heapq.heappush(heap, (ticks, next(counter), frame if convert is None else convert(frame)))
        yield from flush(REORDER_WINDOW)
    yield from flush(0)
    if failed:
        warnings.warn(f"{path}: {failed} packet(s) failed to decode and were skipped", RuntimeWarning, stacklevel=3)


def _to_tensor(frame: av.VideoFrame, transform: FrameTransform | None = None) -> Tensor:
    """RGB uint8 [3,H,W], full-range aware, rotated upright by the display matrix, then ``transform``-ed."""
    rgb = frame.reformat(format="rgb24", src_color_range=frame.color_range or None, threads=1).to_ndarray()
    image = torch.from_numpy(rgb).permute(2, 0, 1)
    quarter_turns = round(frame.rotation / 90) % 4  # counter-clockwise, as FFmpeg's av_display_rotation_get
    if quarter_turns:
        image = torch.rot90(image, k=quarter_turns, dims=(1, 2)).contiguous()
    return image if transform is None else transform(image)


class _UntrustedPlan(Exception):
    """The decoder's output contradicts the packets' pts (e.g. MPEG-4 packed B-frames in AVI)."""


class _Picker:
    """The sampling rule, fed pts (integer ticks of ``time_base``) in presentation order: ``accept(pts)`` says
    whether the frame is picked. Integer arithmetic only, so bucket edges are exact.

    ``timestamp``: the first frame of each second (measured from the first frame); ``official``: every int(fps)-th
    frame. ``done`` turns True at the first frame at or after ``end_time`` seconds.
    """

    def __init__(
        self, rate: Fraction | None, fps: float, mode: SamplingMode, end_time: float | None, time_base: Fraction
    ) -> None:
        per_second = Fraction(fps).limit_denominator()
        self.step = max(1, int(rate / per_second)) if rate else 1  # official: int(fps) frames per second
        self.time_base = Fraction(time_base)
        # bucket of an offset o (ticks) = floor(o * time_base * per_second) = (o * num) // den
        self.bucket_num = self.time_base.numerator * per_second.numerator
        self.bucket_den = self.time_base.denominator * per_second.denominator
        limit = Fraction(end_time).limit_denominator() if end_time is not None else None
        # an offset o (ticks) is past the end when o * time_base >= limit, i.e. o * limit[0] >= limit[1] (integers)
        self.limit = (
            None
            if limit is None
            else (self.time_base.numerator * limit.denominator, limit.numerator * self.time_base.denominator)
        )
        self.mode = mode
        self.start: int | None = None
        self.index = 0
        self.last_bucket = -1
        self.done = False

    def seconds(self, pts: int) -> Fraction:
        """Exact seconds of ``pts`` from the first frame."""
        return (pts - self.start) * self.time_base

    def accept(self, pts: int) -> bool:
        if self.start is None:
            self.start = pts
        offset, index = pts - self.start, self.index
        self.index += 1
        if self.limit is not None and offset * self.limit[0] >= self.limit[1]:
            self.done = True
            return False
        if self.mode == "official":
            return index % self.step == 0
        bucket = (offset * self.bucket_num) // self.bucket_den
        if bucket > self.last_bucket:
            self.last_bucket = bucket
            return True
        return False


def _sequential(
    path: str | os.PathLike,
    fps: float,
    select: FrameSelector | int,
    mode: SamplingMode,
    end_time: float | None,
    transform: FrameTransform | None = None,
) -> _Picked:
    """Decode every frame in order (per-packet error capture), convert the picked ones, then keep ``select``'s.

    A file with a corrupt packet is decoded a second time, converting every frame as it comes out (see
    ``_presentation_order``): its frames are then those of one decoder fed every packet that decodes.
    """

    select = _selector(select)

    def convert(frame: av.VideoFrame) -> Tensor:
        return _to_tensor(frame, transform)

    for eager in (False, True):
        container = _open(path)
        try:
            stream = _video_stream(container, path)
            picker = _Picker(stream.average_rate or stream.guessed_rate, fps, mode, end_time, stream.time_base)
            picked: list[tuple[Fraction, Tensor]] = []
            for pts, frame in _presentation_order(container, stream, path, convert if eager else None):
                if picker.accept(pts):
                    picked.append((picker.seconds(pts), frame if isinstance(frame, Tensor) else convert(frame)))
                elif picker.done:
                    break
            late = _late_start(container, stream, picker.start)
            return _Picked([picked[i] for i in select([time for time, _ in picked])], late)
        except _CorruptPacket:
            continue
        except av.error.FFmpegError as err:
            raise VideoDecodeError(path, f"{type(err).__name__}: {err}") from err
        finally:
            container.close()
    raise AssertionError("unreachable: the eager pass never raises _CorruptPacket")


def _video_stream(container: av.container.InputContainer, path: str | os.PathLike) -> av.video.stream.VideoStream:
    if not container.streams.video:
        raise VideoDecodeError(path, "no video stream (audio-only or not a video)")
    stream = container.streams.video[0]
    stream.thread_type = "SLICE"  # never frame threading: it has deadlocked inside DataLoader workers
    for other in container.streams:
        if other.index != stream.index:
            other.discard = av.stream.Discard.all  # do not demux audio for nothing
    return stream


def header_duration(path: str | os.PathLike, end_time: float | None = None) -> float | None:
    """Open a video and its video stream and read its duration from the headers (the stream's, else the
    container's; None when neither has one), decoding nothing: ``check-data --probe header``. Raises as
    ``sample_frames`` does for a missing file or one that is no video."""
    container = _open(path)
    try:
        stream = _video_stream(container, path)
        if stream.duration and stream.time_base:
            duration = float(stream.duration * stream.time_base)
        elif container.duration:
            duration = container.duration / av.time_base
        else:
            return None
    finally:
        container.close()
    return duration if end_time is None else min(duration, end_time)


def _demux_plan(
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    picker: _Picker,
    select: FrameSelector | int,
) -> tuple[list[int], set[int], list[bool], list[av.Packet] | None] | None:
    """Step 1 of the fast path: the pts of every packet (demuxed once), the decode indices of the target frames,
    which packets must be decoded (from the last keyframe before each target, in decode order, that precedes it in
    time), and the packets themselves while they fit in ``PACKET_BUDGET`` (else None: an hour of footage is
    gigabytes of packets, so step 2 demuxes the file again). None when the packets cannot carry a plan (no pts,
    no keyframe first, a target without such a keyframe)."""
    pts: list[int] = []
    keyframes: list[int] = []
    kept: list[av.Packet] | None = []
    held = 0
    for packet in container.demux(stream):
        if packet.size == 0:
            continue
        if packet.pts is None or (not pts and not packet.is_keyframe):
            return None
        if packet.is_keyframe:
            keyframes.append(len(pts))
        pts.append(packet.pts)
        if kept is not None:
            held += packet.size
            kept.append(packet)
            if held > PACKET_BUDGET:
                kept = None
    if not pts:
        return None
    order = sorted(range(len(pts)), key=pts.__getitem__)  # decode index by presentation order
    picked = [i for i in order if picker.accept(pts[i]) and not picker.done]
    targets = {picked[n] for n in _selector(select)([picker.seconds(pts[i]) for i in picked])}
    needed = [False] * len(pts)
    for target in targets:
        starts = [k for k in keyframes if k <= target and pts[k] <= pts[target]]
        if not starts:  # e.g. an open-GOP cut: leading frames that reference a GOP the file does not have
            return None
        needed[starts[-1] : target + 1] = [True] * (target + 1 - starts[-1])
    return pts, targets, needed, kept


def _decode_segments(
    context: av.CodecContext,
    packets: Iterator[av.Packet],
    pts: list[int],
    targets: set[int],
    needed: list[bool],
    transform: FrameTransform | None,
) -> dict[int, Tensor]:
    """Step 2 of the fast path, on the packets of step 1 or of a second demux (the same packets in the same order,
    checked by pts): decode only the needed packets (non-reference frames skipped away from targets), draining and
    resetting the decoder between segments; each target converted as it comes out, by pts; stop after the last
    needed packet. Raises ``_UntrustedPlan`` if frames come out of presentation order (their pts cannot be
    trusted) or the second demux differs from the first."""
    wanted_pts = {pts[i] for i in targets}
    got: dict[int, Tensor] = {}  # converted as they come out: never 64 full-size decoded frames held
    last_out = -math.inf
    last_needed = max((i for i, n in enumerate(needed) if n), default=-1)

    def collect(frames: list[av.VideoFrame]) -> None:
        nonlocal last_out
        for frame in frames:
            if frame.pts is None or frame.pts <= last_out:
                raise _UntrustedPlan
            last_out = frame.pts
            if frame.pts in wanted_pts:
                got[frame.pts] = _to_tensor(frame, transform)

    for i, packet in enumerate(packets):
        if i > last_needed:
            break
        if packet.pts != pts[i]:
            raise _UntrustedPlan
        if not needed[i]:
            if i > 0 and needed[i - 1]:  # end of a segment: drain the decoder, then reset it
                collect(context.decode(None))
                context.flush_buffers()
                last_out = -math.inf
            continue
        skip = "DEFAULT" if i in targets else "NONREF"
        if context.skip_frame != skip:
            context.skip_frame = skip
        collect(context.decode(packet))
    context.skip_frame = "DEFAULT"
    collect(context.decode(None))
    return got


def _planned(
    path: str | os.PathLike,
    fps: float,
    select: FrameSelector | int,
    mode: SamplingMode,
    end_time: float | None,
    transform: FrameTransform | None = None,
) -> _Picked | None:
    """The fast exact path: demux once and pick the target frames from the packets' pts, then decode only the GOP
    segments that lead to a target (non-reference frames away from targets skipped), converting only the targets.
    The packets are kept between the two steps up to ``PACKET_BUDGET``; a longer file is demuxed a second time, so
    memory stays that of the frames kept whatever the file's length.

    Returns None when the plan cannot be trusted (a packet without pts, a stream that does not start on a keyframe,
    a decoder error, a target that did not come out): the caller then decodes everything in order.
    """
    container = _open(path)
    again = None
    try:
        if container.format.name in NO_PTS_FORMATS:
            return None
        stream = _video_stream(container, path)
        picker = _Picker(stream.average_rate or stream.guessed_rate, fps, mode, end_time, stream.time_base)
        plan = _demux_plan(container, stream, picker, select)
        if plan is None:
            return None
        pts, targets, needed, packets = plan
        if packets is None:  # too many to keep: demux a second time instead
            again = _open(path)
            stream = _video_stream(again, path)
            packets = (p for p in again.demux(stream) if p.size != 0)
        got = _decode_segments(stream.codec_context, iter(packets), pts, targets, needed, transform)
        if len(got) != len(targets):
            return None
        return _Picked([(picker.seconds(t), got[t]) for t in sorted(got)], _late_start(container, stream, picker.start))
    except (av.error.FFmpegError, _UntrustedPlan):
        return None  # a corrupt packet or unreliable pts: the sequential path decodes around it and reports it
    finally:
        container.close()
        if again is not None:
            again.close()


def sample_frames(
    path: str | os.PathLike,
    fps: float = 1.0,
    max_frames: int = 12,
    mode: SamplingMode = "timestamp",
    end_time: float | None = None,
    transform: FrameTransform | None = None,
    select: FrameSelector | None = None,
) -> SampledFrames:
    """Sample ``fps`` frames per second (at most ``max_frames``, uniformly subsampled) from a video file.

    ``end_time`` keeps only frames before that many seconds from the first frame (DiDeMo: 32). The fast path
    decodes only what the chosen frames need; when its plan cannot be trusted (no pts, a corrupt packet, a stream
    that starts mid-GOP, any failure of its own) every frame is decoded in order instead. Both give the same frames.
    ``transform`` is applied to each frame as it is taken (e.g. a resize: memory then never holds ``max_frames``
    full-size frames of a 4K video). ``select`` replaces the linspace rule: it gets the seconds of every picked frame
    and returns the indices to keep (``WindowSelector`` keeps up to ``max_frames`` in each window of a long video).

    Raises ``FileNotFoundError`` for a missing file and ``VideoDecodeError`` when nothing decodes (empty, garbage,
    no video stream, audio only).
    """
    if fps <= 0 or max_frames < 1:
        raise ValueError(f"need fps > 0 and max_frames >= 1, got fps={fps}, max_frames={max_frames}")
    if mode not in ("timestamp", "official"):
        raise ValueError(f"unknown sampling mode {mode!r}; expected 'timestamp' or 'official'")
    select = select or max_frames
    try:
        picked = _planned(path, fps, select, mode, end_time, transform)
    except (FileNotFoundError, VideoDecodeError):
        raise  # the file itself is missing or unreadable: decoding it in order cannot help
    except Exception:  # the plan's own failure: the verified path decides
        picked = None
    if picked is None:
        picked = _sequential(path, fps, select, mode, end_time, transform)
    if not picked.frames:
        raise VideoDecodeError(path, "no frame could be decoded")
    frames = torch.stack([frame for _, frame in picked.frames])
    timestamps = torch.tensor([float(time) for time, _ in picked.frames], dtype=torch.float64)
    return SampledFrames(frames, timestamps, picked.late_start)
