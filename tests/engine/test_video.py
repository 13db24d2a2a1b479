"""engine.video: index policies, probing and frame-exact reading of synthetic clips, real clips and frame folders."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from engine.errors import BadVideoError, EmptyVideoError
from engine.synthetic import make_clip, render_scene
from engine.video import (
    VideoInfo,
    n_uniform_frames,
    probe,
    read_frames,
    resize_frames,
    span_to_frames,
    uniform_indices,
)

# (fps, width, height, frames, codec, seconds): values of ../shared/media/README.md. demo2.mp4's duration
# is 17.4 s here (all coded frames / fps) where the README, counting its edit list, says 16.8 s.
REAL_CLIPS = {
    "dog.mp4": (29.97, 1280, 720, 150, "h264", 5.0),
    "demo2.mp4": (29.97, 640, 360, 522, "h264", 17.4),
    "demo4.mp4": (12.0, 1280, 720, 224, "mpeg4", 18.7),
}


def _reference_frames(path: Path, indices: list[int]) -> dict[int, np.ndarray]:
    """Plain sequential PyAV decode (edit lists ignored, as engine.video documents) keeping `indices`."""
    import av

    wanted, found = set(indices), {}
    with av.open(str(path), options={"ignore_editlist": "1"}) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index in wanted:
                found[index] = frame.to_ndarray(format="rgb24")
            if index >= max(wanted):
                break
    return found


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_clip(tmp_path_factory.mktemp("video") / "clip.mp4", seed=11, num_frames=40, width=96, height=64).path


# ------------------------------------------------------------------------------------------ index policies


def test_uniform_indices_follow_the_release_rule() -> None:
    # s = 149/16; index i = round(s * (i + 0.5) + 1e-6) (tests/engine/test_release_sampling.py checks 1..3000)
    assert uniform_indices(150) == [5, 14, 23, 33, 42, 51, 61, 70, 79, 88, 98, 107, 116, 126, 135, 144]
    assert uniform_indices(33, 4) == [4, 12, 20, 28]  # s = 8: middles 4, 12, 20, 28


def test_uniform_indices_repeat_when_the_video_is_short() -> None:
    assert uniform_indices(1) == [0] * 16
    short = uniform_indices(10)
    assert len(short) == 16 and short == sorted(short) and set(short) <= set(range(10))
    with pytest.raises(EmptyVideoError):
        uniform_indices(0)
    with pytest.raises(ValueError):
        uniform_indices(10, 0)


def test_n_uniform_frames_are_unique_and_include_both_ends() -> None:
    assert n_uniform_frames(100, 5) == [0, 25, 50, 74, 99]
    for total in (2, 7, 32, 33, 100, 1001):
        for n in (2, 3, 16, 32):
            frames = n_uniform_frames(total, n)
            assert frames[0] == 0 and frames[-1] == total - 1
            assert frames == sorted(set(frames)) and len(frames) == min(n, total)
    assert n_uniform_frames(5, 1) == [0]
    with pytest.raises(EmptyVideoError):
        n_uniform_frames(0, 4)


def test_span_to_frames() -> None:
    info = VideoInfo(fps=12.0, width=8, height=8, num_frames=24, duration_s=2.0, backend="pyav", is_frame_folder=False)
    assert span_to_frames(info, None, None) == (0, 23)
    assert span_to_frames(info, 0.0, 1.0) == (0, 11)
    assert span_to_frames(info, 1.0, None) == (12, 23)
    assert span_to_frames(info, 0.5, 100.0) == (6, 23)
    with pytest.raises(ValueError):
        span_to_frames(info, 5.0, 6.0)


# ------------------------------------------------------------------------------------------ synthetic clips


def test_probe_synthetic_clip(clip: Path) -> None:
    info = probe(clip)
    assert (info.width, info.height, info.num_frames, info.fps) == (96, 64, 40, 12.0)
    assert info.duration_s == pytest.approx(40 / 12.0)
    assert info.codec == "h264" and not info.is_frame_folder


@pytest.mark.parametrize("backend", ["auto", "sequential", "seek", "decord"])
def test_read_frames_is_frame_exact_in_any_order(clip: Path, backend: str) -> None:
    indices = [39, 0, 17, 17, 5, 38, 20]
    frames = read_frames(clip, indices, backend=backend)
    reference = _reference_frames(clip, indices)
    assert frames.shape == (len(indices), 64, 96, 3) and frames.dtype == np.uint8
    for row, index in enumerate(indices):
        assert np.array_equal(frames[row], reference[index]), index


def test_read_frames_rejects_out_of_range_indices(clip: Path) -> None:
    with pytest.raises(ValueError):
        read_frames(clip, [0, 40])
    with pytest.raises(ValueError):
        read_frames(clip, [-1])
    assert read_frames(clip, []).shape == (0, 64, 96, 3)


# ------------------------------------------------------------------------------------------ real clips


@pytest.mark.parametrize("name", sorted(REAL_CLIPS))
def test_probe_real_clips(media_dir: Path, name: str) -> None:
    fps, width, height, frames, codec, seconds = REAL_CLIPS[name]
    info = probe(media_dir / name)
    assert info.fps == pytest.approx(fps, abs=0.01)
    assert (info.width, info.height, info.num_frames, info.codec) == (width, height, frames, codec)
    assert info.duration_s == pytest.approx(seconds, abs=0.1)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", sorted(REAL_CLIPS))
def test_real_clips_are_frame_exact(media_dir: Path, name: str) -> None:
    num_frames = REAL_CLIPS[name][3]
    indices = uniform_indices(num_frames)[::5] + random.Random(name).sample(range(num_frames), 3)
    reference = _reference_frames(media_dir / name, indices)
    for backend in ("auto", "sequential"):
        frames = read_frames(media_dir / name, indices, backend=backend)
        for row, index in enumerate(indices):
            assert np.array_equal(frames[row], reference[index]), (backend, index)


# ------------------------------------------------------------------------------------------ frame folders


def _write_folder(folder: Path, frames: np.ndarray) -> None:
    from PIL import Image

    folder.mkdir()
    for index, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"{index:05d}.png")


def test_frame_folder_probe_and_read(tmp_path: Path) -> None:
    frames, _, _ = render_scene(seed=2, num_frames=6, width=64, height=48)
    _write_folder(tmp_path / "frames", frames)
    (tmp_path / "frames" / "notes.txt").write_text("not a frame")
    info = probe(tmp_path / "frames")
    assert info.is_frame_folder and info.backend == "frames"
    assert (info.num_frames, info.width, info.height, info.fps) == (6, 64, 48, 30.0)
    assert probe(tmp_path / "frames", fps=10).duration_s == pytest.approx(0.6)
    read = read_frames(tmp_path / "frames", [5, 0, 3, 3])
    assert np.array_equal(read, frames[[5, 0, 3, 3]])  # PNG is lossless


def test_frame_folder_problems(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(EmptyVideoError):
        probe(tmp_path / "empty")
    frames, _, _ = render_scene(seed=2, num_frames=2, width=64, height=48)
    _write_folder(tmp_path / "mixed", frames)
    from PIL import Image

    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(tmp_path / "mixed" / "00002.png")
    with pytest.raises(BadVideoError):
        read_frames(tmp_path / "mixed", [0, 2])


# ------------------------------------------------------------------------------------------ resizing


def test_resize_frames_square_and_letterbox() -> None:
    frames = np.full((2, 40, 80, 3), 200, dtype=np.uint8)
    assert resize_frames(frames, 32).shape == (2, 32, 32, 3)
    assert resize_frames(frames[0], (20, 10)).shape == (20, 10, 3)
    boxed = resize_frames(frames, 32, keep_aspect=True)
    assert boxed.shape == (2, 32, 32, 3)
    assert np.all(boxed[:, 8:24] == 200) and np.all(boxed[:, :8] == 0) and np.all(boxed[:, 24:] == 0)
    with pytest.raises(ValueError):
        resize_frames(frames, 0)


def _write_variable_rate_clip(path: Path, frames: np.ndarray) -> None:
    """H.264 mp4 whose frame gaps alternate between 40 ms and 150 ms (timestamps in milliseconds)."""
    from fractions import Fraction

    import av

    timestamps = np.cumsum([0] + [40 if i % 3 else 150 for i in range(len(frames) - 1)])
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=25, options={"g": "8"})
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.time_base = stream.codec_context.time_base = Fraction(1, 1000)
        for frame, pts in zip(frames, timestamps, strict=True):
            video_frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
            video_frame.pts, video_frame.time_base = int(pts), Fraction(1, 1000)
            for packet in stream.encode(video_frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_variable_frame_rate_is_indexed_by_decode_order(tmp_path: Path) -> None:
    frames, _, _ = render_scene(seed=3, num_frames=30, width=64, height=48)
    _write_variable_rate_clip(tmp_path / "vfr.mp4", frames)
    assert probe(tmp_path / "vfr.mp4").num_frames == 30
    indices = [29, 0, 13, 14, 2, 20]
    reference = _reference_frames(tmp_path / "vfr.mp4", indices)
    for backend in ("auto", "sequential"):
        read = read_frames(tmp_path / "vfr.mp4", indices, backend=backend)
        for row, index in enumerate(indices):
            assert np.array_equal(read[row], reference[index])
            # and it is the rendered frame of that index, up to compression (not a neighbour in time)
            errors = [np.abs(read[row].astype(int) - rendered).mean() for rendered in frames]
            assert int(np.argmin(errors)) == index


def test_mpeg4_with_b_frames_is_frame_exact(tmp_path: Path) -> None:
    import av

    frames, _, _ = render_scene(seed=3, num_frames=40, width=96, height=64)
    path = tmp_path / "mpeg4.mp4"
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=12)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        stream.codec_context.max_b_frames, stream.codec_context.gop_size = 2, 10
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    assert probe(path).codec == "mpeg4"
    for indices in (list(range(40)), [39, 3, 17, 18, 25], [12]):
        reference = _reference_frames(path, indices)
        read = read_frames(path, indices)
        assert all(np.array_equal(read[row], reference[index]) for row, index in enumerate(indices))
