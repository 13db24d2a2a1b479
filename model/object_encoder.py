"""The spatial-temporal object encoder: mask pooling on the vision grid, temporal token merge, MLP projector.

Two forms of the same maths. The plain functions `mask_pool(features, mask)` and `temporal_token_merge(tokens, u)`
handle one mask / one object and are the readable reference (PAPER.md "spatial token extractor" and "temporal
token merge"; the merge keeps the release's tie rule, so an object can get fewer than u tokens).
`batched_mask_pool` and `batched_temporal_token_merge` do many objects x many frames in one call with padding and
masks (no Python loop over samples or tokens); tests hold them equal to the plain functions.
`ObjectEncoder` chains the batched forms with the projector `feat_linear` (Linear 1152 -> 3584, GELU, Linear
3584 -> 3584 at 7b: 16,980,992 parameters, the released `model.region_encoder.feat_linear` keys).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def _as_float_mask(mask: Any, device: torch.device) -> torch.Tensor:
    if isinstance(mask, np.ndarray):
        mask = torch.from_numpy(np.ascontiguousarray(mask))
    return mask.to(device=device, dtype=torch.float32)


def masks_to_grid(masks: torch.Tensor | np.ndarray, grid_h: int, grid_w: int | None = None) -> torch.Tensor:
    """Boolean grid masks `[..., grid_h, grid_w]` from masks `[..., H, W]` of any resolution.

    Bilinear resize with align_corners=False (no antialias), then every cell above zero is inside (PAPER.md).
    """
    grid_w = grid_h if grid_w is None else grid_w
    source = _as_float_mask(masks, torch.device("cpu") if isinstance(masks, np.ndarray) else masks.device)
    if tuple(source.shape[-2:]) == (grid_h, grid_w):
        return source > 0
    lead = source.shape[:-2]
    flat = source.reshape(-1, 1, *source.shape[-2:])
    resized = F.interpolate(flat, size=(grid_h, grid_w), mode="bilinear", align_corners=False)
    return (resized > 0).reshape(*lead, grid_h, grid_w)


def _bilinear_taps(in_size: int, out_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """For each output cell: its two source indices `[out, 2]` and whether each has a non-zero weight.

    Same float32 arithmetic as PyTorch's bilinear kernel (align_corners=False): source centre
    max(scale * (i + 0.5) - 0.5, 0), low = floor, high = min(low + 1, in - 1), weights 1 - frac and frac.
    """
    scale = torch.tensor(in_size, dtype=torch.float32) / torch.tensor(out_size, dtype=torch.float32)
    centres = (scale * (torch.arange(out_size, dtype=torch.float32) + 0.5) - 0.5).clamp(min=0.0)
    low = centres.to(torch.long).clamp(max=in_size - 1)
    high = (low + 1).clamp(max=in_size - 1)
    frac = centres - low.to(torch.float32)
    taps = torch.stack([low, high], dim=1).to(device)
    weighted = torch.stack([(1.0 - frac) > 0, frac > 0], dim=1).to(device)
    return taps, weighted


def masks_to_grid_fast(masks: torch.Tensor | np.ndarray, grid_h: int, grid_w: int | None = None) -> torch.Tensor:
    """`masks_to_grid` without resizing whole masks: exactly the same cells, much less work on large masks.

    A downscaling bilinear resize without antialias reads only 2 x 2 source pixels per output cell, and a cell of
    a binary mask is above zero exactly when one of those pixels with a non-zero weight is set. So only those
    pixels are gathered (as booleans), never a float copy of the full-resolution masks.
    """
    grid_w = grid_h if grid_w is None else grid_w
    if isinstance(masks, np.ndarray):
        masks = torch.from_numpy(np.ascontiguousarray(masks))
    masks = masks if masks.dtype == torch.bool else masks > 0
    height, width = masks.shape[-2:]
    if height < grid_h or width < grid_w:  # upscaling reads more taps per cell: take the reference path
        return masks_to_grid(masks, grid_h, grid_w)
    rows, row_weighted = _bilinear_taps(height, grid_h, masks.device)
    cols, col_weighted = _bilinear_taps(width, grid_w, masks.device)
    lead = masks.shape[:-2]
    flat = masks.reshape(-1, height, width)
    picked = flat[:, rows.flatten()][:, :, cols.flatten()].reshape(-1, grid_h, 2, grid_w, 2)
    usable = row_weighted[None, :, :, None, None] & col_weighted[None, None, None, :, :]
    return (picked & usable).any(dim=4).any(dim=2).reshape(*lead, grid_h, grid_w)


# ---------------------------------------------------------------- plain reference functions


def mask_pool(features: torch.Tensor, mask: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Mean of `features [h, w, d]` inside `mask [H, W]` resized to the grid; an empty mask gives zeros `[d]`."""
    grid_h, grid_w, depth = features.shape
    inside = masks_to_grid(_as_float_mask(mask, features.device), grid_h, grid_w)
    if not bool(inside.any()):
        return features.new_zeros(depth)
    return features[inside].mean(dim=0)


