"""engine.masks: RLE round trips with pycocotools, conversions, area/bbox/iou, nearest and grid resizing."""

from __future__ import annotations

import numpy as np
import pytest
from pycocotools import mask as coco_mask

from engine.masks import (
    area,
    bbox,
    decode_rle,
    decode_rle_stack,
    encode_rle,
    encode_rle_stack,
    grid_occupancy,
    iou,
    resize_mask,
    resize_to_grid,
    rle_to_grid,
    to_rle_mask,
)
from engine.types import RleMask


def _random_masks(seed: int, n: int = 4, height: int = 37, width: int = 53) -> np.ndarray:
    return np.random.default_rng(seed).random((n, height, width)) > 0.6


def test_stack_round_trip_matches_pycocotools() -> None:
    masks = _random_masks(0)
    rles = encode_rle_stack(masks)
    assert len(rles) == 4 and all(isinstance(r["counts"], str) for r in rles)
    assert np.array_equal(decode_rle_stack(rles), masks)
    for mask, rle in zip(masks, rles, strict=True):
        reference = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
        assert rle["counts"] == reference["counts"].decode("ascii") == encode_rle(mask)["counts"]
    assert encode_rle_stack(np.zeros((0, 4, 4), bool)) == []
    with pytest.raises(ValueError):
        encode_rle_stack(masks[0])


def test_to_rle_mask_accepts_every_form() -> None:
    mask = _random_masks(1, n=1)[0]
    compressed = encode_rle(mask)
    expected = RleMask.from_coco(compressed)
    assert to_rle_mask(mask) == expected
    assert to_rle_mask(compressed) == expected
    assert to_rle_mask({"size": compressed["size"], "counts": compressed["counts"].encode()}) == expected
    assert to_rle_mask(expected) is expected
    uncompressed = _uncompressed(mask)
    assert to_rle_mask(uncompressed) == expected
    assert np.array_equal(decode_rle(uncompressed), mask)
    with pytest.raises(TypeError):
        to_rle_mask(3.0)  # type: ignore[arg-type]


def _uncompressed(mask: np.ndarray) -> dict:
    """COCO uncompressed RLE: run lengths of the column-major flattening, starting with zeros."""
    flat = mask.flatten(order="F").astype(np.int8)
    changes = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    counts = np.diff(np.concatenate([[0], changes])).tolist()
    return {"size": list(mask.shape), "counts": counts}


def test_polygons_become_the_filled_region() -> None:
    square = [[2.0, 2.0, 8.0, 2.0, 8.0, 8.0, 2.0, 8.0]]
    rle = to_rle_mask(square, height=12, width=10)
    assert (rle.height, rle.width) == (12, 10)
    decoded = decode_rle(rle)
    assert decoded[3:7, 3:7].all() and not decoded[10:, :].any() and not decoded[:, 9:].any()
    two = to_rle_mask(square + [[0.0, 10.0, 3.0, 10.0, 3.0, 12.0, 0.0, 12.0]], height=12, width=10)
    assert area(two) > area(rle)
    with pytest.raises(ValueError):
        to_rle_mask(square)


def test_area_bbox_iou() -> None:
    mask = np.zeros((10, 20), dtype=bool)
    mask[2:5, 3:9] = True
    rle = encode_rle(mask)
    assert area(mask) == area(rle) == area(RleMask.from_coco(rle)) == 18
    assert bbox(mask) == bbox(rle) == (3.0, 2.0, 9.0, 5.0)
    assert bbox(np.zeros((4, 4), bool)) is None
    other = np.zeros_like(mask)
    other[2:5, 6:12] = True  # overlaps 9 of 18 + 18 - 9 = 27 pixels
    assert iou(mask, other) == pytest.approx(9 / 27)
    assert iou(rle, mask) == 1.0
    assert iou(np.zeros((3, 3), bool), np.zeros((3, 3), bool)) == 0.0
    with pytest.raises(ValueError):
        iou(mask, np.zeros((3, 3), bool))


