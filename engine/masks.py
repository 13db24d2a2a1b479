"""COCO RLE masks: encode/decode of single masks and stacks, area, box, IoU, resizing to a feature grid.

Interchangeable with pycocotools (which does the run-length coding): `encode_rle` returns
`{"size": [h, w], "counts": str}` and `decode_rle` accepts that, bytes counts, uncompressed RLE
(list counts) and polygons (with the image size given).
"""

from __future__ import annotations

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


def resize_to_grid(mask: np.ndarray, grid_h: int, grid_w: int | None = None) -> np.ndarray:
    """Bilinear resize (align_corners=False, no antialias) of a mask `[H, W]` to `[grid_h, grid_w]` floats.

    Matches `torch.nn.functional.interpolate(mode="bilinear", align_corners=False)`, which the model's
    mask pooling uses; a cell with a value above zero counts as inside the object (PAPER.md).
    """
    grid_w = grid_h if grid_w is None else grid_w
    source = np.asarray(mask, dtype=np.float64)
    rows = _linear_weights(source.shape[0], grid_h)
    cols = _linear_weights(source.shape[1], grid_w)
    return rows @ source @ cols.T


def grid_occupancy(mask: np.ndarray, grid: int = 27) -> int:
    """Number of feature-grid cells a mask covers after `resize_to_grid` (0 means it vanishes)."""
    return int((resize_to_grid(mask, grid) > 0).sum())


def _linear_weights(in_size: int, out_size: int) -> np.ndarray:
    """Interpolation matrix `[out, in]` of 1-D linear resampling with half-pixel centres, edges clamped.

    Computed in float32 exactly as PyTorch computes its source indices, so that which weights are zero
    (and therefore which grid cells a binary mask touches) is identical.
    """
    scale = np.float32(in_size) / np.float32(out_size)
    centres = scale * (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5)
    centres = np.maximum(centres, np.float32(0.0))
    low = np.minimum(centres.astype(np.int64), in_size - 1)
    high = np.minimum(low + 1, in_size - 1)
    frac = (centres - low.astype(np.float32)).astype(np.float32)
    weights = np.zeros((out_size, in_size), dtype=np.float64)
    np.add.at(weights, (np.arange(out_size), low), (np.float32(1.0) - frac).astype(np.float64))
    np.add.at(weights, (np.arange(out_size), high), frac.astype(np.float64))
    return weights
