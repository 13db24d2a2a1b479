"""Video object segmentation scores as the DAVIS benchmark defines them: region similarity J and boundary accuracy F.

`region_similarity` is J = |M ∩ G| / |M ∪ G| (Jaccard), 1 when both masks are empty. `boundary_f` is the boundary
F-measure: the 1-pixel boundary maps of prediction and truth (`boundary_map`, DAVIS's `_seg2bmap`), each dilated
by a disk of radius ceil(bound_th * image diagonal) (bound_th = 0.008; a bound_th >= 1 is a radius in pixels);
precision = prediction boundary pixels within that distance of the truth boundary / prediction boundary pixels,
recall the other way round, F = 2PR / (P + R), with DAVIS's conventions for empty boundaries (no prediction
boundary but a truth boundary: P = 1, R = 0, so F = 0; the reverse: P = 0, R = 1, F = 0; neither: F = 1).
Optional void pixels are left out as DAVIS does (J counts neither intersection nor union there; F removes them
from both masks before taking boundaries). These follow `davis2017/metrics.py` of
davisvideochallenge/davis2017-evaluation (commit 30b698a), which the tests transcribe and compare against.
`frame_statistics` gives DAVIS's per-object mean and recall (fraction of frames above 0.5). `assign_max` is the
Hungarian algorithm (maximum-total assignment of a rectangular score matrix), used to match predicted objects to
truth objects. numpy only, with OpenCV's dilation imported lazily.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "BOUND_TH",
    "FrameStatistics",
    "assign_max",
    "boundary_f",
    "boundary_map",
    "boundary_radius",
    "disk",
    "frame_statistics",
    "region_similarity",
]

BOUND_TH = 0.008  # DAVIS's boundary tolerance, as a fraction of the image diagonal


def _binary(mask: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(mask)
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2-D mask, got shape {array.shape}")
    return array.astype(bool)


def _pair(pred: np.ndarray, truth: np.ndarray, void: np.ndarray | None) -> tuple[np.ndarray, ...]:
    pred, truth = _binary(pred, "pred"), _binary(truth, "truth")
    if pred.shape != truth.shape:
        raise ValueError(f"prediction {pred.shape} and truth {truth.shape} differ in size")
    void = np.zeros_like(truth) if void is None else _binary(void, "void")
    if void.shape != truth.shape:
        raise ValueError(f"void {void.shape} and truth {truth.shape} differ in size")
    return pred, truth, void


def region_similarity(pred: np.ndarray, truth: np.ndarray, *, void: np.ndarray | None = None) -> float:
    """J: intersection over union of two boolean masks outside the void pixels; 1.0 when the union is empty."""
    pred, truth, void = _pair(pred, truth, void)
    keep = ~void
    union = int(np.count_nonzero((pred | truth) & keep))
    if union == 0:
        return 1.0
    return int(np.count_nonzero(pred & truth & keep)) / union


def boundary_map(mask: np.ndarray) -> np.ndarray:
    """The 1-pixel boundary of a mask, as DAVIS's `_seg2bmap` draws it (offset half a pixel towards the origin).

    A pixel is on the boundary when it differs from its east, south or south-east neighbour (outside the image
    counts as background); on the last row only the east neighbour counts, on the last column only the south one,
    and the bottom-right pixel is never a boundary pixel.
    """
    seg = _binary(mask, "mask")
    east = np.zeros_like(seg)
    south = np.zeros_like(seg)
    south_east = np.zeros_like(seg)
    east[:, :-1] = seg[:, 1:]
    south[:-1, :] = seg[1:, :]
    south_east[:-1, :-1] = seg[1:, 1:]
    bmap = (seg ^ east) | (seg ^ south) | (seg ^ south_east)
    bmap[-1, :] = seg[-1, :] ^ east[-1, :]
    bmap[:, -1] = seg[:, -1] ^ south[:, -1]
    bmap[-1, -1] = False
    return bmap


def disk(radius: int) -> np.ndarray:
    """A flat disk footprint `[2r+1, 2r+1]` uint8: cells whose distance from the centre is at most `radius`
    (scikit-image's `morphology.disk` with its default strict radius, which DAVIS uses)."""
    radius = int(radius)
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    offsets = np.arange(-radius, radius + 1)
    xs, ys = np.meshgrid(offsets, offsets)
    return (xs * xs + ys * ys <= radius * radius).astype(np.uint8)


def boundary_radius(shape: Sequence[int], bound_th: float = BOUND_TH) -> int:
    """The boundary tolerance in pixels: `bound_th` itself when >= 1, else ceil(bound_th * image diagonal)."""
    if bound_th >= 1:
        return int(bound_th)
    return int(math.ceil(bound_th * math.hypot(int(shape[0]), int(shape[1]))))


def boundary_f(
    pred: np.ndarray, truth: np.ndarray, *, void: np.ndarray | None = None, bound_th: float = BOUND_TH
) -> float:
    """F: the boundary F-measure of a predicted mask against the truth (see the module docstring)."""
    import cv2  # lazily: only the audits score boundaries

    pred, truth, void = _pair(pred, truth, void)
    pred_boundary = boundary_map(pred & ~void)
    truth_boundary = boundary_map(truth & ~void)
    n_pred = int(np.count_nonzero(pred_boundary))
    n_truth = int(np.count_nonzero(truth_boundary))
    if n_pred == 0 and n_truth == 0:
        return 1.0
    if n_pred == 0 or n_truth == 0:  # P = 1, R = 0 or P = 0, R = 1: F = 0 either way
        return 0.0
    footprint = disk(boundary_radius(truth.shape, bound_th))
    pred_near = cv2.dilate(pred_boundary.astype(np.uint8), footprint).astype(bool)
    truth_near = cv2.dilate(truth_boundary.astype(np.uint8), footprint).astype(bool)
    precision = int(np.count_nonzero(pred_boundary & truth_near)) / n_pred
    recall = int(np.count_nonzero(truth_boundary & pred_near)) / n_truth
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


@dataclass(frozen=True, slots=True, kw_only=True)
class FrameStatistics:
    """DAVIS's per-object statistics of a per-frame score: its mean and its recall (fraction of frames > 0.5)."""

    mean: float
    recall: float
    frames: int


def frame_statistics(values: Sequence[float]) -> FrameStatistics | None:
    """Mean and recall (> 0.5) of one object's per-frame scores, NaNs left out as DAVIS does; None when none."""
    array = np.asarray(list(values), dtype=np.float64)
    array = array[~np.isnan(array)]
    if array.size == 0:
        return None
    return FrameStatistics(mean=float(array.mean()), recall=float((array > 0.5).mean()), frames=int(array.size))


def assign_max(scores: np.ndarray | Sequence[Sequence[float]]) -> list[tuple[int, int]]:
    """The one-to-one assignment of rows to columns with the largest total score (Hungarian algorithm).

    `scores` is `[rows, cols]`; min(rows, cols) pairs `(row, col)` come back, sorted by row. Ties are broken
    deterministically. O(n^2 m) with potentials (the shortest augmenting path form of Kuhn-Munkres).
    """
    matrix = np.asarray(scores, dtype=np.float64)
    if matrix.ndim != 2:
        raise ValueError(f"assign_max expects a 2-D score matrix, got shape {matrix.shape}")
    if matrix.size == 0:
        return []
    if not np.isfinite(matrix).all():
        raise ValueError("assign_max needs finite scores")
    transposed = matrix.shape[0] > matrix.shape[1]
    cost = (-(matrix.T if transposed else matrix)).tolist()
    n, m = len(cost), len(cost[0])
    infinity = math.inf
    u = [0.0] * (n + 1)
    v = [0.0] * (m + 1)
    owner = [0] * (m + 1)  # owner[j]: the row (1-based) assigned to column j; 0 = free
    way = [0] * (m + 1)
    for row in range(1, n + 1):
        owner[0] = row
        column = 0
        min_to = [infinity] * (m + 1)
        used = [False] * (m + 1)
        while True:
            used[column] = True
            current_row = owner[column]
            delta, next_column = infinity, 0
            for j in range(1, m + 1):
                if used[j]:
                    continue
                reduced = cost[current_row - 1][j - 1] - u[current_row] - v[j]
                if reduced < min_to[j]:
                    min_to[j], way[j] = reduced, column
                if min_to[j] < delta:
                    delta, next_column = min_to[j], j
            for j in range(m + 1):
                if used[j]:
                    u[owner[j]] += delta
                    v[j] -= delta
                else:
                    min_to[j] -= delta
            column = next_column
            if owner[column] == 0:
                break
        while column:
            previous = way[column]
            owner[column] = owner[previous]
            column = previous
    pairs = [(owner[j] - 1, j - 1) for j in range(1, m + 1) if owner[j]]
    if transposed:
        pairs = [(col, row) for row, col in pairs]
    return sorted(pairs)
