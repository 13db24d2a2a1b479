"""Training loader throughput versus raw JPEG decoding of the same frames: paired, interleaved rounds in one run.

Writes WebDataset shards laid out as the export writes them (`write_export_like_shards`: 16 textured frames per
sample stored with the source's aspect ratio kept, short side 384, so 384 x 512 for the default 480 x 640 source;
masks as RLE at the source size), then compares (a) the training loader
(`model.training.loader`: shard split, shuffle buffer, JPEG decode, RLE masks and tokenisation through the real
`VideoReferProcessor` at VideoRefer-7B sizes with a tiny tokenizer, collation, frames kept uint8 as the training
loop takes them (`processor.replace(do_resize=False, do_normalize=False)`); the export's frames leave at their
stored size, the stretch to S x S (Pillow's bicubic, bit for bit) is done by `processor.normalize_pixels` on the
trainer's device and is not counted here: `--eager-resize` (`do_resize=True`) counts it, done in the loader with
Pillow) with (b) a baseline that only reads the same tars and decodes every JPEG to RGB
uint8 (OpenCV, the loader's own `decode_jpeg`), stacked into micro-batches. Both read the same shards with the
same split.

Measured twice, each as rounds in which both sides run, interleaved so that load from other processes on a
shared machine hits both alike; a figure is the median over rounds, `ratio_min`/`ratio_max` its spread:
- in-process (no DataLoader workers): a round is one pass over the shards (`--samples`, 64) for each side, the
  two sides taking turns batch by batch (the order swapped each batch), so the sides of a pair run within a
  fraction of a second of each other and over the same samples. CPU ms per sample of this process and samples/s
  (wall) per side; `ratio` is the round's raw CPU / loader CPU (what a trainer process spends per sample; on a
  shared machine wall time also counts waiting for a core), `wall_ratio` the same from wall time;
- with `--workers` DataLoader workers: samples/s. Each round starts a fresh DataLoader iterator for its side
  and shuts it down before the other side starts (an idle persistent loader would keep prefetching during the
  other side's round), and times `--worker-samples` samples after a warm-up of two batches per worker; the
  sides alternate which goes first. `ratio` is the round's loader rate / raw rate.
Target: `ratio` >= 0.8 in both modes. Prints ONE JSON line.

    .venv/bin/python benchmarks/loader_throughput.py [--rounds 5] [--workers 2] [--worker-rounds 9]
        [--worker-samples 16] [--micro-batch 4]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# One BLAS/OpenMP thread per process, as torchrun gives each trainer: more only spin against the workers.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def write_export_like_shards(directory: str, *, shards: int, samples_per_shard: int, frames: int, size: int,
                             source: tuple[int, int]) -> dict:
    """Shards laid out as the export writes them: frames stored with the source's aspect ratio kept (short side
    `size`, `storage.wds.bound_frames`), masks as COCO RLE at the SOURCE size, every sample multi-frame.

    Frames are textured (smooth pattern plus noise: JPEGs of about the size of natural video frames, so the JPEG
    decode the baseline measures is not a flat-colour one) with a square moving over them, its mask on each frame.
    Returns the stored frame size and the mean JPEG bytes per frame, for the JSON line.
    """
    import random

    import numpy as np
    import webdataset as wds

    from engine.ids import sample_key, stable_hash
    from engine.masks import encode_rle
    from engine.types import REGION_TOKEN, VIDEO_TOKEN, RleMask, Sample, SampleObject, Turn
    from model.training.loader import jpeg_bytes
    from storage.samples import sample_to_json
    from storage.wds import bound_frames

    height, width = source
    ys, xs = np.mgrid[0:height, 0:width]
    jpeg_total, jpeg_count, stored = 0, 0, None
    for shard in range(shards):
        with wds.TarWriter(str(Path(directory) / f"train-{shard:06d}.tar")) as writer:
            for offset in range(samples_per_shard):
                index = shard * samples_per_shard + offset
                rng = random.Random(index)
                noise = np.random.default_rng(index)
                side = min(height, width) // 3
                images, masks = [], {}
                for t in range(frames):
                    phase = index + t / frames
                    base = np.stack([np.sin(xs / (17 + index % 5) + phase), np.cos(ys / (13 + index % 7) - phase),
                                     np.sin((xs + ys) / (29 + index % 3))], -1)
                    image = (base * 60 + 128 + noise.normal(0, 6, base.shape)).clip(0, 255).astype(np.uint8)
                    x = round((width - side) * t / max(1, frames - 1))
                    y = rng.randrange(0, height - side + 1)
                    image[y : y + side, x : x + side] = (220, 40, 40)
                    mask = np.zeros((height, width), dtype=bool)
                    mask[y : y + side, x : x + side] = True
                    images.append(image)
                    masks[t] = RleMask.from_coco(encode_rle(mask))
                clip = stable_hash("bench-clip", index)
                sample = Sample(
                    key=sample_key("short", clip, index), task="short", video_uri=f"synthetic://{clip}", clip_id=clip,
                    height=height, width=width, frame_indices=tuple(range(frames)),
                    conversations=(Turn(role="human", value=f"{VIDEO_TOKEN}\nPlease describe the object "
                                        f"{REGION_TOKEN} in the video in brief."),
                                   Turn(role="gpt", value="A red square moving right.")),
                    objects=(SampleObject(object_id=stable_hash("object", clip), category="red square", masks=masks),),
                )
                record = {"__key__": sample.key, "json": sample_to_json(sample)}
                for t, image in enumerate(bound_frames(np.stack(images), size)):
                    record[f"{t:02d}.jpg"] = jpeg_bytes(image)
                    jpeg_total, jpeg_count, stored = jpeg_total + len(record[f"{t:02d}.jpg"]), jpeg_count + 1, image
                writer.write(record)
    return {"stored_frame": list(stored.shape[:2]), "jpeg_bytes_per_frame": round(jpeg_total / jpeg_count)}


def raw_decode_batches(paths: list[str], micro_batch: int, worker: int = 0, workers: int = 1) -> Iterator[dict]:
    """The baseline: this slot's tars read in order (endlessly), every JPEG decoded, micro-batches stacked."""
    import numpy as np
    import torch

    from model.training.loader import decode_jpeg, raw_frames_of, read_tar_samples

    batch = []
    while True:
        for path in paths[worker::workers]:
            for raw in read_tar_samples(path):
                batch.append(torch.from_numpy(np.stack([decode_jpeg(jpeg) for jpeg in raw_frames_of(raw)])))
                if len(batch) == micro_batch:
                    yield {"frames": torch.stack(batch)}
                    batch = []


