"""Segmenter throughput: frames/s of the SAM 2 and SAM 3 segmenters, image encoder batched vs the per-frame loop.

For each segmenter kind and input size, a tiny random model (`random_weights: true`; real weights have the same
code path, only bigger) segments one synthetic clip of `--frames` frames with one box prompt, twice per round:
with the image encoder run on `--batch` frames at a time (what the segmenter does) and frame by frame
(`encoder_batch: 1`, the baseline), interleaved, same model, same frames, same run. Reported per configuration:
frames/s of the image encoder alone and of the whole `segment_many` call (encoder + tracking both ways), medians
over `--rounds`, and batched / per-frame ratios. The masks of both ways are compared (pixels that differ, from
float summation order). `--device cuda` measures a GPU. Prints ONE JSON line.

    .venv/bin/python benchmarks/segmenter_throughput.py [--kinds sam2,sam3] [--sizes sam2:128,sam2:256,sam3:112]
        [--frames 16] [--batch 8] [--rounds 3] [--device cpu] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from agents.backends.base import SegmentPrompt  # noqa: E402
from agents.backends.factory import build_segmenter  # noqa: E402
from engine.masks import decode_rle  # noqa: E402
from engine.synthetic import make_clip  # noqa: E402
from engine.video import read_frames  # noqa: E402


def _measure(kind: str, size: int, args: argparse.Namespace, clip, frames: dict) -> dict[str, object]:
    import torch

    indices = sorted(frames)
    common = {"kind": kind, "random_weights": True, "image_size": size, "device": args.device,
              "max_frames": len(indices)}
    segmenter = build_segmenter({**common, "encoder_batch": args.batch})
    key = indices[len(indices) // 2]
    prompt = SegmentPrompt(key_frame=key, box=tuple(clip.ground_truth.objects[0].boxes[key]))
    segmenter.segment_many(video_uri=str(clip.path), frame_indices=indices, prompts=[prompt], frames=frames)  # warm
    tracker = segmenter._tracker  # the same model both ways: only its encoder batch changes
    from agents.backends.sam2_segmenter import prepare_frames

    pixels = prepare_frames([frames[i] for i in indices], tracker.prep).to(args.device)
    encoder: dict[str, list[float]] = {"batched": [], "per_frame": []}
    whole: dict[str, list[float]] = {"batched": [], "per_frame": []}
    results = {}

    def sync() -> None:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    for _ in range(args.rounds):
        for name, batch in (("batched", args.batch), ("per_frame", 1)):
            tracker.encoder_batch = batch
            with torch.inference_mode():
                sync()
                started = time.perf_counter()
                tracker.features(pixels)
                sync()
                encoder[name].append(len(indices) / (time.perf_counter() - started))
            started = time.perf_counter()
            [masklet] = segmenter.segment_many(video_uri=str(clip.path), frame_indices=indices, prompts=[prompt],
                                               frames=frames)
            sync()
            whole[name].append(len(indices) / (time.perf_counter() - started))
            results[name] = masklet
    differing = max(
        int(np.logical_xor(decode_rle(results["batched"].masks[i]), decode_rle(results["per_frame"].masks[i])).sum())
        for i in indices
    )
    median = {name: statistics.median(values) for name, values in encoder.items()}
    median_whole = {name: statistics.median(values) for name, values in whole.items()}
    return {
        "kind": kind, "image_size": size, "frames": len(indices), "batch": args.batch,
        "encoder_fps": {name: round(value, 2) for name, value in median.items()},
        "encoder_ratio": round(median["batched"] / median["per_frame"], 3),
        "segment_fps": {name: round(value, 2) for name, value in median_whole.items()},
        "segment_ratio": round(median_whole["batched"] / median_whole["per_frame"], 3),
        "max_differing_pixels": differing,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="sam2:128,sam2:256,sam3:112", help="kind:image_size, comma separated")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="segmenter-bench-") as folder:
        clip = make_clip(Path(folder) / "clip.mp4", seed=5, num_frames=args.frames, width=320, height=240,
                         num_objects=2)
        indices = list(range(args.frames))
        frames = dict(zip(indices, read_frames(str(clip.path), indices), strict=True))
        runs = []
        for item in args.sizes.split(","):
            kind, size = item.split(":")
            runs.append(_measure(kind, int(size), args, clip, frames))
    print(json.dumps({
        "benchmark": "segmenter_throughput", "device": args.device, "threads": torch.get_num_threads(),
        "rounds": args.rounds, "runs": runs,
    }))


if __name__ == "__main__":
    main()
