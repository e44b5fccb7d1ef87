"""The PyAV sampler on real third-party files (../shared/videos) and on synthetic videos written here."""

from __future__ import annotations

import warnings
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from xclip_lightning.data import video
from xclip_lightning.data.video import VideoDecodeError, WindowSelector, linspace_indices, sample_frames


def write_video(
    path: Path,
    times: list[float],
    size: tuple[int, int] = (64, 48),
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    value: int | None = None,
    rotation: int | None = None,
    full_range: bool = False,
    audio_streams: int = 0,
    options: dict[str, str] | None = None,
) -> Path:
    """Frames at the given presentation times (seconds); frame i is filled with a gradient (or ``value``)."""
    width, height = size
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=30, options=options)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        stream.time_base = Fraction(1, 1000)
        stream.codec_context.time_base = Fraction(1, 1000)
        if full_range:
            stream.codec_context.color_range = av.video.reformatter.ColorRange.JPEG
        if rotation is not None:
            stream.set_display_rotation(rotation)
        audio = [container.add_stream("aac", rate=16000) for _ in range(audio_streams)]
        for i, t in enumerate(times):
            if value is None:
                image = np.zeros((height, width, 3), np.uint8)
                image[: height // 2, : width // 2] = 255  # bright top-left quadrant: orientation is visible
                image[..., 1] = (i * 17) % 256
            else:
                image = np.full((height, width, 3), value, np.uint8)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            if full_range:
                frame = frame.reformat(format=pix_fmt, dst_color_range="JPEG")
                frame.color_range = av.video.reformatter.ColorRange.JPEG
            frame.pts = round(t * 1000)
            frame.time_base = Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
        for a in audio:
            samples = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            samples.sample_rate, samples.pts = 16000, 0
            for packet in [*a.encode(samples), *a.encode()]:
                container.mux(packet)
    return path


def regular(seconds: float, fps: float = 10, start: float = 0.0) -> list[float]:
    return [start + i / fps for i in range(round(seconds * fps))]


@pytest.fixture(scope="module")
def videos(shared_dir) -> Path:
    folder = shared_dir / "videos"
    if not folder.is_dir():
        pytest.skip(f"{folder} not found: the real test videos live in the project's shared folder")
    return folder


# ---- real third-party files -------------------------------------------------------------------------------


def test_normal_msrvtt_clip(videos):
    s = sample_frames(videos / "msrvtt_video9770.mp4")
    assert s.frames.dtype == torch.uint8 and s.frames.shape == (11, 3, 240, 320)
    assert s.timestamps.tolist() == pytest.approx(list(range(11)), abs=0.04)


def test_corrupt_packet_costs_only_its_own_frames(videos):
    path = videos / "decord_corrupted.mp4"
    with pytest.warns(RuntimeWarning, match=r"decord_corrupted\.mp4: 1 packet\(s\) failed"):
        every_frame = sample_frames(path, fps=100, max_frames=100)  # 10 fps file: every frame is picked
    assert every_frame.frames.shape[0] == 49  # stopping at the first error would keep 28
    with pytest.warns(RuntimeWarning):
        assert sample_frames(path).timestamps.shape[0] == 5


def test_out_of_order_decode_comes_out_sorted(videos):
    s = sample_frames(videos / "mmaction2_test.avi", fps=25, max_frames=1000)
    assert s.frames.shape[0] == 164
    assert bool((s.timestamps.diff() > 0).all())  # decode order is 1,2,4,3,...: sorted by pts here
    assert s.timestamps.diff().tolist() == pytest.approx([0.04] * 163)


def test_no_duration_anywhere(videos):
    with av.open(str(videos / "moviepy_no_duration.webm")) as c:
        assert c.duration is None and c.streams.video[0].duration is None
    s = sample_frames(videos / "moviepy_no_duration.webm")
    assert s.timestamps.shape[0] == 5 and s.timestamps[-1] > 4.0


def test_offset_start_and_missing_initial_keyframe(videos):
    s = sample_frames(videos / "mediabunny_no-initial-keyframe.ts", fps=1000, max_frames=100)  # every frame
    assert s.timestamps[0] == 0.0  # measured from the first decodable frame (at 114.85 s), not from 0 or 112.7 s
    assert s.frames.shape[0] == 15
    assert sample_frames(videos / "mediabunny_no-initial-keyframe.ts").frames.shape[0] == 1  # 0.47 s: one frame


def test_display_matrix_rotation_is_applied(videos):
    path = videos / "moviepy_fire2.mp4"
    s = sample_frames(path)
    with av.open(str(path)) as c:
        raw = next(c.decode(video=0))
        assert raw.rotation in (180, -180)
        image = torch.from_numpy(raw.to_ndarray(format="rgb24")).permute(2, 0, 1)
    torch.testing.assert_close(s.frames[0], image.flip(1).flip(2))


def test_two_audio_streams_and_stream_container_duration_mismatch(videos):
    s = sample_frames(videos / "torchcodec_nasa_13013.mp4")
    assert s.timestamps.tolist() == pytest.approx([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12], abs=0.05)  # 13 s, linspace


# ---- synthetic videos with one property each --------------------------------------------------------------


def test_variable_frame_rate_gaps_skip_empty_seconds(tmp_path):
    path = write_video(tmp_path / "vfr.mkv", [0.0, 0.5, 1.0, 3.2, 3.5, 6.0, 6.4])
    assert sample_frames(path).timestamps.tolist() == pytest.approx([0.0, 1.0, 3.2, 6.0])


def test_non_zero_start_time(tmp_path):
    path = write_video(tmp_path / "offset.mkv", regular(4, start=5.0))
    with av.open(str(path)) as c:
        assert c.streams.video[0].start_time * c.streams.video[0].time_base == pytest.approx(5.0)
    assert sample_frames(path).timestamps.tolist() == pytest.approx([0, 1, 2, 3])


def test_shorter_than_one_second_gives_one_frame(tmp_path):
    s = sample_frames(write_video(tmp_path / "short.mp4", regular(0.4)))
    assert s.frames.shape == (1, 3, 48, 64) and s.timestamps.tolist() == [0.0]


def test_more_seconds_than_max_frames_uses_official_linspace(tmp_path):
    s = sample_frames(write_video(tmp_path / "long.mp4", regular(30, fps=5)), max_frames=12)
    expected = [float(i) for i in np.linspace(0, 29, 12, dtype=int)]
    assert s.timestamps.tolist() == pytest.approx(expected)
    assert linspace_indices(5, 12) == [0, 1, 2, 3, 4]


def test_official_mode_uses_int_fps_frame_indices(tmp_path):
    times = [i * 1001 / 30000 for i in range(150)]  # 29.97 fps for 5 s
    path = write_video(tmp_path / "ntsc.mp4", times)
    s = sample_frames(path, mode="official")
    # official: int(29.97) = 29, frame index 29 k, so the picked frames drift ahead of whole seconds
    assert s.timestamps.tolist() == pytest.approx([k * 29 * 1001 / 30000 for k in range(6)], abs=2e-3)
    assert sample_frames(path).timestamps.tolist() == pytest.approx([times[30 * k] for k in range(5)], abs=2e-3)


@pytest.mark.parametrize("rotation", [90, -90, 180])
def test_synthetic_rotation_comes_out_upright(tmp_path, rotation):
    plain = sample_frames(write_video(tmp_path / "plain.mp4", regular(1)))
    rotated = sample_frames(write_video(tmp_path / f"rot{rotation}.mp4", regular(1), rotation=rotation))
    expected = torch.rot90(plain.frames[0], k=rotation // 90, dims=(1, 2))
    assert rotated.frames[0].shape == expected.shape
    assert (rotated.frames[0].float() - expected.float()).abs().mean() < 2


def test_ten_bit_video(tmp_path):
    path = write_video(tmp_path / "tenbit.mkv", regular(2), pix_fmt="yuv420p10le", value=100)
    with av.open(str(path)) as c:
        assert c.streams.video[0].codec_context.pix_fmt == "yuv420p10le"
    s = sample_frames(path)
    assert s.frames.dtype == torch.uint8 and abs(s.frames.float().mean().item() - 100) < 3


def test_full_range_video_keeps_its_levels(tmp_path):
    path = write_video(tmp_path / "full.mp4", regular(2), value=30, full_range=True)
    with av.open(str(path)) as c:
        assert next(c.decode(video=0)).color_range == av.video.reformatter.ColorRange.JPEG
    # read as limited range, dark gray 30 would come out near 16
    assert abs(sample_frames(path).frames.float().mean().item() - 30) < 3


def test_several_audio_streams(tmp_path):
    path = write_video(tmp_path / "audio.mkv", regular(3), audio_streams=2)
    with av.open(str(path)) as c:
        assert len(c.streams.audio) == 2
    assert sample_frames(path).timestamps.tolist() == pytest.approx([0, 1, 2])


# ---- bad input --------------------------------------------------------------------------------------------


def test_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.mp4"):
        sample_frames(tmp_path / "nope.mp4")


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("empty.mp4", b"", "empty"),
        ("garbage.mp4", bytes(range(256)) * 40, "not a readable video"),
        ("notes.mp4", b"this is a text file, not a video\n" * 20, "not a readable video"),
    ],
)
def test_unreadable_files_raise_video_decode_error(tmp_path, name, content, reason):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(VideoDecodeError, match=reason) as info:
        sample_frames(path)
    assert info.value.path == str(path)


