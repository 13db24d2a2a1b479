"""Videos on S3: probed and read frame-exactly by range requests through a bounded read-ahead buffer.

The same frames come out of `s3://.../clip.mp4` as out of the local file; every range the reader fetches is at
most one read-ahead block (plus the demuxer's own read), so a video is never read whole into memory.
"""

from __future__ import annotations

from pathlib import Path

import fsspec
import numpy as np
import pytest

from engine import remote, video
from engine.errors import EmptyVideoError, NotARegularFileError, VideoNotFoundError
from engine.synthetic import make_clip

BLOCK = 16 * 1024


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_clip(tmp_path_factory.mktemp("clip") / "clip.mp4", seed=3, num_frames=48, width=320, height=240).path


def test_a_video_on_s3_reads_the_same_frames_by_bounded_range_requests(clip: Path, s3_url: str, monkeypatch) -> None:
    url = f"{s3_url}/videos/clip.mp4"
    fsspec.filesystem("s3").put_file(str(clip), url)
    ranges: list[int] = []
    opened = remote.open_remote

    def spying_open(target: str, *, block_size: int = BLOCK) -> object:
        handle = opened(target, block_size=BLOCK)
        fetch = handle.cache.fetcher

        def counted(start: int, end: int) -> bytes:
            ranges.append(end - start)
            return fetch(start, end)

        handle.cache.fetcher = counted
        return handle

    monkeypatch.setattr(video, "open_remote", spying_open)
    info = video.probe(url, max_bytes=10**9)
    assert info == video.probe(clip)
    wanted = [0, 7, 23, 47]
    assert np.array_equal(video.read_frames(url, wanted), video.read_frames(clip, wanted))
    size = clip.stat().st_size
    assert size > 4 * BLOCK and len(ranges) > 4
    assert max(ranges) <= BLOCK + 64 * 1024 < size  # one block plus the demuxer's read, never the whole file
    assert video.video_bytes(url) == size


def test_missing_empty_and_folder_urls_are_typed_errors(s3_url: str) -> None:
    fs = fsspec.filesystem("s3")
    fs.pipe_file(f"{s3_url}/empty.mp4", b"")
    fs.pipe_file(f"{s3_url}/frames/00000.jpg", b"x")
    with pytest.raises(VideoNotFoundError):
        video.probe(f"{s3_url}/none.mp4")
    with pytest.raises(EmptyVideoError):
        video.probe(f"{s3_url}/empty.mp4")
    with pytest.raises(NotARegularFileError):
        video.read_frames(f"{s3_url}/frames", [0])