def test_resize_mask_nearest() -> None:
    mask = np.zeros((4, 4), dtype=bool)
    mask[:2, :2] = True
    up = resize_mask(mask, 8, 8)
    assert up.shape == (8, 8) and up[:4, :4].all() and not up[4:].any() and not up[:, 4:].any()
    assert np.array_equal(resize_mask(up, 4, 4), mask)
    assert resize_mask(encode_rle(mask), 2, 2).tolist() == [[True, False], [False, False]]


@pytest.mark.parametrize("grid", [27, 13])
def test_resize_to_grid_positivity_matches_torch_bilinear(grid: int) -> None:
    torch = pytest.importorskip("torch")
    masks = _random_masks(2, n=3, height=90, width=160) & (np.random.default_rng(3).random((3, 90, 160)) > 0.97)
    for mask in masks:
        ours = resize_to_grid(mask, grid) > 0
        theirs = (
            torch.nn.functional.interpolate(
                torch.from_numpy(mask.astype(np.float32))[None, None],
                size=(grid, grid),
                mode="bilinear",
                align_corners=False,
            )[0, 0].numpy()
            > 0
        )
        assert np.array_equal(ours, theirs)
        assert grid_occupancy(mask, grid) == int(theirs.sum())


def _torch_bilinear(torch, array: np.ndarray, grid_h: int, grid_w: int) -> np.ndarray:
    source = torch.from_numpy(np.asarray(array, dtype=np.float32))[None, None]
    resized = torch.nn.functional.interpolate(source, size=(grid_h, grid_w), mode="bilinear", align_corners=False)
    return resized[0, 0].double().numpy()


def _torch_rounds_centres_once(torch) -> bool:
    # PyTorch's no-SIMD "DEFAULT" CPU kernel rounds its source centres twice (no fused multiply-add), unlike its
    # AVX2/AVX-512 kernels (and ours); on that build only the values, not which cells are exactly 0, can agree.
    return torch.backends.cpu.get_cpu_capability() != "DEFAULT"


@pytest.mark.parametrize(
    ("height", "width", "grid_h", "grid_w"),
    [
        (1, 50, 27, 27),  # 1 x N mask
        (50, 1, 27, 27),  # N x 1 mask
        (1, 1, 5, 3),
        (90, 160, 27, 27),  # downsampling
        (720, 1280, 27, 27),
        (405, 99, 27, 13),  # odd size ratios: centres land near whole pixels
        (8, 5, 27, 27),  # grid larger than the mask (upsampling)
        (10, 100, 500, 700),  # upsampling at an odd ratio: 100 -> 700 puts centres within float32 of pixels
        (27, 27, 27, 27),  # same size
        (33, 7, 1, 1),
        (7, 33, 40, 1),
    ],
)
def test_resize_to_grid_equals_torch_bilinear(height: int, width: int, grid_h: int, grid_w: int) -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(height * 1000 + width)
    for density in (0.5, 0.03):
        mask = rng.random((height, width)) < density
        expected = _torch_bilinear(torch, mask, grid_h, grid_w)
        for given in (mask, mask.astype(np.uint8), mask.astype(np.float32)):
            ours = resize_to_grid(given, grid_h, grid_w)
            assert ours.shape == (grid_h, grid_w) and ours.dtype == np.float64
            np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-7)
            if _torch_rounds_centres_once(torch):
                assert np.array_equal(ours > 0, expected > 0)
    values = rng.integers(0, 256, (height, width), dtype=np.uint8)  # not only 0/1 masks
    np.testing.assert_allclose(resize_to_grid(values, grid_h, grid_w), _torch_bilinear(torch, values, grid_h, grid_w),
                               rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("size", [1, 2, 26, 27, 99, 100, 384, 1000])
def test_resize_to_grid_of_an_identity_is_torchs_row_weights(size: int) -> None:
    # storage.samples reads the grid support of a mask size off resize_to_grid(np.eye(size), grid, size).
    torch = pytest.importorskip("torch")
    if not _torch_rounds_centres_once(torch):
        pytest.skip("this PyTorch CPU build rounds bilinear source centres twice")
    for grid in (1, 13, 27, 700):
        ours = resize_to_grid(np.eye(size), grid, size)
        assert np.array_equal(ours.astype(np.float32), _torch_bilinear(torch, np.eye(size), grid, size))


def test_resize_to_grid_rejects_what_is_not_a_mask_or_a_grid() -> None:
    for bad in (np.zeros((2, 3, 4)), np.zeros(5), np.zeros((0, 4))):
        with pytest.raises(ValueError):
            resize_to_grid(bad, 27)
    with pytest.raises(ValueError):
        resize_to_grid(np.ones((4, 4)), 0)


# ---------------------------------------------------------------- RLE and polygon checks (issue 15)
# pycocotools decodes whatever it is given: counts short of height x width leave uninitialised memory in the
# mask (a `[0, 50]` mask for 720x1280 came out with ~115,000 pixels, differently per run), longer counts overrun
# it. Every RLE is checked before pycocotools sees it.


def test_compressed_counts_parse_as_pycocotools_writes_them() -> None:
    from engine.masks import string_counts

    rng = np.random.default_rng(5)
    for case in range(60):
        height, width = (int(v) for v in rng.integers(1, 70, 2))
        mask = rng.random((height, width)) > rng.random()
        if case % 6 == 0:
            mask[:] = case % 12 == 0  # all empty / all full
        reference = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))  # the reference writer
        assert string_counts(reference["counts"]).tolist() == _uncompressed(mask)["counts"]


