"""engine.video on a corpus of broken inputs: each gives its typed error (never a crash, never a hang)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from engine.errors import (
    BadVideoError,
    EmptyVideoError,
    TruncatedVideoError,
    VideoNotFoundError,
    VideoTooLargeError,
)
from engine.synthetic import make_clip
from engine.video import VideoInfo, check_video_limits, probe, read_frames, uniform_indices

pytestmark = pytest.mark.timeout(60)

SMALL = {"num_frames": 24, "width": 64, "height": 48}


@pytest.fixture(scope="module")
def good_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_clip(tmp_path_factory.mktemp("bad") / "good.mp4", seed=1, **SMALL).path


def _faststart_copy(source: Path, target: Path) -> None:
    """Remux with the index (moov) first, as web servers publish mp4s, so a cut keeps the index."""
    import av

    with (
        av.open(str(source)) as reader,
        av.open(str(target), "w", format="mp4", options={"movflags": "faststart"}) as writer,
    ):
        stream = reader.streams.video[0]
        out = writer.add_stream_from_template(stream)
        for packet in reader.demux(stream):
            if packet.dts is None:
                continue
            packet.stream = out
            writer.mux(packet)


def _both_calls_raise(path: Path, error: type[Exception]) -> None:
    with pytest.raises(error):
        probe(path)
    with pytest.raises(error):
        read_frames(path, [0])


def test_zero_byte_file(tmp_path: Path) -> None:
    (tmp_path / "zero.mp4").write_bytes(b"")
    _both_calls_raise(tmp_path / "zero.mp4", EmptyVideoError)


def test_text_file_named_mp4(tmp_path: Path) -> None:
    (tmp_path / "text.mp4").write_text("this is not a video\n" * 20)
    _both_calls_raise(tmp_path / "text.mp4", BadVideoError)
    with pytest.raises(BadVideoError) as raised:
        probe(tmp_path / "text.mp4")
    assert type(raised.value) is BadVideoError  # not mistaken for a truncated or empty video


def test_mp4_cut_in_half_loses_its_index(tmp_path: Path, good_clip: Path) -> None:
    data = good_clip.read_bytes()
    (tmp_path / "half.mp4").write_bytes(data[: len(data) // 2])
    _both_calls_raise(tmp_path / "half.mp4", TruncatedVideoError)


def test_faststart_mp4_cut_keeps_the_frames_before_the_cut(tmp_path: Path, good_clip: Path) -> None:
    _faststart_copy(good_clip, tmp_path / "faststart.mp4")
    data = (tmp_path / "faststart.mp4").read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) * 2 // 3])
    info = probe(tmp_path / "cut.mp4")
    assert info.num_frames == SMALL["num_frames"]  # the header still announces every frame
    first = read_frames(tmp_path / "cut.mp4", [0, 1])
    assert np.array_equal(first, read_frames(good_clip, [0, 1]))
    for backend in ("auto", "sequential"):
        with pytest.raises(TruncatedVideoError):
            read_frames(tmp_path / "cut.mp4", uniform_indices(info.num_frames), backend=backend)


def test_one_frame_video(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "one.mp4", seed=2, num_frames=1, width=64, height=48)
    info = probe(clip.path)
    assert info.num_frames == 1
    frames = read_frames(clip.path, uniform_indices(info.num_frames))
    assert frames.shape == (16, 48, 64, 3)
    assert all(np.array_equal(frame, frames[0]) for frame in frames)


def test_missing_file(tmp_path: Path) -> None:
    _both_calls_raise(tmp_path / "missing.mp4", VideoNotFoundError)


def test_path_through_a_regular_file(tmp_path: Path) -> None:
    (tmp_path / "file.txt").write_text("x")
    _both_calls_raise(tmp_path / "file.txt" / "x.mp4", VideoNotFoundError)


def test_unreadable_directory(tmp_path: Path, good_clip: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "clip.mp4").write_bytes(good_clip.read_bytes())
    locked.chmod(0)
    try:
        if os.access(locked / "clip.mp4", os.R_OK):
            pytest.skip("running as root: permissions do not stop reading")
        _both_calls_raise(locked / "clip.mp4", VideoNotFoundError)
    finally:
        locked.chmod(0o755)


def test_absurd_dimensions_are_refused_before_decoding(tmp_path: Path) -> None:
    from PIL import Image

    folder = tmp_path / "wide"
    folder.mkdir()
    Image.new("RGB", (8200, 2)).save(folder / "00000.png")
    _both_calls_raise(folder, VideoTooLargeError)
    huge = VideoInfo(
        fps=30, width=640, height=360, num_frames=2_000_000, duration_s=1e5, backend="pyav", is_frame_folder=False
    )
    with pytest.raises(VideoTooLargeError):
        check_video_limits(huge)
    check_video_limits(
        VideoInfo(fps=30, width=8192, height=8192, num_frames=10, duration_s=1, backend="pyav", is_frame_folder=False)
    )


def test_every_bad_input_error_is_a_bad_video_error_with_a_reason(tmp_path: Path) -> None:
    (tmp_path / "zero.mp4").write_bytes(b"")
    (tmp_path / "junk.mp4").write_bytes(os.urandom(4096))
    for path in (tmp_path / "zero.mp4", tmp_path / "junk.mp4", tmp_path / "nope.mp4"):
        with pytest.raises(BadVideoError) as raised:
            read_frames(path, [0])
        assert raised.value.reason.value in {"bad_video", "empty_video", "video_not_found", "truncated_video"}


def test_corrupted_bytes_give_frames_or_a_typed_error(tmp_path: Path, good_clip: Path) -> None:
    _faststart_copy(good_clip, tmp_path / "faststart.mp4")
    rng = np.random.default_rng(2)
    for source in (good_clip, tmp_path / "faststart.mp4"):
        data = source.read_bytes()
        for trial in range(40):
            damaged = bytearray(data)
            start, length = int(rng.integers(0, len(data) - 16)), int(rng.integers(1, 16))
            damaged[start : start + length] = rng.integers(0, 256, length, dtype=np.uint8).tobytes()
            path = tmp_path / f"damaged-{source.stem}-{trial}.mp4"
            path.write_bytes(bytes(damaged))
            for backend in ("auto", "sequential"):
                try:
                    frames = read_frames(path, uniform_indices(SMALL["num_frames"]), backend=backend)
                except BadVideoError:
                    continue  # a typed error is a fine answer; anything else fails the test
                assert frames.shape == (16, SMALL["height"], SMALL["width"], 3)