def test_audio_only_file(tmp_path):
    path = tmp_path / "audio.mka"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        samples = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        samples.sample_rate, samples.pts = 16000, 0
        for packet in [*stream.encode(samples), *stream.encode()]:
            container.mux(packet)
    with pytest.raises(VideoDecodeError, match="no video stream"):
        sample_frames(path)


def test_truncated_file_decodes_what_it_can(tmp_path):
    path = write_video(tmp_path / "whole.mkv", regular(4))
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        s = sample_frames(cut)
    assert 1 <= s.frames.shape[0] < 4


# ---- the planned (fast) path against decoding every frame ----------------------------------------------------


def assert_same(planned, sequential):
    assert planned is not None, "the fast path fell back"
    assert planned.late_start == sequential.late_start
    assert [t for t, _ in planned.frames] == [t for t, _ in sequential.frames]
    for (_, a), (_, b) in zip(planned.frames, sequential.frames, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    "name", ["msrvtt_video9770.mp4", "torchcodec_nasa_13013.mp4", "moviepy_fire2.mp4", "moviepy_no_duration.webm"]
)
@pytest.mark.parametrize(
    ("fps", "max_frames", "mode"), [(1.0, 12, "timestamp"), (5.0, 100, "official"), (1.0, 4, "official")]
)
def test_planned_path_is_exact_on_real_files(videos, name, fps, max_frames, mode):
    args = (videos / name, fps, max_frames, mode, None)
    assert_same(video._planned(*args), video._sequential(*args))