def raw_decode_loader(paths: list[str], workers: int, micro_batch: int):
    from torch.utils.data import DataLoader, IterableDataset, get_worker_info

    class RawDecode(IterableDataset):
        def __iter__(self) -> Iterator[dict]:
            info = get_worker_info()
            worker, count = (0, 1) if info is None else (info.id, info.num_workers)
            return raw_decode_batches(paths, micro_batch, worker, count)

    return DataLoader(RawDecode(), batch_size=None, num_workers=workers, persistent_workers=False)


def timed(iterator: Iterator, warmup: int, batches: int) -> tuple[float, float]:
    """(wall s, this process's CPU s) of `batches` batches after `warmup` untimed ones."""
    for _ in range(warmup):
        next(iterator)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(batches):
        next(iterator)
    return time.perf_counter() - wall, time.process_time() - cpu


def interleaved_rounds(sides: dict[str, Iterator], batches: int, rounds: int) -> dict[str, list]:
    """Per side the (wall, cpu) of each round of `batches` batches, the sides taking turns batch by batch."""
    names = list(sides)
    for name in names:  # warm-up (the loader's first batch also fills its shuffle buffer)
        next(sides[name])
    results: dict[str, list] = {name: [] for name in names}
    for _ in range(rounds):
        totals = {name: [0.0, 0.0] for name in names}
        for batch in range(batches):
            for name in names if batch % 2 == 0 else names[::-1]:
                wall, cpu = time.perf_counter(), time.process_time()
                next(sides[name])
                totals[name][0] += time.perf_counter() - wall
                totals[name][1] += time.process_time() - cpu
        for name in names:
            results[name].append(tuple(totals[name]))
    return results


def paired_rounds(sides: dict[str, Callable[[], tuple[float, float]]], rounds: int) -> dict[str, list]:
    """Run each side once per round, alternating which goes first; per side the (wall, cpu) of every round."""
    names = list(sides)
    results: dict[str, list] = {name: [] for name in names}
    for round_index in range(rounds):
        for name in names if round_index % 2 == 0 else names[::-1]:
            results[name].append(sides[name]())
    return results


