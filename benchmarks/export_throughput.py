"""Benchmark of the export's tar writing: our `ShardWriter.write_clip` against `webdataset.TarWriter`, same run.

Synthetic clips like the engine's: 16 frames at 384 x 512 (a 4:3 clip stored with its short side at the 384-px
vision size), three samples per clip (a detailed, a short and a QA sample, one object with a mask on every
frame, the json the export writes). Three sides, each a full export of the same clips to a fresh directory:
- `ours`: `ShardWriter.write_clip` per clip, what the export stage runs (validation of every sample on the
  27 x 27 grid, JPEG encoding of the clip's frames once, one clip record, Parquet index, stats);
- `tarwriter`: the baseline a user would write instead: the same JPEG encoding (`storage.wds.encode_frames`)
  and the same record members and bytes, written with `webdataset.TarWriter` (no validation, no index);
- `per_sample`: the layout before clip records (`ShardWriter.write` per sample: each sample carries the clip's
  frames, so each clip's JPEGs are encoded and stored three times), for the bytes per sample before and after.
After an untimed warm-up, `--rounds` rounds run every side back to back in rotated order; a round's ratio
compares sides that ran over the same seconds, and the median is reported with every round's value. Wall
samples/s and CPU ms per sample (process time) per side; `ours_vs_tarwriter` (samples/s, target >= 1.0 at
parity); bytes per sample of both layouts; `deterministic`: two exports of ours are byte-identical. Prints ONE
JSON line. Usage: `python benchmarks/export_throughput.py [--clips 12] [--rounds 5]`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
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
from storage.samples import _mask_verdict, sample_to_json, vision_grid  # noqa: E402
from storage.wds import ShardWriter, encode_frames  # noqa: E402

HEIGHT, WIDTH = 384, 512
FRAMES = 16
TASKS = (("detailed", "Please describe in detail the object <region> in the video."),
         ("short", "Please describe the object <region> in the video in brief."),
         ("qa", "What is the object <region> doing?"))


def clip_frames(rng: np.random.Generator) -> np.ndarray:
    return moving_patch_frames(rng, num_frames=FRAMES, height=HEIGHT, width=WIDTH)


def clip_samples(clip: int) -> list[Sample]:
    frame_indices = tuple(range(0, FRAMES * 6, 6))
    patches = moving_patch_masks(num_frames=FRAMES, height=HEIGHT, width=WIDTH)
    masks = {frame: RleMask.from_coco(encode_rle(patches[t])) for t, frame in enumerate(frame_indices)}
    objects = (SampleObject(object_id=f"obj{clip}", category="box", masks=masks),)
    return [
        Sample(key=f"{task}_{clip:06d}", task=task, video_uri=f"videos/clip{clip}.mp4", clip_id=f"clip{clip:06d}",
               conversations=(Turn(role="human", value=f"<video>\n{prompt}"), Turn(role="gpt", value="A box.")),
               objects=objects, frame_indices=frame_indices, height=HEIGHT, width=WIDTH, extra={"mode": "multi"})
        for task, prompt in TASKS
    ]


Clip = tuple[list[Sample], dict[int, np.ndarray]]


def write_ours(directory: Path, clips: list[Clip]) -> None:
    with ShardWriter(directory, grid=vision_grid(384), max_samples_per_tar=None) as writer:
        for samples, frames in clips:
            if writer.write_clip(samples, frames):
                raise RuntimeError("a benchmark sample was rejected")


def write_tarwriter(directory: Path, clips: list[Clip]) -> None:
    import webdataset as wds

    with wds.TarWriter(str(directory / "train-000000.tar")) as sink:
        for samples, frames in clips:
            indices = sorted(frames)
            record = {"__key__": samples[0].clip_id}
            for i, data in enumerate(encode_frames(np.stack([frames[i] for i in indices]))):
                record[f"{i:02d}.jpg"] = data
            record["json"] = json.dumps(
                {"clip_id": samples[0].clip_id, "format": "videorefer-clip", "frames": indices,
                 "samples": [sample_to_json(s) for s in samples], "video": samples[0].video_uri},
                sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()
            sink.write(record)


def write_per_sample(directory: Path, clips: list[Clip]) -> None:
    with ShardWriter(directory, grid=vision_grid(384), max_samples_per_tar=None) as writer:
        for samples, frames in clips:
            for sample in samples:
                if writer.write(sample, np.stack([frames[i] for i in sample.stored_frame_indices])):
                    raise RuntimeError("a benchmark sample was rejected")


def timed(write: Callable[[Path, list[Clip]], None], clips: list[Clip], scratch: Path) -> tuple[float, float, int]:
    directory = Path(tempfile.mkdtemp(dir=scratch))
    _mask_verdict.cache_clear()  # every side validates the clips' masks from scratch, as a fresh export does
    wall, cpu = time.perf_counter(), time.process_time()
    write(directory, clips)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    size = sum(p.stat().st_size for p in directory.glob("*.tar"))
    shutil.rmtree(directory)
    return wall, cpu, size


def tar_digest(directory: Path) -> str:
    return hashlib.sha256((directory / "train-000000.tar").read_bytes()).hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    import cv2

    cv2.setNumThreads(1)  # one encoder thread on every side: the comparison is of the writers, not of threading
    rng = np.random.default_rng(0)
    clips = []
    for clip in range(args.clips):
        frames = clip_frames(rng)
        samples = clip_samples(clip)
        clips.append((samples, dict(zip(samples[0].frame_indices, frames, strict=True))))
    samples = sum(len(s) for s, _ in clips)
    sides = {"ours": write_ours, "tarwriter": write_tarwriter, "per_sample": write_per_sample}
    with tempfile.TemporaryDirectory() as scratch:
        scratch_path = Path(scratch)
        first, second = scratch_path / "a", scratch_path / "b"
        write_ours(first, clips)
        write_ours(second, clips)
        deterministic = tar_digest(first) == tar_digest(second)
        for write in sides.values():  # warm-up: page cache, allocator, encoder
            timed(write, clips[:2], scratch_path)
        rounds: list[dict[str, tuple[float, float, int]]] = []
        names = list(sides)
        for number in range(args.rounds):
            order = names[number % len(names):] + names[: number % len(names)]
            rounds.append({name: timed(sides[name], clips, scratch_path) for name in order})
    ratios = [r["tarwriter"][0] / r["ours"][0] for r in rounds]
    out: dict[str, object] = {"benchmark": "export_throughput", "clips": args.clips, "samples": samples,
                              "rounds": args.rounds}
    for name in names:
        out[f"{name}_samples_per_s"] = round(statistics.median(samples / r[name][0] for r in rounds), 1)
        out[f"{name}_cpu_ms_per_sample"] = round(statistics.median(1000 * r[name][1] / samples for r in rounds), 2)
    out["ours_vs_tarwriter"] = round(statistics.median(ratios), 3)
    out["ours_vs_tarwriter_rounds"] = [round(r, 3) for r in ratios]
    out["ours_cpu_vs_tarwriter"] = round(statistics.median(r["ours"][1] / r["tarwriter"][1] for r in rounds), 3)
    out["bytes_per_sample_clip_records"] = round(rounds[0]["ours"][2] / samples)
    out["bytes_per_sample_per_sample_records"] = round(rounds[0]["per_sample"][2] / samples)
    out["ours_vs_per_sample"] = round(statistics.median(r["per_sample"][0] / r["ours"][0] for r in rounds), 3)
    out["deterministic"] = deterministic
    out["target"] = "ours_vs_tarwriter >= 1.0 (parity), deterministic"
    print(json.dumps(out))


if __name__ == "__main__":
    main()
