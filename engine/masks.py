"""COCO RLE masks: encode/decode of single masks and stacks, conversion, area, box, IoU, resizing.

Interchangeable with pycocotools (which does the run-length coding): `encode_rle` returns
`{"size": [h, w], "counts": str}` and `decode_rle` accepts that, bytes counts, uncompressed RLE
(list counts) and polygons (with the image size given). pycocotools trusts its input: counts that sum to less
than height x width leave uninitialised memory in the decoded mask, and more overrun it. So every RLE is
checked before pycocotools sees it (`check_rle`: a positive size, counts that are valid and cover exactly
height x width) and every polygon before it is rasterised (inside the image); a bad mask raises
`engine.errors.InvalidMaskError` (a `ValueError` with a reject reason). `validated_mask` is the one entry for
masks from outside: it converts every accepted form and also checks the size against the frame's.
"""

from __future__ import annotations

import functools
import math
import numbers
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from engine.errors import InvalidMaskError, RejectReason
from engine.types import RleMask

# pycocotools' compiled decoder asks numpy 2 for `__array__(copy=False)` on every mask it decodes; the warning is
# about its own code, says nothing about ours, and would print once per mask wherever warnings are shown.
warnings.filterwarnings("ignore", message="__array__ implementation doesn't accept a copy keyword",
                        category=DeprecationWarning)


@functools.cache
def _coco() -> Any:
    """pycocotools' mask module, imported on first use: numpy-mask work (grids, resizing) never needs it, so a
    model folder's copy of this module (`model.remote_code`) runs where pycocotools is not installed."""
    try:  # transformers' remote-code import check skips imports inside try blocks: the copy loads without it
        from pycocotools import mask
    except ImportError as exc:
        raise ImportError("coding COCO RLE masks needs pycocotools (pip install pycocotools)") from exc
    return mask


MAX_MASK_SIDE = 8192  # as engine.video.MAX_SIDE: a mask larger than any acceptable frame is refused before decoding


