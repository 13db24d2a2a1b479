"""COCO RLE masks: encode/decode of single masks and stacks, conversion, area, box, IoU, resizing.

Interchangeable with pycocotools (which does the run-length coding): `encode_rle` returns
`{"size": [h, w], "counts": str}` and `decode_rle` accepts that, bytes counts, uncompressed RLE
(list counts) and polygons (with the image size given).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from pycocotools import mask as coco_mask

from engine.types import RleMask


def encode_rle(mask: np.ndarray) -> dict[str, Any]:
    """Encode one boolean mask `[h, w]` as compressed COCO RLE with string counts."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"encode_rle expects a 2-D mask, got shape {mask.shape}")
    rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def decode_rle(rle: Mapping[str, Any] | RleMask) -> np.ndarray:
    """Decode one COCO RLE (compressed or uncompressed) to a boolean array `[h, w]`."""
    return coco_mask.decode(_to_compressed(rle)).astype(bool)


def _to_compressed(rle: Mapping[str, Any] | RleMask) -> dict[str, Any]:
    if isinstance(rle, RleMask):
        rle = rle.to_coco()
    height, width = (int(v) for v in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, list):  # uncompressed RLE
        return coco_mask.frPyObjects({"size": [height, width], "counts": counts}, height, width)
    if isinstance(counts, str):
        counts = counts.encode("ascii")
    return {"size": [height, width], "counts": counts}


MaskLike = Mapping[str, Any] | RleMask | np.ndarray
"""Anything the helpers below take as one mask: compressed or uncompressed COCO RLE, an `RleMask`, or an array."""


def encode_rle_stack(masks: np.ndarray) -> list[dict[str, Any]]:
    """Encode a stack of boolean masks `[n, h, w]` as a list of compressed COCO RLE dicts (string counts)."""
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"encode_rle_stack expects masks [n, h, w], got shape {masks.shape}")
    if masks.shape[0] == 0:
        return []
    encoded = coco_mask.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    return [{"size": [int(r["size"][0]), int(r["size"][1])], "counts": r["counts"].decode("ascii")} for r in encoded]


def decode_rle_stack(rles: Sequence[Mapping[str, Any] | RleMask]) -> np.ndarray:
    """Decode RLEs of one size to a boolean stack `[n, h, w]`."""
    if not rles:
        raise ValueError("decode_rle_stack needs at least one RLE (the size of an empty stack is unknown)")
    return np.stack([decode_rle(rle) for rle in rles])


def to_rle_mask(
    mask: MaskLike | Sequence[Sequence[float]], *, height: int | None = None, width: int | None = None
) -> RleMask:
    """Normalise any mask form to an `RleMask`: compressed or uncompressed RLE dicts, bool/0-1 arrays,
    `RleMask` itself, or COCO polygons (a list of `[x0, y0, x1, y1, ...]` lists, which need `height`
    and `width`)."""
    if isinstance(mask, RleMask):
        return mask
    if isinstance(mask, np.ndarray):
        return RleMask.from_coco(encode_rle(mask.astype(bool)))
    if isinstance(mask, Mapping):
        compressed = _to_compressed(mask)
        return RleMask(
            height=compressed["size"][0], width=compressed["size"][1], counts=compressed["counts"].decode("ascii")
        )
    if isinstance(mask, Sequence) and not isinstance(mask, str):
        return _polygons_to_rle(mask, height, width)
    raise TypeError(f"cannot convert {type(mask).__name__} to an RLE mask")


def _polygons_to_rle(polygons: Sequence[Sequence[float]], height: int | None, width: int | None) -> RleMask:
    if height is None or width is None:
        raise ValueError("polygons need the image height and width")
    rings = [[float(v) for v in ring] for ring in polygons if len(ring) >= 6]
    if not rings:
        return RleMask.from_coco(encode_rle(np.zeros((height, width), dtype=bool)))
    merged = coco_mask.merge(coco_mask.frPyObjects(rings, height, width))
    return RleMask(height=int(height), width=int(width), counts=merged["counts"].decode("ascii"))


def _as_array(mask: MaskLike) -> np.ndarray:
    if isinstance(mask, np.ndarray):
        if mask.ndim != 2:
            raise ValueError(f"expected a 2-D mask, got shape {mask.shape}")
        return mask.astype(bool)
    return decode_rle(mask)


def area(mask: MaskLike) -> int:
    """Number of pixels inside a mask (RLE without decoding, or array)."""
    if isinstance(mask, np.ndarray):
        return int(_as_array(mask).sum())
    return int(coco_mask.area(_to_compressed(mask)))


def bbox(mask: MaskLike) -> tuple[float, float, float, float] | None:
    """Tight box `(x0, y0, x1, y1)` in pixel-edge coordinates (x1, y1 exclusive); None for an empty mask."""
    array = _as_array(mask)
    rows = np.flatnonzero(array.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(array.any(axis=0))
    return (float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1))


