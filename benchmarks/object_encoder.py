"""Benchmark: the batched object encoder versus a per-object Python loop over the plain reference functions.

64 objects x 32 mask frames at VideoRefer-7B widths on CPU: frame features 27 x 27 x 1152 (32 frames shared by all
objects), masks 384 x 384, u = 4. Both paths compute the same tokens (checked). Timed twice: pooling + temporal
merge only, and with the MLP projector (Linear 1152 -> 3584, GELU, Linear 3584 -> 3584) included. Prints ONE JSON
line: seconds per path (the loop runs once, it is slow; the batched path best of `--repeats`), and `ratio` = loop /
batched (target >= 5) for both variants; `ratio` alone is the pooling + merge one.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from model.object_encoder import (
    ObjectEncoder,
    batched_mask_pool,
    batched_temporal_token_merge,
    mask_pool,
    temporal_token_merge,
)


def _inputs(objects: int, frames: int, grid: int, depth: int, size: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(frames, grid, grid, depth, generator=generator)
    # Moving boxes: realistic sparse masks, about 5% of the frame each.
    ys = torch.arange(size)[:, None]
    xs = torch.arange(size)[None, :]
    masks = torch.zeros(objects, frames, size, size, dtype=torch.bool)
    starts = torch.randint(0, size - 100, (objects, 2), generator=generator)
    for o in range(objects):
        for f in range(frames):
            y0, x0 = int(starts[o, 0]) + f, int(starts[o, 1]) + f
            masks[o, f] = (ys >= y0) & (ys < y0 + 80) & (xs >= x0) & (xs < x0 + 90)
    return features, masks


def _loop(features, masks, u, projector):
    tokens = []
    for o in range(masks.shape[0]):
        pooled = torch.stack([mask_pool(features[f], masks[o, f]) for f in range(masks.shape[1])])
        merged = temporal_token_merge(pooled, u)
        tokens.append(projector(merged) if projector is not None else merged)
    return torch.cat(tokens)


def _batched(features, masks, u, projector):
    objects, frames = masks.shape[:2]
    flat = masks.reshape(objects * frames, *masks.shape[2:])
    frame_index = torch.arange(frames).repeat(objects)
    object_index = torch.arange(objects).repeat_interleave(frames)
    pooled = batched_mask_pool(features, flat, frame_index)
    merged, counts = batched_temporal_token_merge(pooled, object_index, objects, u)
    tokens = merged[torch.arange(u)[None, :] < counts[:, None]]
    return projector(tokens) if projector is not None else tokens


def _best(fn, repeats):
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=64)
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--mask-size", type=int, default=384)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    grid, depth, hidden, u = 27, 1152, 3584, 4
    features, masks = _inputs(args.objects, args.frames, grid, depth, args.mask_size, seed=0)
    projector = ObjectEncoder(depth, hidden, tokens_per_object=u).feat_linear.eval()

    figures = {"objects": args.objects, "frames": args.frames, "mask_size": args.mask_size, "grid": grid,
               "width": depth, "u": u, "threads": torch.get_num_threads()}
    with torch.inference_mode():
        for label, head in (("pool_merge", None), ("with_projector", projector)):
            loop_s, loop_tokens = _best(lambda head=head: _loop(features, masks, u, head), 1)
            batched_s, batched_tokens = _best(lambda head=head: _batched(features, masks, u, head), args.repeats)
            if not torch.allclose(loop_tokens, batched_tokens, atol=1e-4, rtol=1e-4):
                raise SystemExit(f"{label}: batched tokens differ from the loop's")
            figures[f"{label}_loop_s"] = round(loop_s, 4)
            figures[f"{label}_batched_s"] = round(batched_s, 4)
            figures[f"{label}_ratio"] = round(loop_s / batched_s, 2)
    figures["ratio"] = figures["pool_merge_ratio"]
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
