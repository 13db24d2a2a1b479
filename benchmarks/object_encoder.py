"""Benchmark: the batched object encoder versus a per-object Python loop over the plain reference functions.

64 objects x 32 mask frames at VideoRefer-7B widths on CPU: frame features 27 x 27 x 1152 (32 frames shared by all
objects), masks 384 x 384, u = 4. Both paths compute the same tokens (checked). Timed twice: pooling + temporal
merge only, and with the MLP projector (Linear 1152 -> 3584, GELU, Linear 3584 -> 3584) included. The loop is the
baseline, measured in the same run: after an untimed warm-up of the batched path, `--repeats` pairs run back to
back with the order alternated, so that load from other processes hits both alike. Prints ONE JSON line: the
median seconds per path, and `ratio` = the median of the pairs' loop / batched ratios (target >= 5), with its
spread, for both variants; `ratio` alone is the pooling + merge one.

    .venv/bin/python benchmarks/object_encoder.py [--objects 64] [--frames 32] [--repeats 3] [--threads 1]
    python benchmarks/object_encoder.py --device cuda      # both paths on a GPU (timed with synchronisation)

One torch thread by default: with torch's default (a thread per core) the loop's thousands of small ops spin
against other processes on a busy machine, and the loop took 28 s at load 5 against 0.3 s at load 0.5 (ratio 47
against 3.5), so the ratio measured the machine, not the two paths.
"""

from __future__ import annotations

import argparse
import json
import statistics
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
    frame_index = torch.arange(frames, device=masks.device).repeat(objects)
    object_index = torch.arange(objects, device=masks.device).repeat_interleave(frames)
    pooled = batched_mask_pool(features, flat, frame_index)
    merged, counts = batched_temporal_token_merge(pooled, object_index, objects, u)
    tokens = merged[torch.arange(u, device=counts.device)[None, :] < counts[:, None]]
    return projector(tokens) if projector is not None else tokens


def _timed(fn, sync=lambda: None):
    sync()
    start = time.perf_counter()
    result = fn()
    sync()
    return time.perf_counter() - start, result


def _paired(loop, batched, repeats, sync=lambda: None):
    """Per side the seconds of each pair's run and the last result, after an untimed warm-up of the batched path
    (the loop, tens of seconds, needs none)."""
    times: dict[str, list[float]] = {"loop": [], "batched": []}
    results = {"batched": batched()}
    sides = [("loop", loop), ("batched", batched)]
    for repeat in range(repeats):
        for name, fn in sides if repeat % 2 == 0 else sides[::-1]:
            seconds, results[name] = _timed(fn, sync)
            times[name].append(seconds)
    return times, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=64)
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--mask-size", type=int, default=384)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    parser.add_argument("--device", default="cpu", help="where both paths run (cuda: timed with synchronisation)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    grid, depth, hidden, u = 27, 1152, 3584, 4
    features, masks = _inputs(args.objects, args.frames, grid, depth, args.mask_size, seed=0)
    features, masks = features.to(device), masks.to(device)
    projector = ObjectEncoder(depth, hidden, tokens_per_object=u).feat_linear.eval().to(device)

    figures = {"benchmark": "object_encoder", "device": torch.cuda.get_device_name(device) if device.type == "cuda"
               else "cpu", "objects": args.objects, "frames": args.frames, "mask_size": args.mask_size, "grid": grid,
               "width": depth, "u": u, "threads": torch.get_num_threads()}
    with torch.inference_mode():
        for label, head in (("pool_merge", None), ("with_projector", projector)):
            times, results = _paired(lambda head=head: _loop(features, masks, u, head),
                                     lambda head=head: _batched(features, masks, u, head), args.repeats, sync)
            if not torch.allclose(results["loop"], results["batched"], atol=1e-4, rtol=1e-4):
                raise SystemExit(f"{label}: batched tokens differ from the loop's")
            ratios = [loop_s / batched_s for loop_s, batched_s in zip(times["loop"], times["batched"], strict=True)]
            figures[f"{label}_loop_s"] = round(statistics.median(times["loop"]), 4)
            figures[f"{label}_batched_s"] = round(statistics.median(times["batched"]), 4)
            figures[f"{label}_ratio"] = round(statistics.median(ratios), 2)
            figures[f"{label}_ratio_min_max"] = [round(min(ratios), 2), round(max(ratios), 2)]
    figures["ratio"] = figures["pool_merge_ratio"]
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
