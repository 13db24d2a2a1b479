"""Benchmark of WebDataset shard I/O: write and read N synthetic samples, reading compared with raw JPEG decoding.

Each sample has 16 frames at 384x384 (smooth random content plus blocks and mild noise, compressible like video),
one object with a mask on every frame, and its JSON. Reading with `storage.wds.iter_samples` is compared in the
same run with plain `cv2.imdecode` over the same JPEG bytes held in memory (same decoder, same flags, the same
`cv2.setNumThreads` for both). After an untimed warm-up (page cache, allocator, decoder), `--rounds` rounds each
time every tar on every side back to back in rotated order; a round's ratio compares sides that ran over the
same seconds, and the median round ratio is reported with every round's value. The raw side keeps a sample's
frames alive until the next sample, as any reader's consumer does; `raw_decode_discarding` (each frame dropped
at once, so one hot buffer is reused) is reported beside it. Prints ONE JSON line: samples/s written, read,
raw-decoded, and the read/raw ratio (target >= 0.8). Usage: `python benchmarks/shard_io.py [--samples 200]`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.masks import encode_rle  # noqa: E402
from engine.synthetic import moving_patch_frames, moving_patch_masks  # noqa: E402
from engine.types import RleMask, Sample, SampleObject, Turn  # noqa: E402
from storage.samples import vision_grid  # noqa: E402
from storage.wds import ShardWriter, iter_samples, list_tars, read_raw  # noqa: E402

SIZE = 384
FRAMES = 16


def synthetic_frames(rng: np.random.Generator) -> np.ndarray:
    return moving_patch_frames(rng, num_frames=FRAMES, height=SIZE, width=SIZE)


def synthetic_sample(index: int) -> Sample:
    frame_indices = tuple(range(0, FRAMES * 6, 6))
    patches = moving_patch_masks(num_frames=FRAMES, height=SIZE, width=SIZE)
    masks = {frame: RleMask.from_coco(encode_rle(patches[t])) for t, frame in enumerate(frame_indices)}
    return Sample(
        key=f"detailed_{index:08d}",
        task="detailed",
        video_uri=f"synthetic://{index}",
        conversations=(
            Turn(role="human", value="<video>\nPlease describe in detail the object <region> in the video."),
            Turn(role="gpt", value="A coloured block moves diagonally across a smooth background."),
        ),
        objects=(SampleObject(object_id=f"o{index}", category="block", masks=masks),),
        frame_indices=frame_indices,
        clip_id=f"c{index}",
        height=SIZE,
        width=SIZE,
    )


def paired_rounds(sides: dict[str, Callable[[str], object]], tars: list[str], rounds: int) -> dict[str, list[float]]:
    """Seconds per side and round. Within a round every tar is timed on every side back to back, the order rotated
    by round and tar (the first of a pair was measurably favoured), so a load swing of the shared machine hits all
    sides of a pair alike; a round's ratio compares sides that ran interleaved over the same seconds."""
    names = list(sides)
    seconds = {name: [0.0] * rounds for name in names}
    for round_index in range(rounds):
        for tar_index, tar in enumerate(tars):
            shift = (round_index + tar_index) % len(names)
            for name in names[shift:] + names[:shift]:
                start = time.perf_counter()
                sides[name](tar)
                seconds[name][round_index] += time.perf_counter() - start
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--per-tar", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cv2-threads", type=int, default=1, help="cv2.setNumThreads, the same for every side")
    args = parser.parse_args()
    import cv2

    cv2.setNumThreads(args.cv2_threads)  # process-wide: raw decoding and our reader run under the same setting
    rng = np.random.default_rng(0)
    inputs = [(synthetic_sample(i), synthetic_frames(rng)) for i in range(args.samples)]
    with tempfile.TemporaryDirectory() as directory:
        start = time.perf_counter()
        with ShardWriter(directory, max_samples_per_tar=args.per_tar, grid=vision_grid(384)) as writer:
            for sample, frames in inputs:
                if writer.write(sample, frames) is not None:
                    raise SystemExit("benchmark sample rejected")
        write_s = time.perf_counter() - start
        del inputs
        tars = list_tars(directory)
        total_bytes = sum(Path(t).stat().st_size for t in tars)
        # The same JPEG bytes, held in memory per sample, for the raw side.
        jpegs = {t: [[raw[k] for k in sorted(raw) if k.endswith(".jpg")] for raw in read_raw(t)] for t in tars}

        def decode(data: bytes) -> np.ndarray:
            return cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR_RGB)

        def raw_decode(tar: str) -> int:
            # Like a reader's consumer: a sample's frames stay alive together until the next sample is decoded.
            count = 0
            for sample_jpegs in jpegs[tar]:
                frames = [decode(data) for data in sample_jpegs]
                count += len(frames) > 0
            return count

        def raw_decode_discarding(tar: str) -> int:
            # Each frame dropped as soon as it is decoded: the allocator reuses one hot buffer, no reader can.
            for sample_jpegs in jpegs[tar]:
                for data in sample_jpegs:
                    decode(data)
            return len(jpegs[tar])

        def read(tar: str) -> int:
            return sum(1 for _ in iter_samples(tar))

        sides = {"raw": raw_decode, "raw_discarding": raw_decode_discarding, "read": read}
        for tar in tars:  # warm-up, untimed: page cache, allocator, decoder initialisation
            assert all(side(tar) == len(jpegs[tar]) for side in sides.values())
        assert sum(read(tar) for tar in tars) == args.samples
        seconds = paired_rounds(sides, tars, args.rounds)
    n = args.samples
    ratios = [raw / read for raw, read in zip(seconds["raw"], seconds["read"], strict=True)]
    ratios_discarding = [raw / read for raw, read in zip(seconds["raw_discarding"], seconds["read"], strict=True)]
    print(
        json.dumps(
            {
                "benchmark": "shard_io",
                "samples": n,
                "frames_per_sample": FRAMES,
                "frame_size": SIZE,
                "write_samples_per_s": round(n / write_s, 1),
                "read_samples_per_s": round(n / statistics.median(seconds["read"]), 1),
                "raw_decode_samples_per_s": round(n / statistics.median(seconds["raw"]), 1),
                "read_vs_raw_decode": round(statistics.median(ratios), 3),
                "bytes_per_sample": total_bytes // n,
                "rounds": args.rounds,
                "cv2_threads": args.cv2_threads,
                "read_vs_raw_decode_per_round": [round(r, 3) for r in ratios],
                "raw_decode_discarding_samples_per_s": round(n / statistics.median(seconds["raw_discarding"]), 1),
                "read_vs_raw_decode_discarding": round(statistics.median(ratios_discarding), 3),
                "read_vs_raw_decode_discarding_per_round": [round(r, 3) for r in ratios_discarding],
            }
        )
    )


if __name__ == "__main__":
    main()
