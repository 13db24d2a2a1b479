"""J and F of `engine.metrics`: hand-computed values, and DAVIS's own code (transcribed) on edge and random masks."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from engine.metrics import (
    assign_max,
    boundary_f,
    boundary_map,
    boundary_radius,
    disk,
    frame_statistics,
    region_similarity,
)
from tests.engine import davis_reference as davis


def _box(shape: tuple[int, int], rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[rows[0] : rows[1], cols[0] : cols[1]] = True
    return mask


def _pixel(shape: tuple[int, int], row: int, col: int) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[row, col] = True
    return mask


def _both(pred: np.ndarray, truth: np.ndarray, **kwargs) -> tuple[float, float, float, float]:
    """(our J, DAVIS J, our F, DAVIS F)."""
    void = kwargs.pop("void", None)
    bound_th = kwargs.pop("bound_th", 0.008)
    return (
        region_similarity(pred, truth, void=void),
        float(davis.db_eval_iou(truth, pred, void)),
        boundary_f(pred, truth, void=void, bound_th=bound_th),
        float(davis.db_eval_boundary(truth, pred, void, bound_th=bound_th)),
    )


# ------------------------------------------------------------------ hand-computed values


def test_j_is_intersection_over_union_and_one_when_both_are_empty() -> None:
    truth = _box((4, 4), (0, 2), (0, 3))  # 6 pixels
    pred = _box((4, 4), (0, 2), (0, 2))  # 4 pixels, all inside the truth
    assert region_similarity(pred, truth) == pytest.approx(4 / 6)
    empty = np.zeros((4, 4), dtype=bool)
    assert region_similarity(empty, empty) == 1.0
    assert region_similarity(empty, truth) == 0.0
    assert region_similarity(truth, empty) == 0.0


def test_void_pixels_count_in_neither_intersection_nor_union() -> None:
    truth = _box((4, 4), (0, 2), (0, 3))
    pred = _box((4, 4), (0, 2), (0, 2))
    void = _box((4, 4), (0, 2), (2, 3))  # the truth's third column
    assert region_similarity(pred, truth, void=void) == 1.0


def test_the_boundary_map_of_a_block_is_the_ring_half_a_pixel_towards_the_origin() -> None:
    block = _box((10, 10), (2, 6), (2, 6))  # a 4x4 block
    ring = _box((10, 10), (1, 6), (1, 6)) & ~_box((10, 10), (2, 5), (2, 5))  # the 5x5 ring at rows/cols 1..5
    assert np.array_equal(boundary_map(block), ring)
    assert int(boundary_map(block).sum()) == 16
    # One pixel: itself and its north, west and north-west neighbours; in the bottom-right corner only three.
    assert int(boundary_map(_pixel((10, 10), 4, 4)).sum()) == 4
    assert int(boundary_map(_pixel((10, 10), 9, 9)).sum()) == 3


def test_the_tolerance_is_ceil_of_0_008_times_the_diagonal_and_a_disk() -> None:
    assert boundary_radius((10, 10)) == 1
    assert boundary_radius((480, 854)) == 8  # DAVIS 480p: ceil(0.008 * 979.7)
    assert boundary_radius((720, 1280)) == 12
    assert boundary_radius((100, 100), 3) == 3  # >= 1: pixels
    assert disk(1).tolist() == [[0, 1, 0], [1, 1, 1], [0, 1, 0]]
    assert int(disk(2).sum()) == 13


def test_f_on_a_block_shifted_by_two_rows_is_ten_sixteenths() -> None:
    # Rings of 16 pixels, tolerance 1 (a cross): 10 of each ring's pixels lie within it of the other ring.
    truth = _box((10, 10), (2, 6), (2, 6))
    pred = _box((10, 10), (4, 8), (2, 6))
    assert boundary_f(pred, truth) == pytest.approx(10 / 16)
    assert boundary_f(truth, truth) == 1.0
    far = _box((10, 10), (7, 10), (7, 10))
    small_truth = _box((10, 10), (0, 2), (0, 2))
    assert boundary_f(far, small_truth) == 0.0


def test_f_of_one_pixel_objects() -> None:
    truth = _pixel((10, 10), 4, 4)
    assert boundary_f(truth, truth) == 1.0
    # Two pixels apart: each 4-pixel boundary has 2 pixels within the cross of the other -> P = R = F = 0.5.
    assert boundary_f(_pixel((10, 10), 4, 6), truth) == pytest.approx(0.5)
    assert region_similarity(_pixel((10, 10), 4, 6), truth) == 0.0


def test_f_conventions_for_empty_masks() -> None:
    empty = np.zeros((12, 12), dtype=bool)
    block = _box((12, 12), (3, 7), (3, 7))
    assert boundary_f(empty, empty) == 1.0  # P = R = 1
    assert boundary_f(empty, block) == 0.0  # P = 1, R = 0
    assert boundary_f(block, empty) == 0.0  # P = 0, R = 1


def test_frame_statistics_are_davis_mean_and_recall() -> None:
    stats = frame_statistics([1.0, 0.4, 0.6, float("nan")])
    assert stats is not None and stats.frames == 3
    assert stats.mean == pytest.approx(2.0 / 3) and stats.recall == pytest.approx(2 / 3)
    assert frame_statistics([]) is None


# ------------------------------------------------------------------ against DAVIS's code


EDGE_CASES = {
    "both empty": (np.zeros((8, 9), bool), np.zeros((8, 9), bool)),
    "empty truth": (_box((8, 9), (2, 5), (2, 6)), np.zeros((8, 9), bool)),
    "empty prediction": (np.zeros((8, 9), bool), _box((8, 9), (2, 5), (2, 6))),
    "one pixel each, same": (_pixel((8, 9), 3, 3), _pixel((8, 9), 3, 3)),
    "one pixel each, apart": (_pixel((8, 9), 3, 3), _pixel((8, 9), 3, 5)),
    "one pixel in the corner": (_pixel((8, 9), 7, 8), _pixel((8, 9), 7, 8)),
    "one pixel vs a block": (_pixel((8, 9), 0, 0), _box((8, 9), (0, 3), (0, 3))),
    "full frame": (np.ones((8, 9), bool), np.ones((8, 9), bool)),
    "full vs block": (np.ones((8, 9), bool), _box((8, 9), (1, 7), (1, 8))),
    "one row image": (_box((1, 12), (0, 1), (2, 7)), _box((1, 12), (0, 1), (4, 9))),
    "one column image": (_box((12, 1), (2, 7), (0, 1)), _box((12, 1), (4, 9), (0, 1))),
}


@pytest.mark.parametrize("case", sorted(EDGE_CASES))
def test_edge_cases_match_davis(case: str) -> None:
    pred, truth = EDGE_CASES[case]
    ours_j, davis_j, ours_f, davis_f = _both(pred, truth)
    assert ours_j == pytest.approx(davis_j, abs=1e-12)
    assert ours_f == pytest.approx(davis_f, abs=1e-12)


def _random_mask(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    kind = rng.integers(0, 4)
    if kind == 0:  # noise
        return rng.random(shape) < rng.uniform(0.05, 0.6)
    if kind == 1:  # a block
        r0, c0 = rng.integers(0, shape[0]), rng.integers(0, shape[1])
        return _box(shape, (r0, r0 + rng.integers(1, shape[0] + 1)), (c0, c0 + rng.integers(1, shape[1] + 1)))
    if kind == 2:  # a disc
        ys, xs = np.mgrid[0 : shape[0], 0 : shape[1]]
        cy, cx, r = rng.uniform(0, shape[0]), rng.uniform(0, shape[1]), rng.uniform(0.5, max(shape) / 2)
        return (ys - cy) ** 2 + (xs - cx) ** 2 <= r * r
    return rng.random(shape) < 0.02  # a few scattered pixels


def test_random_masks_match_davis() -> None:
    rng = np.random.default_rng(2017)
    for trial in range(300):
        shape = (int(rng.integers(1, 70)), int(rng.integers(1, 90)))
        pred, truth = _random_mask(rng, shape), _random_mask(rng, shape)
        void = rng.random(shape) < 0.1 if trial % 3 == 0 else None
        bound_th = (0.008, 0.05, 2, 0.3)[trial % 4]
        ours_j, davis_j, ours_f, davis_f = _both(pred, truth, void=void, bound_th=bound_th)
        assert ours_j == pytest.approx(davis_j, abs=1e-12), (trial, shape)
        assert ours_f == pytest.approx(davis_f, abs=1e-12), (trial, shape, bound_th)
        assert np.array_equal(boundary_map(truth), davis._seg2bmap(truth.copy()))


def test_a_large_frame_matches_davis() -> None:
    rng = np.random.default_rng(7)
    ys, xs = np.mgrid[0:480, 0:854]
    truth = (ys - 240) ** 2 / 120**2 + (xs - 400) ** 2 / 200**2 <= 1
    pred = np.roll(truth, (9, -14), axis=(0, 1)) ^ (rng.random(truth.shape) < 0.002)
    ours_j, davis_j, ours_f, davis_f = _both(pred, truth)
    assert ours_j == pytest.approx(davis_j, abs=1e-12) and ours_f == pytest.approx(davis_f, abs=1e-12)
    assert 0.0 < ours_f < 1.0


# ------------------------------------------------------------------ matching


def _brute_force(scores: np.ndarray) -> float:
    rows, cols = scores.shape
    if rows <= cols:
        return max(sum(scores[r, c] for r, c in zip(range(rows), perm, strict=True))
                   for perm in itertools.permutations(range(cols), rows))
    return _brute_force(scores.T)


def test_assign_max_finds_the_best_total_assignment() -> None:
    rng = np.random.default_rng(3)
    for _ in range(200):
        shape = (int(rng.integers(1, 6)), int(rng.integers(1, 6)))
        scores = np.round(rng.random(shape), 2)  # rounded: ties happen
        pairs = assign_max(scores)
        assert len(pairs) == min(shape)
        assert len({r for r, _ in pairs}) == len(pairs) == len({c for _, c in pairs})
        assert sum(scores[r, c] for r, c in pairs) == pytest.approx(_brute_force(scores))


def test_assign_max_prefers_the_global_best_over_greedy() -> None:
    # Greedy would take (0, 0) = 0.9 and leave (1, 1) = 0.1: total 1.0; the best is 0.8 + 0.8.
    assert assign_max([[0.9, 0.8], [0.8, 0.1]]) == [(0, 1), (1, 0)]
    assert assign_max(np.zeros((0, 3))) == []
