"""Frame sampling and time spans against references transcribed from the release (DAMO-NLP-SG/VideoRefer)."""

from __future__ import annotations

import random

import numpy as np
import pytest

from engine.video import span_frame_range, uniform_indices


# ---- REFERENCE, transcribed from the release: videorefer/mm_utils.py `frame_sample` (mode='uniform', v1) ----
def release_frame_sample(duration: int, num_frames: int) -> np.ndarray:
    seg_size = float(duration - 1) / num_frames
    frame_ids = []
    for i in range(num_frames):
        start = seg_size * i
        end = seg_size * (i + 1)
        frame_ids.append((start + end) / 2)
    return np.round(np.array(frame_ids) + 1e-6).astype(int)


# ---- REFERENCE, transcribed from the release: videorefer/mm_utils.py `process_video`, steps 2-3 (s, e, fps) ----
def release_span_indices(num_frames_of_video: int, fps: float, s: float | None, e: float | None) -> list[int]:
    if s is not None and e is not None:
        s = s if s >= 0.0 else 0.0
        e = e if e >= 0.0 else 0.0
        if s > e:
            s, e = e, s
        elif s == e:
            e = s + 1
    f_start = 0 if s is None else max(int(s * fps) - 1, 0)
    f_end = num_frames_of_video - 1 if e is None else min(int(e * fps) - 1, num_frames_of_video - 1)
    return list(range(f_start, f_end + 1))


# ---- the older VideoLLaMA2 rule (`process_video_old`), which we must NOT follow ----
def old_rule(duration: int, num_frames: int) -> list[int]:
    seg_size = float(duration - 1) / num_frames
    return [(int(np.round(seg_size * i)) + int(np.round(seg_size * (i + 1)))) // 2 for i in range(num_frames)]


@pytest.mark.parametrize("n", [8, 16])
def test_uniform_indices_equal_the_release_for_every_length_up_to_3000(n: int) -> None:
    differs_from_old = 0
    for total in range(1, 3001):
        ours = uniform_indices(total, n)
        assert ours == release_frame_sample(total, n).tolist(), total
        differs_from_old += ours != old_rule(total, n)
    assert differs_from_old > 1000  # the two rules really differ, so this test can tell them apart


def test_uniform_indices_on_other_counts_and_short_videos() -> None:
    rng = random.Random(7)
    for _ in range(500):
        total, n = rng.randint(1, 5000), rng.randint(1, 64)
        assert uniform_indices(total, n) == release_frame_sample(total, n).tolist()
    assert uniform_indices(1, 16) == [0] * 16
    assert uniform_indices(3, 8) == release_frame_sample(3, 8).tolist()


def test_span_frame_range_equals_the_release() -> None:
    rng = random.Random(3)
    cases = [(100, 25.0, None, None), (100, 25.0, 1.0, 2.0), (100, 25.0, 2.0, 1.0), (100, 25.0, 1.5, 1.5),
             (100, 25.0, -3.0, 1.0), (100, 30.0, 0.0, 100.0), (10, 29.97, 0.04, 0.3), (300, 30.0, 3.0, None)]
    for _ in range(300):
        total, fps = rng.randint(1, 2000), rng.choice([12.0, 23.976, 25.0, 29.97, 30.0, 60.0])
        start = rng.choice([None, rng.uniform(-2, total / fps + 2)])
        end = rng.choice([None, rng.uniform(-2, total / fps + 2)]) if start is not None else None
        cases.append((total, fps, start, end))
    for total, fps, start, end in cases:
        reference = release_span_indices(total, fps, start, end)
        if not reference:
            with pytest.raises(ValueError):
                span_frame_range(total, fps, start, end)
        else:
            assert span_frame_range(total, fps, start, end) == reference, (total, fps, start, end)