@pytest.mark.parametrize(
    "rle",
    [
        {"size": [720, 1280], "counts": [0, 50]},  # the reported case: 50 of 921,600 pixels
        {"size": [4, 4], "counts": [10, 10]},  # more pixels than the mask has
        {"size": [4, 4], "counts": [20, -4]},  # a negative run
        {"size": [4, 4], "counts": [8.0, 8.0]},  # not integers
        {"size": [8, 8], "counts": encode_rle(np.ones((4, 4), bool))["counts"]},  # compressed, for a 4x4 mask
        {"size": [4, 4], "counts": "ab\x7f"},  # outside COCO's alphabet
        {"size": [4, 4], "counts": "0g"},  # ends in the middle of a count
        {"size": [4, 4], "counts": "é4"},  # not ASCII
        {"size": [0, 4], "counts": []},
        {"size": [-4, -4], "counts": [16]},
        {"size": [100_000, 100_000], "counts": [10**10]},
        {"size": ["4", 4], "counts": [16]},
        {"size": [4], "counts": [4]},
        {"counts": [16]},
    ],
)
def test_rle_that_does_not_cover_its_size_is_refused_before_decoding(rle: dict) -> None:
    from engine.errors import InvalidMaskError, RejectReason
    from engine.masks import check_rle, validated_mask

    for use in (check_rle, decode_rle, area, to_rle_mask, validated_mask, lambda value: rle_to_grid(value, 27)):
        with pytest.raises(InvalidMaskError) as caught:
            use(rle)
        assert caught.value.reason == RejectReason.INVALID_MASK
        assert isinstance(caught.value, ValueError)  # callers catching ValueError keep working


def test_valid_rle_passes_every_form_and_keeps_its_pixels() -> None:
    from engine.masks import check_rle, validated_mask

    mask = _random_masks(9, n=1, height=30, width=41)[0]
    compressed = encode_rle(mask)
    for form in (compressed, _uncompressed(mask), {"segmentation": compressed}, RleMask.from_coco(compressed)):
        assert validated_mask(form, height=30, width=41) == RleMask.from_coco(compressed)
    assert check_rle(compressed) == (30, 41)
    assert np.array_equal(decode_rle(_uncompressed(mask)), mask)
    empty = {"size": [3, 5], "counts": [15]}  # all background: one run
    assert area(empty) == 0 and check_rle(empty) == (3, 5)


def test_a_mask_of_another_size_than_the_frames_is_a_size_mismatch() -> None:
    from engine.errors import InvalidMaskError, RejectReason
    from engine.masks import validated_mask

    compressed = encode_rle(np.ones((48, 64), bool))
    with pytest.raises(InvalidMaskError) as caught:
        validated_mask(compressed, height=72, width=96)
    assert caught.value.reason == RejectReason.MASK_SIZE_MISMATCH


