"""Drawing on frames for prompts and previews: mask contours, tinted masks, boxes and numbered set-of-marks.

The reviewer shows a VLM the object with a contour around it; previews and the report show masks and
boxes. Every function takes an RGB uint8 frame `[h, w, 3]` and returns a new array (the input is never
modified). Masks may be boolean arrays or anything `engine.masks` decodes (COCO RLE, `RleMask`).
OpenCV is imported lazily inside each function.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from engine.masks import decode_rle
from engine.types import RleMask

__all__ = ["MARK_COLORS", "draw_box", "draw_contour", "draw_label", "mark_objects", "tint_mask"]

Color = tuple[int, int, int]

# Distinct, saturated colours for set-of-marks, in the order objects are numbered.
MARK_COLORS: tuple[Color, ...] = (
    (230, 25, 75),
    (60, 180, 75),
    (0, 130, 200),
    (255, 225, 25),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
)


def draw_contour(frame: np.ndarray, mask: Any, color: Color = (255, 0, 0), thickness: int = 2) -> np.ndarray:
    """The frame with the outline of every region of `mask` drawn in `color`."""
    import cv2

    out = _copy(frame)
    binary = _mask_array(mask, out.shape[:2]).astype(np.uint8)
    contours, _ = cv2.findContours(binary, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(out, contours, -1, tuple(int(c) for c in color), max(1, int(thickness)))
    return out


def tint_mask(frame: np.ndarray, mask: Any, color: Color = (255, 0, 0), alpha: float = 0.5) -> np.ndarray:
    """The frame with the pixels of `mask` blended towards `color` by `alpha` (0: unchanged, 1: solid)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    out = _copy(frame)
    inside = _mask_array(mask, out.shape[:2])
    blended = (1.0 - alpha) * out[inside].astype(np.float32) + alpha * np.asarray(color, dtype=np.float32)
    out[inside] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    return out


def draw_box(frame: np.ndarray, box: Sequence[float], color: Color = (255, 0, 0), thickness: int = 2) -> np.ndarray:
    """The frame with the rectangle `box` = (x0, y0, x1, y1) in pixel-edge coordinates drawn in `color`."""
    import cv2

    out = _copy(frame)
    x0, y0, x1, y1 = (float(v) for v in box)
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"box must have x1 > x0 and y1 > y0, got {tuple(box)}")
    # cv2 takes inclusive pixel corners; our x1/y1 are exclusive edges.
    top_left = (int(round(x0)), int(round(y0)))
    bottom_right = (int(round(x1)) - 1, int(round(y1)) - 1)
    cv2.rectangle(out, top_left, bottom_right, tuple(int(c) for c in color), max(1, int(thickness)))
    return out


def mark_objects(
    frame: np.ndarray,
    masks: Sequence[Any] | Mapping[Any, Any],
    labels: Sequence[str] | None = None,
    *,
    alpha: float = 0.35,
) -> np.ndarray:
    """Set-of-marks: each object tinted and outlined in its own colour, with its label at its centre.

    `masks` is a sequence (or a mapping, in iteration order) of masks; labels default to "1", "2", ...
    An empty mask gets no mark. Colours cycle through `MARK_COLORS`.
    """
    items = list(masks.values()) if isinstance(masks, Mapping) else list(masks)
    names = [str(i + 1) for i in range(len(items))] if labels is None else [str(label) for label in labels]
    if len(names) != len(items):
        raise ValueError(f"{len(names)} labels for {len(items)} masks")
    out = _copy(frame)
    arrays = [_mask_array(mask, out.shape[:2]) for mask in items]
    for index, mask in enumerate(arrays):
        color = MARK_COLORS[index % len(MARK_COLORS)]
        out = draw_contour(tint_mask(out, mask, color, alpha), mask, color, thickness=2)
    for index, (mask, name) in enumerate(zip(arrays, names, strict=True)):
        out = draw_label(out, mask, name, MARK_COLORS[index % len(MARK_COLORS)])
    return out


def draw_label(frame: np.ndarray, mask: Any, text: str, color: Color = (255, 0, 0)) -> np.ndarray:
    """The frame with `text` on a black box at a point inside `mask` near its centre (unchanged if it is empty)."""
    import cv2

    out = _copy(frame)
    mask = _mask_array(mask, out.shape[:2])
    if not mask.any():
        return out
    scale = max(0.4, min(out.shape[:2]) / 400)
    x, y = _label_anchor(mask)
    (width, height), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    origin = (int(x - width / 2), int(y + height / 2))
    corner0 = (origin[0] - 2, origin[1] - height - 2)
    corner1 = (origin[0] + width + 2, origin[1] + baseline)
    cv2.rectangle(out, corner0, corner1, (0, 0, 0), -1)
    cv2.putText(out, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, tuple(int(c) for c in color), 1)
    return out


def _label_anchor(mask: np.ndarray) -> tuple[float, float]:
    """A point inside the mask near its centre: the mask pixel closest to the centroid."""
    ys, xs = np.nonzero(mask)
    cy, cx = ys.mean(), xs.mean()
    nearest = int(np.argmin((ys - cy) ** 2 + (xs - cx) ** 2))
    return float(xs[nearest]), float(ys[nearest])


def _copy(frame: np.ndarray) -> np.ndarray:
    array = np.asarray(frame)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"expected an RGB frame [h, w, 3], got shape {array.shape}")
    return np.ascontiguousarray(array, dtype=np.uint8).copy()


def _mask_array(mask: Any, shape: tuple[int, int]) -> np.ndarray:
    array = np.asarray(mask, dtype=bool) if isinstance(mask, np.ndarray) else decode_rle(_as_rle(mask))
    if array.shape != tuple(shape):
        raise ValueError(f"mask of shape {array.shape} does not fit a frame of {shape}")
    return array


def _as_rle(mask: Any) -> RleMask | Mapping[str, Any]:
    if isinstance(mask, RleMask | Mapping):
        return mask
    raise TypeError(f"expected a mask array, COCO RLE or RleMask, got {type(mask).__name__}")
