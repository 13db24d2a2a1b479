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
