"""engine.render: contours, tints, boxes and set-of-marks draw where the mask is and never touch the input."""

from __future__ import annotations

import numpy as np
import pytest

from engine.masks import encode_rle
from engine.render import MARK_COLORS, draw_box, draw_contour, mark_objects, tint_mask
from engine.types import RleMask


def _scene() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    frame = np.full((60, 80, 3), 100, dtype=np.uint8)
    first = np.zeros((60, 80), dtype=bool)
    first[10:30, 10:30] = True
    second = np.zeros((60, 80), dtype=bool)
    second[35:55, 45:75] = True
    return frame, first, second


def test_draw_contour_outlines_the_mask_only() -> None:
    frame, mask, _ = _scene()
    before = frame.copy()
    out = draw_contour(frame, mask, color=(255, 0, 0), thickness=1)
    assert np.array_equal(frame, before) and out.dtype == np.uint8
    red = np.all(out == (255, 0, 0), axis=2)
    assert red[10, 10:30].all() and red[29, 10:30].all()  # the border
    assert not red[15:25, 15:25].any()  # not the inside
    assert not red[40:, :].any()  # nowhere else
    assert np.array_equal(draw_contour(frame, encode_rle(mask), thickness=1), draw_contour(frame, mask, thickness=1))


def test_tint_mask_blends_inside_only() -> None:
    frame, mask, _ = _scene()
    out = tint_mask(frame, RleMask.from_coco(encode_rle(mask)), color=(200, 0, 0), alpha=0.5)
    assert tuple(out[20, 20]) == (150, 50, 50)
    assert np.array_equal(out[~mask], frame[~mask])
    assert np.array_equal(tint_mask(frame, mask, alpha=0.0), frame)
    with pytest.raises(ValueError):
        tint_mask(frame, mask, alpha=1.5)
    with pytest.raises(ValueError):
        tint_mask(frame, np.zeros((5, 5), bool))


def test_draw_box_uses_exclusive_edges() -> None:
    frame, _, _ = _scene()
    out = draw_box(frame, (10, 20, 30, 40), color=(0, 255, 0), thickness=1)
    green = np.all(out == (0, 255, 0), axis=2)
    assert green[20, 10:30].all() and green[39, 10:30].all() and green[20:40, 10].all() and green[20:40, 29].all()
    assert not green[40, :].any() and not green[:, 30].any() and not green[25:35, 15:25].any()
    with pytest.raises(ValueError):
        draw_box(frame, (30, 20, 10, 40))


def test_mark_objects_gives_each_object_its_colour_and_label() -> None:
    frame, first, second = _scene()
    out = mark_objects(frame, [first, encode_rle(second)])
    assert not np.array_equal(out, frame)
    for index, mask in enumerate((first, second)):
        colour = np.asarray(MARK_COLORS[index])
        # The tinted inside moves towards the object's own colour.
        inside = out[mask].astype(int).mean(axis=0)
        assert np.abs(inside - colour).sum() < np.abs(frame[mask].astype(int).mean(axis=0) - colour).sum()
    assert np.array_equal(out[~(first | second)][:10], frame[~(first | second)][:10])
    labelled = mark_objects(frame, {"a": first, "b": second}, labels=["7", "8"])
    assert not np.array_equal(labelled, out)  # different label glyphs
    with pytest.raises(ValueError):
        mark_objects(frame, [first], labels=["1", "2"])
    empty = mark_objects(frame, [np.zeros((60, 80), bool)])
    assert np.array_equal(empty, frame)
