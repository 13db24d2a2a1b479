"""The frames agents show to models: which frames of a clip, read once per clip, and encoded as JPEG parts.

A clip is a time span of a video; `clip_frame_range` turns it into absolute frame indices (from the
clip's own metadata when it carries fps and frame count, else from a probe), `sample_clip_frames` picks
the paper's uniform segment-middle frames inside it, and `decode_clip_frames` decodes them (agents call
it from worker threads; `read_clip_frames` is the awaitable form). `jpeg_part` shrinks a frame so its
longer side is at most `max_side` pixels (what chat models are shown; full resolution only costs
tokens) and encodes it (Pillow, imported lazily).
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Sequence

import numpy as np

from agents.backends.base import ImagePart
from engine.types import Clip
from engine.video import VideoInfo, probe, read_frames, span_to_frames, uniform_indices

DEFAULT_MAX_SIDE = 448
JPEG_QUALITY = 90


def clip_frame_range(clip: Clip) -> tuple[int, int]:
    """First and last (inclusive) absolute frame index of the clip's span in its video."""
    if clip.fps > 0 and clip.num_frames > 0:
        info = VideoInfo(
            fps=clip.fps,
            width=clip.width,
            height=clip.height,
            num_frames=clip.num_frames,
            duration_s=clip.num_frames / clip.fps,
            backend="clip",
            is_frame_folder=False,
        )
    else:
        info = probe(clip.video_uri)
    return span_to_frames(info, clip.start_s, clip.end_s)


def sample_clip_frames(clip: Clip, num_frames: int) -> list[int]:
    """`num_frames` uniform segment-middle absolute indices inside the clip's span (repeats on short clips)."""
    first, last = clip_frame_range(clip)
    return [first + index for index in uniform_indices(last - first + 1, num_frames)]


def decode_clip_frames(clip: Clip, indices: Sequence[int]) -> np.ndarray:
    """The frames at absolute `indices` of the clip's video (blocking: call it from a worker thread)."""
    return read_frames(clip.video_uri, list(indices))


async def read_clip_frames(clip: Clip, indices: Sequence[int]) -> np.ndarray:
    """The frames at absolute `indices` of the clip's video, decoded in a worker thread."""
    return await asyncio.to_thread(decode_clip_frames, clip, indices)


def jpeg_part(frame: np.ndarray, *, max_side: int = DEFAULT_MAX_SIDE, quality: int = JPEG_QUALITY) -> ImagePart:
    """One RGB uint8 frame `[h, w, 3]` as a JPEG image part, downscaled to `max_side` when larger."""
    from PIL import Image  # lazy: only agents that show frames need Pillow

    image = Image.fromarray(np.ascontiguousarray(frame, dtype=np.uint8))
    longest = max(image.size)
    if max_side and longest > max_side:
        scale = max_side / longest
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return ImagePart(jpeg=buffer.getvalue())


def unique_in_order(indices: Sequence[int]) -> list[int]:
    """The distinct indices in first-seen order (short clips repeat frames; each is decoded once)."""
    return list(dict.fromkeys(int(index) for index in indices))