@pytest.mark.parametrize(
    "name", ["msrvtt_video9770.mp4", "torchcodec_nasa_13013.mp4", "moviepy_fire2.mp4", "moviepy_no_duration.webm"]
)
def test_a_file_too_long_to_keep_its_packets_is_demuxed_twice_with_the_same_frames(videos, name, monkeypatch):
    """Hours of footage are gigabytes of packets: past PACKET_BUDGET the fast path keeps only their pts and demuxes
    the file a second time (bench/decode_memory.py: +634 MB -> +91 MB for a 563 MB file)."""
    kept = video._planned(videos / name, 1.0, 12, "timestamp", None)
    monkeypatch.setattr(video, "PACKET_BUDGET", 0)
    twice = video._planned(videos / name, 1.0, 12, "timestamp", None)
    assert_same(twice, video._sequential(videos / name, 1.0, 12, "timestamp", None))
    assert_same(twice, kept)
    windows = WindowSelector(2.0, 2.0, 3)
    assert_same(video._planned(videos / name, 2.0, windows, "timestamp", None), video._sequential(
        videos / name, 2.0, WindowSelector(2.0, 2.0, 3), "timestamp", None))  # fmt: skip


@pytest.mark.parametrize("name", ["msrvtt_video9770.mp4", "torchcodec_nasa_13013.mp4", "moviepy_no_duration.webm"])
def test_windows_of_moments_are_exact_on_both_paths(videos, name):
    """Moments (``index --window``): both paths keep the same frames, and every window's frames lie inside it."""
    planned_windows, sequential_windows = WindowSelector(3.0, 2.0, 4), WindowSelector(3.0, 2.0, 4)
    planned = video._planned(videos / name, 2.0, planned_windows, "timestamp", None)
    sequential = video._sequential(videos / name, 2.0, sequential_windows, "timestamp", None)
    assert_same(planned, sequential)
    assert planned_windows.windows == sequential_windows.windows and len(planned_windows.windows) > 1
    first = 0
    for window in planned_windows.windows:
        times = [float(t) for t, _ in planned.frames[first : first + window.count]]
        assert 1 <= window.count <= 4 and all(window.start <= t < window.end for t in times)
        first += window.count
    assert first == len(planned.frames)


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("decord_corrupted.mp4", "a corrupt packet"),
        ("mediabunny_no-initial-keyframe.ts", "the stream starts mid-GOP"),
        ("mmaction2_test.avi", "AVI packets carry no pts"),
    ],
)
def test_untrustworthy_plans_fall_back_to_decoding_everything(videos, name, why):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        assert video._planned(videos / name, 1.0, 12, "timestamp", None) is None, why


