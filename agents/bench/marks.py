"""Set-of-marks frames for general VLMs: the referred objects drawn on the sampled frames, JPEG-encoded.

A VLM behind an OpenAI-compatible URL takes no masks, so each object is drawn onto the frames in its own
colour (red, green, yellow, ... in `<region>` order, as the release did): as a contour (Bench-D default) or a
tinted mask (Bench-Q default). Single-frame mode marks each object on the first sampled frame where it appears;
multi-frame mode on every sampled frame where it has a mask. Frames are the item's annotated frames sampled
uniformly (16 of the published 32), so every marked frame has a real mask.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from engine.types import RleMask
from agents.bench.files import BenchItem, Mode, sample_bench_frames

MarkStyle = Literal["contour", "tint"]

# Colour names as the prompts say them, with RGB values far apart from each other.
MARK_COLORS: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("red", (255, 0, 0)),
    ("green", (0, 200, 0)),
    ("yellow", (255, 230, 0)),
    ("blue", (0, 90, 255)),
    ("grey", (128, 128, 128)),
    ("purple", (150, 40, 200)),
    ("orange", (255, 140, 0)),
    ("brown", (140, 70, 20)),
    ("pink", (255, 120, 200)),
)


def color_of(object_number: int) -> tuple[str, tuple[int, int, int]]:
    return MARK_COLORS[object_number % len(MARK_COLORS)]


@dataclass(frozen=True, slots=True, kw_only=True)
class MarkedFrames:
    """The JPEG frames a VLM is shown, the absolute frame indices they come from, and where each object is drawn."""

    jpegs: tuple[bytes, ...]
    frame_indices: tuple[int, ...]
    marked: tuple[tuple[int, ...], ...]  # per object: the frame indices it is drawn on


def marked_frames(
    item: BenchItem, *, mode: Mode, style: MarkStyle, num_frames: int = 16, thickness: int = 2,
    jpeg_quality: int = 90,
) -> MarkedFrames:
    """Read the item's sampled frames and draw its objects; raises the typed errors of `engine.video`."""
    from engine.masks import decode_rle
    from engine.render import draw_contour, tint_mask
    from engine.video import read_frames

    indices = sample_bench_frames(item.annotated_frames, num_frames)
    try:
        frames = read_frames(item.video_path, indices)
    except ValueError as exc:  # an annotated frame beyond the video's end: the entry does not fit its video
        from engine.errors import TruncatedVideoError

        raise TruncatedVideoError(f"{item.video_path}: {exc}") from exc
    frames = np.ascontiguousarray(frames)
    marked: list[tuple[int, ...]] = []
    for number, obj in enumerate(item.objects):
        _, rgb = color_of(number)
        drawn: list[int] = []
        for position, frame_index in enumerate(indices):
            mask = _mask_on(obj.masks.get(frame_index), frames[position].shape[:2], decode_rle)
            if mask is None:
                continue
            if style == "contour":
                frames[position] = draw_contour(frames[position], mask, rgb, thickness)
            else:  # tint plus a thin edge, as the release's set-of-marks drawing: visible on any background
                frames[position] = draw_contour(tint_mask(frames[position], mask, rgb, 0.4), mask, rgb, 1)
            drawn.append(frame_index)
            if mode == "single":
                break
        marked.append(tuple(drawn))
    return MarkedFrames(jpegs=tuple(encode_jpeg(f, jpeg_quality) for f in frames), frame_indices=tuple(indices),
                        marked=tuple(marked))


def _mask_on(
    rle: RleMask | None, shape: Sequence[int], decode: Callable[[RleMask], np.ndarray]
) -> np.ndarray | None:
    """The object's boolean mask at the frame's size (nearest-neighbour when sizes differ); None when empty."""
    if rle is None:
        return None
    mask = decode(rle)
    if not mask.any():
        return None
    height, width = int(shape[0]), int(shape[1])
    if mask.shape != (height, width):
        rows = (np.arange(height) * mask.shape[0] // height).clip(0, mask.shape[0] - 1)
        cols = (np.arange(width) * mask.shape[1] // width).clip(0, mask.shape[1] - 1)
        mask = mask[rows][:, cols]
    return mask


def encode_jpeg(frame: np.ndarray, quality: int = 90) -> bytes:
    """uint8 RGB `[h, w, 3]` -> JPEG bytes."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.asarray(frame, dtype=np.uint8)).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()
