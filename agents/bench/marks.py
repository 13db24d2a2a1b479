"""Set-of-marks frames for general VLMs, drawn as the release's `benchmark/` scripts draw them, JPEG-encoded.

A VLM behind an OpenAI-compatible URL takes no masks, so the referred objects are drawn onto the frames. As in
the release (`benchmark/description_add_mask_{first,all}_frame.py`, `qa_add_mask_first_frame.py`): 16 frames of
the video by its two-step rule (`agents.bench.protocol.som_frame_indices`); colours red, green, yellow, ... in
object order; Bench-D single-frame: the object outlined with a light red tint (alpha 0.1) on the first sampled
frame that carries its mask; Bench-D multi-frame: outlined (alpha 0) on every sampled frame with a mask;
Bench-Q: each object tinted (alpha 0.2) and outlined in its colour, with its `<objectN>` label, on the first
sampled frame where it occurs (every such frame in multi-frame mode, which the release has no script for). The
release draws with detectron2's Visualizer; we draw with OpenCV (`engine.render`), so line widths and the label's
font differ, not where or in which colour an object is marked.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from agents.bench.files import BenchDItem, BenchItem, Mode
from agents.bench.protocol import SOM_COLORS, som_frame_indices
from engine.types import RleMask

# RGB of the colour names the release's prompts use (matplotlib's named colours, as its Visualizer takes them).
COLOR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0), "green": (0, 128, 0), "yellow": (255, 255, 0), "blue": (0, 0, 255),
    "grey": (128, 128, 128), "purple": (128, 0, 128), "orange": (255, 165, 0), "brown": (165, 42, 42),
    "pink": (255, 192, 203),
}


def color_of(object_number: int) -> tuple[str, tuple[int, int, int]]:
    name = SOM_COLORS[object_number % len(SOM_COLORS)]
    return name, COLOR_RGB[name]


@dataclass(frozen=True, slots=True, kw_only=True)
class MarkedFrames:
    """The JPEG frames a VLM is shown, the absolute frame indices they come from, and where each object is drawn."""

    jpegs: tuple[bytes, ...]
    frame_indices: tuple[int, ...]
    marked: tuple[tuple[int, ...], ...]  # per object: the frame indices it is drawn on


def marked_frames(item: BenchItem, *, mode: Mode, num_frames: int = 16, jpeg_quality: int = 90) -> MarkedFrames:
    """Read the item's set-of-marks frames and draw its objects; raises the typed errors of `engine.video`."""
    from engine.errors import TruncatedVideoError
    from engine.masks import decode_rle
    from engine.render import draw_contour, draw_label, tint_mask
    from engine.video import probe, read_frames

    indices = som_frame_indices(probe(item.video_path).num_frames, num_frames)
    try:
        frames = read_frames(item.video_path, list(dict.fromkeys(indices)))
    except ValueError as exc:  # the video is shorter than the entry says
        raise TruncatedVideoError(f"{item.video_path}: {exc}") from exc
    row = {index: position for position, index in enumerate(dict.fromkeys(indices))}
    frames = np.ascontiguousarray(frames[[row[i] for i in indices]])
    is_d = isinstance(item, BenchDItem)
    alpha = (0.1 if mode == "single" else 0.0) if is_d else 0.2
    marked: list[tuple[int, ...]] = []
    for number, obj in enumerate(item.objects):
        _, rgb = color_of(number)
        drawn: list[int] = []
        for position, frame_index in enumerate(indices):
            mask = _mask_on(obj.masks.get(frame_index), frames[position].shape[:2], decode_rle)
            if mask is None:
                continue
            frame = tint_mask(frames[position], mask, rgb, alpha) if alpha else frames[position]
            frame = draw_contour(frame, mask, rgb, 2)
            if not is_d and obj.name:
                frame = draw_label(frame, mask, obj.name, rgb)
            frames[position] = frame
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