@pytest.mark.parametrize("gop", ["12", "250"])
def test_planned_path_is_exact_with_b_frames_and_long_gops(tmp_path, gop):
    options = {"g": gop, "bf": "3", "sc_threshold": "0", "threads": "1"}
    path = write_video(tmp_path / f"gop{gop}.mp4", regular(40, fps=30), options=options)
    for mode, budget in (("timestamp", video.PACKET_BUDGET), ("official", video.PACKET_BUDGET), ("timestamp", 0)):
        args = (path, 1.0, 12, mode, None)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(video, "PACKET_BUDGET", budget)  # 0: demuxed twice
            assert_same(video._planned(*args), video._sequential(*args))
    assert_same(video._planned(path, 3.0, 200, "timestamp", 7.5), video._sequential(path, 3.0, 200, "timestamp", 7.5))


def test_end_time_keeps_only_the_first_seconds(tmp_path):
    path = write_video(tmp_path / "ten.mp4", regular(10))
    assert sample_frames(path, end_time=4).timestamps.tolist() == pytest.approx([0, 1, 2, 3])
    assert sample_frames(path, max_frames=3, end_time=32).timestamps.tolist() == pytest.approx([0, 4, 9])


# ---- faults: a corrupt packet, an open-GOP cut, huge frames ----------------------------------------------------


def decode_every_packet(path: Path) -> dict[int, torch.Tensor]:
    """The reference: one decoder fed every packet, skipping those that fail, each frame converted at once."""
    frames = {}
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        for packet in container.demux(stream):
            try:
                decoded = packet.decode()
            except av.error.FFmpegError:
                continue
            for frame in decoded:
                frames[frame.pts] = torch.from_numpy(frame.to_ndarray(format="rgb24")).permute(2, 0, 1)
    return frames


def test_after_a_corrupt_packet_every_frame_is_what_one_decoder_gives(videos):
    """Frames held while decoding goes on came out with a band of undecoded macroblocks (3.1 s and 4.0 s: mean abs
    difference 15-16); the sampler's frames must equal the reference, pixel for pixel."""
    path = videos / "decord_corrupted.mp4"
    reference = decode_every_packet(path)
    start = min(reference)
    with pytest.warns(RuntimeWarning, match="1 packet"):
        sampled = sample_frames(path, fps=100, max_frames=100)
    assert len(sampled.timestamps) == len(reference) == 49
    for t, frame in zip(sampled.timestamps.tolist(), sampled.frames, strict=True):
        assert torch.equal(frame, reference[start + round(t * 10240)]), t  # time base 1/10240
    with pytest.warns(RuntimeWarning):
        default = sample_frames(path)  # 1 fps, the frames at 3.1 s and 4.0 s among them
    assert torch.equal(default.frames[3], reference[start + round(3.1 * 10240)])


def stream_copied_cut(source: Path, target: Path, from_keyframe: int) -> Path:
    """What ``ffmpeg -ss ... -c copy`` gives: the packets from a keyframe on, copied without re-encoding."""
    with av.open(str(source)) as inp, av.open(str(target), "w") as out:
        in_stream = inp.streams.video[0]
        out_stream = out.add_stream_from_template(in_stream)
        keyframes = 0
        for packet in inp.demux(in_stream):
            if packet.size == 0:
                continue
            keyframes += packet.is_keyframe
            if keyframes > from_keyframe:
                packet.stream = out_stream
                out.mux(packet)
    return target


