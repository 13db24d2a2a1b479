"""Benchmark: time to sample 16 uniform frames per real clip with engine.video versus plain sequential PyAV.

For each clip of the media folder (default ../shared/media beside the repo, `--media` to change), both
ways open the file, find its frame count, and return the 16 `uniform_indices` frames as RGB arrays;
they run interleaved `--repeats` times and the median is kept. The baseline is a plain PyAV sequential
decode (default threading, edit lists ignored so both count the same frames) keeping the wanted indices
and stopping after the last one. Both outputs are checked to be identical. Prints ONE JSON line:
per-clip ours_ms, pyav_ms, ratio (ours / pyav; below 1 is faster), and the max ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from engine.video import probe, read_frames, uniform_indices  # noqa: E402


def ours(path: Path) -> np.ndarray:
    return read_frames(path, uniform_indices(probe(path).num_frames))


def plain_pyav(path: Path) -> np.ndarray:
    import av

    with av.open(str(path), options={"ignore_editlist": "1"}) as container:
        stream = container.streams.video[0]
        wanted = uniform_indices(stream.frames)
        targets, found = set(wanted), {}
        for index, frame in enumerate(container.decode(stream)):
            if index in targets:
                found[index] = frame.to_ndarray(format="rgb24")
            if index >= wanted[-1]:
                break
    return np.stack([found[i] for i in wanted])


def timed_ms(function, path: Path) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    result = function(path)
    return (time.perf_counter() - start) * 1000, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--media", type=Path, default=REPO.parent / "shared" / "media")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    clips = sorted(args.media.glob("*.mp4"))
    if not clips:
        print(json.dumps({"error": f"no .mp4 clips in {args.media}"}))
        sys.exit(1)
    import av  # noqa: F401  (import cost outside the timings)
    import cv2  # noqa: F401

    results = {}
    for clip in clips:
        ours_times, pyav_times = [], []
        for _ in range(args.repeats):
            elapsed, mine = timed_ms(ours, clip)
            ours_times.append(elapsed)
            elapsed, theirs = timed_ms(plain_pyav, clip)
            pyav_times.append(elapsed)
        ours_ms, pyav_ms = statistics.median(ours_times), statistics.median(pyav_times)
        results[clip.name] = {
            "ours_ms": round(ours_ms, 1),
            "pyav_ms": round(pyav_ms, 1),
            "ratio": round(ours_ms / pyav_ms, 3),
            "identical": bool(np.array_equal(mine, theirs)),
        }
    print(
        json.dumps(
            {
                "benchmark": "frame_sampling",
                "frames": 16,
                "repeats": args.repeats,
                "clips": results,
                "max_ratio": max(r["ratio"] for r in results.values()),
            }
        )
    )


if __name__ == "__main__":
    main()