def encode_rle(mask: np.ndarray) -> dict[str, Any]:
    """Encode one boolean mask `[h, w]` as compressed COCO RLE with string counts."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"encode_rle expects a 2-D mask, got shape {mask.shape}")
    rle = _coco().encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def decode_rle(rle: Mapping[str, Any] | RleMask) -> np.ndarray:
    """Decode one COCO RLE (compressed or uncompressed) to a boolean array `[h, w]`."""
    return _coco().decode(_to_compressed(rle)).astype(bool)


def _to_compressed(rle: Mapping[str, Any] | RleMask) -> dict[str, Any]:
    if isinstance(rle, RleMask):
        rle = rle.to_coco()
    height, width = check_rle(rle)
    counts = rle["counts"]
    if isinstance(counts, list):  # uncompressed RLE
        return _coco().frPyObjects({"size": [height, width], "counts": [int(c) for c in counts]}, height, width)
    if isinstance(counts, str):
        counts = counts.encode("ascii")
    return {"size": [height, width], "counts": counts}


def check_rle(rle: Mapping[str, Any] | RleMask, *, max_side: int = MAX_MASK_SIDE) -> tuple[int, int]:
    """The (height, width) of a COCO RLE whose counts decode faithfully; `InvalidMaskError` otherwise.

    Checks what pycocotools does not: the size is two positive integers (at most `max_side`), the counts are
    non-negative run lengths (a list of integers, or the compressed string's valid characters) and they add up
    to exactly height x width.
    """
    height, width, _ = checked_runs(rle, max_side=max_side)
    return height, width


def checked_runs(rle: Mapping[str, Any] | RleMask, *, max_side: int = MAX_MASK_SIDE) -> tuple[int, int, np.ndarray]:
    """`check_rle`'s checks, also returning the run lengths it read (int64, background first, column-major).

    For callers that go on to use the runs (`rle_to_grid`): the counts are parsed once, not again to decode.
    """
    if isinstance(rle, RleMask):
        rle = rle.to_coco()
    if not isinstance(rle, Mapping) or "size" not in rle or "counts" not in rle:
        raise InvalidMaskError("an RLE mask needs `size` and `counts`")
    height, width = _size(rle["size"], max_side)
    counts = rle["counts"]
    if isinstance(counts, list):
        if not all(isinstance(c, numbers.Integral) and not isinstance(c, bool) for c in counts):
            raise InvalidMaskError("uncompressed RLE counts must be integers")
        negative, total = any(c < 0 for c in counts), sum(counts)
        runs = None if negative or total != height * width else np.asarray(counts, dtype=np.int64)
    elif isinstance(counts, str | bytes):
        runs = string_counts(counts)
        negative, total = bool(runs.size and runs.min() < 0), int(runs.sum())
    else:
        raise InvalidMaskError(f"RLE counts must be a list or a string, not {type(counts).__name__}")
    if negative:
        raise InvalidMaskError("RLE counts hold a negative run length")
    if total != height * width:
        raise InvalidMaskError(
            f"RLE counts cover {total} pixels, a {height}x{width} mask has {height * width}"
        )
    return height, width, runs


def _size(size: Any, max_side: int) -> tuple[int, int]:
    if not isinstance(size, Sequence) or isinstance(size, str) or len(size) != 2:
        raise InvalidMaskError(f"RLE size must be [height, width], got {size!r}")
    if not all(_integral(v) for v in size):
        raise InvalidMaskError(f"RLE size must be two integers, got {size!r}")
    height, width = int(size[0]), int(size[1])
    if height <= 0 or width <= 0 or max(height, width) > max_side:
        raise InvalidMaskError(f"RLE size {height}x{width} is not between 1 and {max_side} pixels per side")
    return height, width


def _integral(value: Any) -> bool:
    """An integer (numpy's too) or a float with an integer value (`720.0`), never a bool or a string."""
    if isinstance(value, bool):
        return False
    return isinstance(value, numbers.Integral) or (isinstance(value, float) and value.is_integer())


_MAX_CHARS_PER_COUNT = 7  # 35 bits: any run of a mask up to MAX_MASK_SIDE squared needs at most 6 characters


def string_counts(counts: str | bytes) -> np.ndarray:
    """The run lengths of COCO's compressed counts string (pycocotools' `rleFrString`, vectorised), as int64.

    Each count is 5-bit groups in characters offset by 48, bit 0x20 marking that more groups follow and bit
    0x10 of the last group the sign; from the third count on, a count is stored as the difference to the count
    two before it. Characters outside that alphabet, a count cut off mid-way or one of more than 35 bits raise
    `InvalidMaskError`.
    """
    try:
        data = counts.encode("ascii") if isinstance(counts, str) else bytes(counts)
    except UnicodeEncodeError as exc:
        raise InvalidMaskError("compressed RLE counts hold characters outside COCO's alphabet") from exc
    if not data:
        return np.zeros(0, dtype=np.int64)
    chars = np.frombuffer(data, dtype=np.uint8).astype(np.int64) - 48
    if chars.min() < 0 or chars.max() > 63:
        raise InvalidMaskError("compressed RLE counts hold characters outside COCO's alphabet")
    more = (chars & 0x20) != 0
    if more[-1]:
        raise InvalidMaskError("compressed RLE counts end in the middle of a count")
    ends = np.flatnonzero(~more)
    starts = np.concatenate(([0], ends[:-1] + 1))
    lengths = ends - starts + 1
    if lengths.max() > _MAX_CHARS_PER_COUNT:
        raise InvalidMaskError("compressed RLE counts hold an absurdly large count")
    shift = 5 * (np.arange(chars.size) - np.repeat(starts, lengths))
    values = np.add.reduceat((chars & 0x1F) << shift, starts)
    negative = (chars[ends] & 0x10) != 0
    values[negative] |= np.left_shift(np.int64(-1), 5 * lengths[negative])
    runs = values.copy()
    runs[1::2] = np.cumsum(values[1::2])  # count j (j > 2) is stored as count j - 2 plus a difference
    runs[2::2] = np.cumsum(values[2::2])
    return runs


def validated_mask(
    value: Any, *, height: int | None = None, width: int | None = None, max_side: int = MAX_MASK_SIDE
) -> RleMask:
    """A mask from outside (compressed or uncompressed RLE, `{"segmentation": ...}`, polygons, `RleMask`) as an
    `RleMask`, or `InvalidMaskError` with its reason.

    RLE counts must cover exactly height x width, polygons must lie inside the image (they need `height` and
    `width`), and with `height`/`width` given (the video's frame size) an RLE of another size is a
    `mask_size_mismatch`.
    """
    if isinstance(value, Mapping) and "segmentation" in value:
        value = value["segmentation"]
    if isinstance(value, RleMask | Mapping):
        mask_h, mask_w = check_rle(value, max_side=max_side)
        if height is not None and width is not None and (mask_h, mask_w) != (int(height), int(width)):
            raise InvalidMaskError(
                f"mask is {mask_h}x{mask_w}, the frames are {int(height)}x{int(width)} (height x width)",
                reason=RejectReason.MASK_SIZE_MISMATCH,
            )
        return to_rle_mask(value)
    if isinstance(value, list) and value:
        if height is None or width is None:
            raise InvalidMaskError("a polygon mask needs the image's height and width")
        rings = value if all(isinstance(ring, list) for ring in value) else [value]
        return _polygons_to_rle(rings, int(height), int(width))
    raise InvalidMaskError(f"a mask must be an RLE mapping or a list of polygons, not {type(value).__name__}")


MaskLike = Mapping[str, Any] | RleMask | np.ndarray
"""Anything the helpers below take as one mask: compressed or uncompressed COCO RLE, an `RleMask`, or an array."""


def encode_rle_stack(masks: np.ndarray) -> list[dict[str, Any]]:
    """Encode a stack of boolean masks `[n, h, w]` as a list of compressed COCO RLE dicts (string counts)."""
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"encode_rle_stack expects masks [n, h, w], got shape {masks.shape}")
    if masks.shape[0] == 0:
        return []
    encoded = _coco().encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
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
    _size([height, width], MAX_MASK_SIDE)
    rings = [_ring(ring, height, width) for ring in polygons if len(ring) >= 6]
    if not rings:
        return RleMask.from_coco(encode_rle(np.zeros((height, width), dtype=bool)))
    merged = _coco().merge(_coco().frPyObjects(rings, height, width))
    return RleMask(height=int(height), width=int(width), counts=merged["counts"].decode("ascii"))


def _ring(ring: Sequence[float], height: int, width: int) -> list[float]:
    """One polygon ring as floats, checked: pairs of finite coordinates inside the image (edges included)."""
    try:
        values = [float(v) for v in ring]
    except (TypeError, ValueError) as exc:
        raise InvalidMaskError(f"polygon coordinates must be numbers: {exc}") from exc
    if len(values) % 2:
        raise InvalidMaskError(f"a polygon ring has an odd number of coordinates ({len(values)})")
    xs, ys = values[0::2], values[1::2]
    if not all(math.isfinite(v) for v in values):
        raise InvalidMaskError("polygon coordinates must be finite")
    if min(xs) < 0 or max(xs) > width or min(ys) < 0 or max(ys) > height:
        raise InvalidMaskError(
            f"polygon spans x {min(xs):g}..{max(xs):g}, y {min(ys):g}..{max(ys):g}: outside the {width}x{height} image"
        )
    return values


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
    return int(_coco().area(_to_compressed(mask)))


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two `(x0, y0, x1, y1)` boxes."""
    inter_w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    inter_h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    intersection = inter_w * inter_h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - intersection
    return intersection / union if union > 0 else 0.0


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


def rle_to_grid(rle: Mapping[str, Any] | RleMask, grid_h: int, grid_w: int | None = None) -> np.ndarray:
    """`resize_to_grid(decode_rle(rle), grid_h, grid_w)` bit for bit, without decoding the mask.

    The bilinear grid reads at most 2x2 source pixels per cell (`_linear_weights`), so only those are looked up
    in the runs (a pixel's value is the parity of the run holding its column-major index) and combined in the
    same order as `resize_to_grid`, giving the same float64 values. The RLE is checked as `decode_rle` checks it
    (`checked_runs`: the same `InvalidMaskError`s); the cost follows the grid and the runs, not height x width.
    """
    grid_w = grid_h if grid_w is None else grid_w
    if grid_h <= 0 or grid_w <= 0:
        raise ValueError(f"rle_to_grid needs a positive grid, got {grid_h}x{grid_w}")
    height, width, runs = checked_runs(rle)
    top, bottom, top_weight, bottom_weight = _linear_weights(height, grid_h)
    left, right, left_weight, right_weight = _linear_weights(width, grid_w)
    ends = np.cumsum(runs)
    rows = np.concatenate((top, bottom))  # one lookup for all four tap pairs
    columns = np.concatenate((left, right))
    inside = np.searchsorted(ends, columns[None, :] * height + rows[:, None], side="right") & 1
    pixels = inside.astype(np.float64)
    top_left, top_right = pixels[:grid_h, :grid_w], pixels[:grid_h, grid_w:]
    bottom_left, bottom_right = pixels[grid_h:, :grid_w], pixels[grid_h:, grid_w:]
    top_weight, bottom_weight = top_weight[:, None], bottom_weight[:, None]
    # resize_to_grid's order: rows = tw * src[top] + bw * src[bottom], then rows[:, left] * lw + rows[:, right] * rw.
    return ((top_weight * top_left + bottom_weight * bottom_left) * left_weight
            + (top_weight * top_right + bottom_weight * bottom_right) * right_weight)


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