def iou(a: MaskLike, b: MaskLike) -> float:
    """Intersection over union of two masks of one size; two empty masks have IoU 0."""
    first, second = _as_array(a), _as_array(b)
    if first.shape != second.shape:
        raise ValueError(f"iou of masks of different sizes {first.shape} and {second.shape}")
    union = int(np.logical_or(first, second).sum())
    return 0.0 if union == 0 else int(np.logical_and(first, second).sum()) / union


def resize_mask(mask: MaskLike, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of a mask to `[height, width]` booleans (pixel centres sampled)."""
    array = _as_array(mask)
    if height <= 0 or width <= 0:
        raise ValueError(f"resize_mask needs a positive size, got {height}x{width}")
    rows = np.minimum(((np.arange(height) + 0.5) * array.shape[0] / height).astype(np.int64), array.shape[0] - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * array.shape[1] / width).astype(np.int64), array.shape[1] - 1)
    return array[rows[:, None], cols[None, :]]


def resize_to_grid(mask: np.ndarray, grid_h: int, grid_w: int | None = None) -> np.ndarray:
    """Bilinear resize (align_corners=False, no antialias) of a mask `[H, W]` to `[grid_h, grid_w]` floats.

    Matches `torch.nn.functional.interpolate(mode="bilinear", align_corners=False)`, which the model's
    mask pooling uses; a cell with a value above zero counts as inside the object (PAPER.md).
    """
    grid_w = grid_h if grid_w is None else grid_w
    source = np.asarray(mask)
    if source.ndim != 2 or 0 in source.shape:
        raise ValueError(f"resize_to_grid expects a non-empty 2-D mask, got shape {source.shape}")
    if grid_h <= 0 or grid_w <= 0:
        raise ValueError(f"resize_to_grid needs a positive grid, got {grid_h}x{grid_w}")
    top, bottom, top_weight, bottom_weight = _linear_weights(source.shape[0], grid_h)
    left, right, left_weight, right_weight = _linear_weights(source.shape[1], grid_w)
    # Each cell is a weighted sum of (at most) 2x2 source pixels: only those rows, then those columns, are read,
    # in the order of the dense form `rows @ source @ cols.T` (rows first), whose other terms are exact zeros.
    # For 0/1 (and integer) masks every product is exact, so the values are the dense form's bit for bit.
    rows = top_weight[:, None] * source[top] + bottom_weight[:, None] * source[bottom]
    return rows[:, left] * left_weight + rows[:, right] * right_weight


def grid_occupancy(mask: np.ndarray, grid: int = 27) -> int:
    """Number of feature-grid cells a mask covers after `resize_to_grid` (0 means it vanishes)."""
    return int((resize_to_grid(mask, grid) > 0).sum())


@functools.lru_cache(maxsize=256)
def _linear_weights(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The two taps of 1-D linear resampling with half-pixel centres, edges clamped: per output position, the
    source indices `(low, high)` and float64 weights `(w_low, w_high)` (read-only arrays, cached per size pair).

    Computed in float32 exactly as PyTorch computes its source indices, so that which weights are zero
    (and therefore which grid cells a binary mask touches) is identical. Where the edge clamps `high` onto `low`,
    the two weights are summed onto `low` (and `w_high` is 0), as the dense interpolation matrix holds them.
    """
    scale = np.float32(in_size) / np.float32(out_size)
    # `scale * (i + 0.5) - 0.5` rounded once, as a fused multiply-add: PyTorch's AVX2/AVX-512 CPU kernels compute
    # it so (checked against torch 2.13; its no-SIMD "DEFAULT" build rounds twice; its CUDA kernel is compiled
    # with nvcc's default FMA contraction, not checked here). The float64 expression is
    # exact here (a float32 product minus 0.5), so casting it to float32 is the one rounding. Rounding twice put
    # some centres of odd size ratios (e.g. 100 -> 700) exactly on a pixel and dropped a tap PyTorch keeps.
    exact = np.float64(scale) * (np.arange(out_size, dtype=np.float64) + 0.5) - 0.5
    centres = exact.astype(np.float32)
    centres = np.maximum(centres, np.float32(0.0))
    low = np.minimum(centres.astype(np.int64), in_size - 1)
    high = np.minimum(low + 1, in_size - 1)
    frac = (centres - low.astype(np.float32)).astype(np.float32)
    low_weight = (np.float32(1.0) - frac).astype(np.float64)
    high_weight = frac.astype(np.float64)
    clamped = low == high
    low_weight[clamped] += high_weight[clamped]
    high_weight[clamped] = 0.0
    taps = (low, high, low_weight, high_weight)
    for array in taps:
        array.flags.writeable = False
    return taps