def summary(results: dict[str, list], samples: int, cpu: bool) -> dict:
    """Medians over the pairs; `ratio` from CPU time when `cpu` (in-process), else from wall time."""
    loader, raw = results["loader"], results["raw"]
    wall_ratios = [r_wall / l_wall for (l_wall, _), (r_wall, _) in zip(loader, raw, strict=True)]
    figures: dict = {}
    if cpu:
        ratios = [r_cpu / l_cpu for (_, l_cpu), (_, r_cpu) in zip(loader, raw, strict=True)]
        figures["loader_cpu_ms_per_sample"] = round(1000 * statistics.median(c for _, c in loader) / samples, 2)
        figures["raw_decode_cpu_ms_per_sample"] = round(1000 * statistics.median(c for _, c in raw) / samples, 2)
    else:
        ratios = wall_ratios
    figures.update({
        "ratio": round(statistics.median(ratios), 3),
        "ratio_min": round(min(ratios), 3),
        "ratio_max": round(max(ratios), 3),
        "loader_samples_per_s": round(statistics.median(samples / wall for wall, _ in loader), 2),
        "raw_decode_samples_per_s": round(statistics.median(samples / wall for wall, _ in raw), 2),
    })
    if cpu:
        figures["wall_ratio"] = round(statistics.median(wall_ratios), 3)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=64, help="in-process: samples per side and round (a pass)")
    parser.add_argument("--rounds", type=int, default=5, help="in-process rounds (each times both sides)")
    parser.add_argument("--worker-samples", type=int, default=16, help="with workers: samples per side and round")
    parser.add_argument("--worker-rounds", type=int, default=9, help="rounds with workers")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=384)
    parser.add_argument("--eager-resize", action="store_true",
                        help="resize to S x S in the loader (Pillow, CPU) instead of on the trainer's device")
    parser.add_argument("--source", default="480x640",
                        help="source video HxW: masks at this size, frames stored aspect kept (short side --size)")
    args = parser.parse_args()

    import torch

    from model.configuration import VideoReferConfig
    from model.processing import VideoReferProcessor, build_tiny_tokenizer
    from model.training.loader import LoaderSpec, TrainingStream, build_loader, expand_shards
    from model.training.recipes import DataMixture, DataSource

    torch.set_num_threads(1)
    processor = VideoReferProcessor.from_config(build_tiny_tokenizer(), VideoReferConfig.preset("7b"))
    encoder = processor.replace(do_resize=args.eager_resize, do_normalize=False)  # as the training loop's loader
    batches = max(1, args.samples // args.micro_batch)
    samples = batches * args.micro_batch
    worker_batches = max(1, args.worker_samples // args.micro_batch)
    worker_samples = worker_batches * args.micro_batch
    with tempfile.TemporaryDirectory(prefix="loader-bench-") as directory:
        source = tuple(int(side) for side in args.source.lower().split("x"))
        layout = write_export_like_shards(directory, shards=4, samples_per_shard=16, frames=args.frames,
                                          size=args.size, source=source)
        pattern = str(Path(directory) / "train-*.tar")
        paths = expand_shards(pattern)
        mixture = DataMixture(sources=(DataSource(shards=pattern),), frames_per_sample=args.frames,
                              shuffle_buffer=16, multi_frame_ratio=0.5)

        def stream(workers: int) -> TrainingStream:
            spec = LoaderSpec(mixture=mixture, micro_batch=args.micro_batch, num_workers=workers)
            return TrainingStream(spec, encoder)

        leaves_as = list(next(stream(0).iterate(0))["batch"]["pixel_values"].shape[-2:])
        in_process = interleaved_rounds({"loader": stream(0).iterate(0),
                                         "raw": raw_decode_batches(paths, args.micro_batch)}, batches, args.rounds)

        # Workers: a fresh iterator per round, shut down before the other side runs.
        def workers_round(make_loader: Callable[[], object]) -> tuple[float, float]:
            iterator = iter(make_loader())
            try:
                return timed(iterator, 2 * args.workers, worker_batches)
            finally:
                iterator._shutdown_workers()  # noqa: SLF001 - stop prefetching now, not when garbage-collected

        worker_stream = stream(args.workers)
        with_workers = paired_rounds({
            "loader": lambda: workers_round(lambda: build_loader(worker_stream)),
            "raw": lambda: workers_round(lambda: raw_decode_loader(paths, args.workers, args.micro_batch)),
        }, args.worker_rounds)
    inline, workers = summary(in_process, samples, cpu=True), summary(with_workers, worker_samples, cpu=False)
    print(json.dumps({
        "benchmark": "loader_throughput",
        "frames": args.frames, "size": args.size, "source": args.source, **layout,
        "pixels_leave_loader": leaves_as, "workers": args.workers, "micro_batch": args.micro_batch,
        "samples_per_round": [samples, worker_samples], "rounds": [args.rounds, args.worker_rounds],
        "in_process": inline, "with_workers": workers,
        "ratio": min(inline["ratio"], workers["ratio"]), "target_ratio": 0.8,
        "target_met": min(inline["ratio"], workers["ratio"]) >= 0.8,
    }))


if __name__ == "__main__":
    main()