@pytest.mark.parametrize("container", ["mp4", "mkv"])
def test_a_stream_copied_open_gop_cut_falls_back_and_decodes(tmp_path, container):
    options = {"x264-params": "open-gop=1:keyint=15:min-keyint=15:scenecut=0:bframes=3:b-adapt=0", "threads": "1"}
    source = write_video(tmp_path / "open_gop.mp4", regular(6, fps=30), options=options)
    cut = stream_copied_cut(source, tmp_path / f"cut.{container}", from_keyframe=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        sampled = sample_frames(cut, fps=30, max_frames=1000)
        expected = video._sequential(cut, 30, 1000, "timestamp", None).frames
    assert len(sampled.timestamps) == len(expected) > 50
    assert all(torch.equal(a, b) for a, (_, b) in zip(sampled.frames, expected, strict=True))


def test_a_frame_transform_is_applied_frame_by_frame_with_the_same_pixels(videos):
    from xclip_lightning.inputs.transforms import resize_crop

    path = videos / "torchcodec_nasa_13013.mp4"
    whole = sample_frames(path, max_frames=6)
    per_frame = sample_frames(path, max_frames=6, transform=resize_crop(32))
    assert per_frame.frames.shape == (6, 3, 32, 32)
    assert torch.equal(per_frame.frames, resize_crop(32)(whole.frames))


def _mid_gop_segment(folder: Path, frames: int = 105, gop: int = 100, size: tuple[int, int] = (320, 240)) -> Path:
    """A stream-copied MPEG-TS segment cut one packet after a keyframe, as a segmenter or ``ffmpeg -c copy -ss``
    cuts it: its parameter sets (SPS/PPS) come only with the next keyframe, 99 packets (~23 MB of lossless noise,
    beyond ffmpeg's 5 MB probe) later, so the decoder opens without them and rejects every packet before it."""
    width, height = size
    whole, cut = folder / "whole.ts", folder / "segment.ts"
    rng = np.random.default_rng(0)
    with av.open(str(whole), "w", format="mpegts") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = gop
        stream.codec_context.options = {"bf": "0", "sc_threshold": "0", "keyint_min": str(gop), "qp": "0"}
        for _ in range(frames):
            image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        out.mux(stream.encode())
    with av.open(str(whole)) as source, av.open(str(cut), "w", format="mpegts") as out:
        copied = out.add_stream_from_template(source.streams.video[0])
        copied.codec_context.extradata = None  # a segment carries no global header
        for n, packet in enumerate(source.demux(source.streams.video[0])):
            if packet.size and n >= 1:
                packet.stream = copied
                out.mux(packet)
    return cut


def test_segment_cut_mid_gop_gives_every_frame_after_the_parameter_sets(tmp_path):
    cut = _mid_gop_segment(tmp_path)
    with av.open(str(cut)) as c:  # the situation: no extradata, and decoding the first packet raises
        stream = c.streams.video[0]
        assert not stream.codec_context.extradata
        with pytest.raises(av.error.InvalidDataError):
            next(c.demux(stream)).decode()
    with pytest.warns(RuntimeWarning, match="99 packet"):
        s = sample_frames(cut, fps=1000, max_frames=100)  # every frame
    # what ffmpeg gives: the frames from the keyframe on, which are the frames 100..104 of the uncut encode
    with av.open(str(tmp_path / "whole.ts")) as c:
        expected = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)][100:]
    assert s.frames.shape[0] == len(expected) == 5
    for got, want in zip(s.frames, expected, strict=True):
        assert torch.equal(got, torch.from_numpy(want).permute(2, 0, 1))
    assert s.timestamps.tolist() == pytest.approx([0.0, 0.04, 0.08, 0.12, 0.16])
    assert s.late_start == pytest.approx(99 / 25)  # 3.96 s after the presentation start (the first packet's pts)
    with pytest.warns(RuntimeWarning, match="failed to decode"):
        assert sample_frames(cut).frames.shape[0] == 1  # 1 fps over 0.2 s: one frame, not an error


def test_header_duration_reads_headers_only(videos, tmp_path):
    assert video.header_duration(videos / "moviepy_no_duration.webm") is None  # no duration anywhere
    assert video.header_duration(videos / "torchcodec_nasa_13013.mp4") == pytest.approx(13.0, abs=0.01)  # stream's
    assert video.header_duration(videos / "torchcodec_nasa_13013.mp4", end_time=5.0) == 5.0
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(VideoDecodeError, match="empty"):
        video.header_duration(tmp_path / "empty.mp4")