@pytest.mark.parametrize(
    "polygon",
    [
        [[2.0, 2.0, 80.0, 2.0, 8.0, 8.0]],  # x beyond the width
        [[2.0, -1.0, 8.0, 2.0, 8.0, 8.0]],  # y above the image
        [[2.0, 2.0, 8.0, 2.0, 8.0, float("nan")]],
        [[2.0, 2.0, 8.0, 2.0, 8.0, 8.0, 1.0]],  # odd number of coordinates
        [[2.0, 2.0, "x", 2.0, 8.0, 8.0]],
    ],
)
def test_polygon_outside_the_image_or_malformed_is_refused(polygon: list) -> None:
    from engine.errors import InvalidMaskError, RejectReason
    from engine.masks import validated_mask

    for use in (lambda p: to_rle_mask(p, height=12, width=10), lambda p: validated_mask(p, height=12, width=10)):
        with pytest.raises(InvalidMaskError) as caught:
            use(polygon)
        assert caught.value.reason == RejectReason.INVALID_MASK
    edge = [[0.0, 0.0, 10.0, 0.0, 10.0, 12.0, 0.0, 12.0]]  # the image's own edges are inside
    assert area(validated_mask(edge, height=12, width=10)) == 120


def _random_rle_cases(seed: int, count: int):
    """Random masks of odd and even sizes (empty, full, noise, thin stripes, single pixels) in every RLE form."""
    rng = np.random.default_rng(seed)
    for case in range(count):
        height, width = (int(v) for v in rng.integers(1, 97, 2))
        kind = case % 5
        if kind == 0:
            mask = np.full((height, width), case % 10 == 0)  # all empty / all full
        elif kind == 1:
            mask = rng.random((height, width)) < rng.random()
        elif kind == 2:  # a thin stripe: most grid taps miss it
            mask = np.zeros((height, width), dtype=bool)
            mask[int(rng.integers(0, height)), :] = True
        elif kind == 3:
            mask = np.zeros((height, width), dtype=bool)
            mask[int(rng.integers(0, height)), int(rng.integers(0, width))] = True
        else:
            mask = np.zeros((height, width), dtype=bool)
            top, left = int(rng.integers(0, height)), int(rng.integers(0, width))
            mask[top : top + int(rng.integers(1, height + 1)), left : left + int(rng.integers(1, width + 1))] = True
        compressed = encode_rle(mask)
        form = (compressed, _uncompressed(mask), RleMask.from_coco(compressed),
                {"size": compressed["size"], "counts": compressed["counts"].encode("ascii")})[case % 4]
        yield mask, form


@pytest.mark.parametrize("grid", [(27, 27), (1, 1), (7, 5), (24, 31), (120, 97)])
def test_rle_to_grid_is_resize_to_grid_of_the_decoded_mask_bit_for_bit(grid: tuple[int, int]) -> None:
    for mask, rle in _random_rle_cases(sum(grid), 150):
        ours = rle_to_grid(rle, *grid)
        reference = resize_to_grid(decode_rle(rle), *grid)
        assert np.array_equal(decode_rle(rle), mask)
        assert ours.dtype == reference.dtype == np.float64 and ours.shape == grid
        assert np.array_equal(ours.view(np.int64), reference.view(np.int64))  # the same bits, not just close
        assert np.array_equal(ours > 0, reference > 0)


def test_rle_to_grid_of_source_sized_masks_is_resize_to_grid_bit_for_bit() -> None:
    # Masks at video sizes (what the export stores), including the clamped last row and column.
    for height, width in ((480, 640), (720, 1280), (383, 511)):
        mask = np.zeros((height, width), dtype=bool)
        mask[height // 5 : height // 2, width // 3 : width // 3 + 37] = True
        mask[-1, -1] = True
        ours, reference = rle_to_grid(encode_rle(mask), 27), resize_to_grid(mask, 27)
        assert np.array_equal(ours.view(np.int64), reference.view(np.int64))


def test_rle_to_grid_refuses_a_grid_that_is_not_positive() -> None:
    with pytest.raises(ValueError, match="positive grid"):
        rle_to_grid(encode_rle(np.ones((4, 4), bool)), 0)
