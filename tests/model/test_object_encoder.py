"""Mask pooling and temporal token merge: the plain reference functions, and the batched forms equal to them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.masks import resize_to_grid
from model.object_encoder import (
    ObjectEncoder,
    batched_mask_pool,
    batched_temporal_token_merge,
    mask_pool,
    masks_to_grid,
    masks_to_grid_fast,
    temporal_token_merge,
)


def _random_mask(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    mask = np.zeros((height, width), dtype=bool)
    y0, x0 = rng.integers(0, height - 2), rng.integers(0, width - 2)
    y1, x1 = rng.integers(y0 + 1, height + 1), rng.integers(x0 + 1, width + 1)
    mask[y0:y1, x0:x1] = True
    return mask


@pytest.mark.parametrize("size", [(384, 384), (27, 27), (100, 61), (5, 7)])
def test_mask_pool_averages_the_cells_the_numpy_twin_marks_inside(size: tuple[int, int]) -> None:
    rng = np.random.default_rng(0)
    features = torch.randn(27, 27, 8)
    for _ in range(5):
        mask = _random_mask(rng, *size)
        inside = torch.from_numpy(resize_to_grid(mask, 27) > 0)
        assert torch.allclose(mask_pool(features, mask), features[inside].mean(0), atol=1e-6)


def test_mask_pool_of_an_empty_mask_is_a_zero_token() -> None:
    pooled = mask_pool(torch.randn(7, 7, 5), np.zeros((64, 64), dtype=bool))
    assert torch.equal(pooled, torch.zeros(5))


def test_temporal_merge_keeps_short_objects_unchanged() -> None:
    tokens = torch.randn(4, 6)
    assert temporal_token_merge(tokens, 4) is tokens
    assert torch.equal(temporal_token_merge(tokens[:1], 4), tokens[:1])


def test_temporal_merge_averages_the_most_similar_adjacent_runs() -> None:
    a, b, c, d = torch.eye(4)
    tokens = torch.stack([a, a, a, b, c, c, d])  # k = 7, u = 4: merge the 3 identical pairs
    merged = temporal_token_merge(tokens, 4)
    assert torch.allclose(merged, torch.stack([a, b, c, d]))


def test_temporal_merge_groups_chains_and_keeps_time_order() -> None:
    tokens = torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [1.0, 0.2], [1.0, 0.3]])
    merged = temporal_token_merge(tokens, 3)
    # Pairs (0,1) and (3,4) are the most similar; the middle token stays alone between them.
    expected = torch.stack([tokens[0:2].mean(0), tokens[2], tokens[3:5].mean(0)])
    assert torch.allclose(merged, expected)
    assert merged.shape == (3, 2)


@pytest.mark.parametrize("u", [1, 4])
def test_batched_merge_equals_the_plain_function(u: int) -> None:
    torch.manual_seed(0)
    lengths = [1, 3, 4, 5, 17, 32, 2]
    tokens = [torch.randn(k, 16) for k in lengths]
    tokens[2][1] = 0.0  # an empty-mask (zero) token inside an object
    flat = torch.cat(tokens)
    object_index = torch.cat([torch.full((k,), i) for i, k in enumerate(lengths)])
    merged, counts = batched_temporal_token_merge(flat, object_index, len(lengths), u)
    assert counts.tolist() == [min(k, u) for k in lengths]
    for i, object_tokens in enumerate(tokens):
        expected = temporal_token_merge(object_tokens, u)
        assert torch.allclose(merged[i, : counts[i]], expected, atol=1e-6)
        assert torch.all(merged[i, counts[i] :] == 0)


def test_batched_merge_accepts_objects_given_out_of_order() -> None:
    torch.manual_seed(1)
    first, second = torch.randn(6, 4), torch.randn(3, 4)
    flat = torch.cat([second[:1], first[:3], second[1:], first[3:]])
    object_index = torch.tensor([1, 0, 0, 0, 1, 1, 0, 0, 0])
    merged, counts = batched_temporal_token_merge(flat, object_index, 2, 4)
    assert torch.allclose(merged[0], temporal_token_merge(first, 4), atol=1e-6)
    assert torch.allclose(merged[1, :3], second, atol=1e-6)


def test_batched_mask_pool_equals_the_plain_function_with_shared_frames() -> None:
    rng = np.random.default_rng(2)
    features = torch.randn(5, 8, 8, 6)
    masks = [_random_mask(rng, 48, 40) for _ in range(11)]
    masks[3] = np.zeros((48, 40), dtype=bool)  # empty
    frame_of = torch.tensor([0, 0, 1, 4, 4, 4, 2, 0, 3, 3, 1])
    pooled = batched_mask_pool(features, torch.from_numpy(np.stack(masks)), frame_of)
    for m, mask in enumerate(masks):
        assert torch.allclose(pooled[m], mask_pool(features[frame_of[m]], mask), atol=1e-6)
    assert torch.equal(pooled[3], torch.zeros(6))


def test_object_encoder_gives_min_k_u_projected_tokens_per_object() -> None:
    torch.manual_seed(3)
    encoder = ObjectEncoder(6, 10, tokens_per_object=4)
    features = torch.randn(8, 8, 8, 6)
    masks = torch.rand(1 + 8 + 3, 8, 8) > 0.5
    frames = torch.tensor([2] + list(range(8)) + [1, 5, 7])
    objects = torch.tensor([0] + [1] * 8 + [2] * 3)
    tokens, counts = encoder(features, masks, frames, objects, 3)
    assert counts.tolist() == [1, 4, 3]
    assert tokens.shape == (8, 10)
    first = encoder.feat_linear(mask_pool(features[2], masks[0])[None])
    assert torch.allclose(tokens[0], first[0], atol=1e-5)


@pytest.mark.parametrize("size", [(384, 384), (720, 1280), (100, 61), (27, 27), (28, 28), (13, 400), (5, 7), (1, 1)])
@pytest.mark.parametrize("grid", [27, 8])
def test_the_fast_grid_resize_marks_the_same_cells_as_interpolate(size: tuple[int, int], grid: int) -> None:
    generator = torch.Generator().manual_seed(sum(size) + grid)
    masks = torch.rand(12, *size, generator=generator) > 0.97
    masks[0] = False
    masks[1, size[0] // 2, size[1] // 2] = True  # a single pixel
    assert torch.equal(masks_to_grid_fast(masks, grid), masks_to_grid(masks, grid))
