"""Which frames agents show: uniform picks inside a clip's time span, and JPEG parts downscaled for models."""

from __future__ import annotations

import io
from dataclasses import replace

import numpy as np
from PIL import Image

from agents.frames import clip_frame_range, jpeg_part, sample_clip_frames


def test_frames_stay_inside_the_clip_span(clips) -> None:
    clip = clips[0]  # 12 frames at 12 fps
    assert clip_frame_range(clip) == (0, 11)
    span = replace(clip, start_s=0.25, end_s=0.75)
    first, last = clip_frame_range(span)
    assert (first, last) == (3, 8)
    picks = sample_clip_frames(span, 4)
    assert len(picks) == 4 and all(first <= i <= last for i in picks) and picks == sorted(picks)


def test_span_comes_from_a_probe_when_the_clip_has_no_metadata(clips) -> None:
    bare = replace(clips[0], fps=0.0, num_frames=0)
    assert clip_frame_range(bare) == clip_frame_range(clips[0])


def test_jpeg_part_downscales_the_longer_side() -> None:
    frame = np.zeros((300, 600, 3), dtype=np.uint8)
    frame[:, :300] = (255, 0, 0)
    image = Image.open(io.BytesIO(jpeg_part(frame, max_side=200).jpeg))
    assert image.size == (200, 100) and image.format == "JPEG"
    assert Image.open(io.BytesIO(jpeg_part(frame[:50, :80]).jpeg)).size == (80, 50)