def adjacent_similarity(tokens: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of each adjacent pair along dim -2, computed as the release does (`layer.py:token_merge`).

    `F.normalize` then a sum of products: a zero (empty-mask) token has similarity 0 with every token.
    """
    return (F.normalize(tokens[..., :-1, :], p=2, dim=-1) * F.normalize(tokens[..., 1:, :], p=2, dim=-1)).sum(-1)


def temporal_token_merge(tokens: torch.Tensor, u: int) -> torch.Tensor:
    """Merge one object's tokens `[k, d]` (in the order given) into at most `u` tokens, as the release does.

    k <= u returns the input unchanged. Otherwise the threshold is the (k-u)-th largest adjacent similarity and
    EVERY adjacent pair at or above it is merged (the release's `token_merge`); chains of merged pairs form one
    group and each group is averaged. Ties (identical tokens, or several empty masks whose zero tokens have
    similarity 0) can therefore merge more than k-u pairs and leave fewer than `u` tokens.
    """
    count = tokens.shape[0]
    if count <= u:
        return tokens
    similarity = adjacent_similarity(tokens)
    threshold = torch.topk(similarity, count - u).values[-1]
    merged = similarity >= threshold
    # A token opens a new group unless the pair joining it to its predecessor was merged.
    group = torch.cat([merged.new_zeros(1, dtype=torch.long), torch.cumsum(~merged, dim=0)])
    groups = int(group[-1]) + 1
    sums = tokens.new_zeros(groups, tokens.shape[1]).index_add_(0, group, tokens)
    sizes = torch.bincount(group, minlength=groups).to(tokens.dtype)
    return sums / sizes[:, None]


# ---------------------------------------------------------------- batched, vectorised forms


def batched_mask_pool(
    frame_features: torch.Tensor, masks: torch.Tensor, mask_frame_index: torch.Tensor | None = None
) -> torch.Tensor:
    """Pool many masks at once: `[M, d]` means of frame features inside each mask (zeros for empty masks).

    `frame_features` is `[F, h, w, d]`; `masks` is `[M, H, W]` (any resolution; resized to the grid like
    `mask_pool`); `mask_frame_index[m]` says which frame mask m lies on (default: mask m on frame m). Masks are
    bucketed by frame and pooled with one batched matmul, so features are never copied per mask.
    """
    num_frames, grid_h, grid_w, depth = frame_features.shape
    num_masks = masks.shape[0]
    if mask_frame_index is None:
        mask_frame_index = torch.arange(num_masks, device=frame_features.device)
    if num_masks == 0:
        return frame_features.new_zeros(0, depth)
    inside = masks_to_grid_fast(masks, grid_h, grid_w).to(frame_features.device)
    weights = inside.reshape(num_masks, grid_h * grid_w).to(frame_features.dtype)
    weights = weights / weights.sum(dim=1, keepdim=True).clamp(min=1)
    frame_index = mask_frame_index.to(frame_features.device, torch.long)
    order = torch.argsort(frame_index, stable=True)
    sorted_frames = frame_index[order]
    per_frame = torch.bincount(sorted_frames, minlength=num_frames)
    starts = torch.cumsum(per_frame, dim=0) - per_frame
    slot = torch.arange(num_masks, device=frame_index.device) - starts[sorted_frames]
    bucket = weights.new_zeros(num_frames, int(per_frame.max()), grid_h * grid_w)
    bucket[sorted_frames, slot] = weights[order]
    pooled_by_frame = torch.bmm(bucket, frame_features.reshape(num_frames, grid_h * grid_w, depth))
    pooled = frame_features.new_empty(num_masks, depth)
    pooled[order] = pooled_by_frame[sorted_frames, slot]
    return pooled


def batched_temporal_token_merge(
    tokens: torch.Tensor, object_index: torch.Tensor, num_objects: int, u: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """`temporal_token_merge` of many objects at once (no loop over objects or tokens).

    `tokens [M, d]` are the pooled tokens of all objects; `object_index [M]` names each token's object (0 ..
    num_objects-1); within an object, tokens are in the order they were given. Returns `merged [num_objects, u, d]`
    (rows past an object's count are zeros) and `counts [num_objects]`: min(k, u), or fewer where ties merged more
    pairs (the release's rule, see `temporal_token_merge`).
    """
    depth = tokens.shape[1]
    device = tokens.device
    object_index = object_index.to(device, torch.long)
    order = torch.argsort(object_index, stable=True)
    tokens, object_index = tokens[order], object_index[order]
    lengths = torch.bincount(object_index, minlength=num_objects)
    longest = max(int(lengths.max()) if lengths.numel() else 0, 1)
    starts = torch.cumsum(lengths, dim=0) - lengths
    position = torch.arange(tokens.shape[0], device=device) - starts[object_index]
    padded = tokens.new_zeros(num_objects, longest, depth)
    padded[object_index, position] = tokens

    merges = (lengths - u).clamp(min=0)
    if longest > u:
        similarity = adjacent_similarity(padded)
        real_pair = torch.arange(longest - 1, device=device)[None, :] < (lengths - 1)[:, None]
        similarity = similarity.masked_fill(~real_pair, float("-inf"))
        ranked = torch.sort(similarity, dim=1, descending=True).values
        threshold = ranked.gather(1, (merges - 1).clamp(min=0)[:, None])
        merged = (similarity >= threshold) & real_pair & (merges > 0)[:, None]
    else:
        merged = torch.zeros(num_objects, longest - 1, dtype=torch.bool, device=device)
    group = torch.cat([merged.new_zeros(num_objects, 1, dtype=torch.long), torch.cumsum(~merged, dim=1)], dim=1)
    counts = torch.where(lengths > 0, lengths - merged.sum(dim=1), lengths)

    real_token = torch.arange(longest, device=device)[None, :] < lengths[:, None]
    target = (torch.arange(num_objects, device=device)[:, None] * u + group)[real_token]
    sums = tokens.new_zeros(num_objects * u, depth).index_add_(0, target, padded[real_token])
    sizes = torch.bincount(target, minlength=num_objects * u).to(tokens.dtype)
    merged_tokens = (sums / sizes.clamp(min=1)[:, None]).reshape(num_objects, u, depth)
    return merged_tokens, counts


class ObjectEncoder(nn.Module):
    """Mask pooling + temporal merge + projector; returns the object tokens that replace `<region>` slots."""

    def __init__(self, vision_hidden_size: int, hidden_size: int, *, tokens_per_object: int = 4, depth: int = 2):
        super().__init__()
        self.tokens_per_object = tokens_per_object
        layers: list[nn.Module] = [nn.Linear(vision_hidden_size, hidden_size)]
        for _ in range(1, depth):
            layers += [nn.GELU(), nn.Linear(hidden_size, hidden_size)]
        self.feat_linear = nn.Sequential(*layers)

    def forward(
        self,
        frame_features: torch.Tensor,
        masks: torch.Tensor,
        mask_frame_index: torch.Tensor,
        mask_object_index: torch.Tensor,
        num_objects: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Object tokens `[sum(counts), hidden]` in object order (each object's tokens in order) and counts.

        Pooling and the merge run in float32 whatever the model's dtype, as in the release (its masks are float32
        and it casts the features to them); the merged tokens return to the features' dtype before the projector.
        """
        pooled = batched_mask_pool(frame_features.float(), masks, mask_frame_index)
        merged, counts = batched_temporal_token_merge(pooled, mask_object_index, num_objects, self.tokens_per_object)
        valid = torch.arange(self.tokens_per_object, device=counts.device)[None, :] < counts[:, None]
        flat = merged[valid].to(frame_features.dtype)
        weight = self.feat_linear[0].weight
        return self.feat_linear(flat.to(weight.dtype)), counts
