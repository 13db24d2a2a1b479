"""Training loader throughput versus raw JPEG decoding of the same frames, measured in the same run.

Writes synthetic WebDataset shards (16 frames at 384 px, multi-frame masks), then measures samples/s of
(a) the training loader (`model.training.loader`: shard split, shuffle buffer, JPEG decode, RLE masks and
tokenisation through the real `VideoReferProcessor` at VideoRefer-7B sizes with a tiny tokenizer, collation in
the workers, frames kept uint8 as the training loop takes them, 2 DataLoader workers) and (b) a baseline
DataLoader with the same 2 workers that only reads the same tars and decodes every JPEG to RGB uint8.
Prints ONE JSON line; the figure to watch is `ratio` (target >= 0.8).

    .venv/bin/python benchmarks/loader_throughput.py [--samples 96] [--workers 2] [--micro-batch 4]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# One BLAS/OpenMP thread per process, as torchrun gives each trainer: more only spin against the 2 workers.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def _raw_decode_loader(paths: list[str], workers: int, micro_batch: int):
    import numpy as np
    import torch
    from torch.utils.data import DataLoader, IterableDataset, get_worker_info

    from model.training.loader import decode_jpeg, raw_frames_of, read_tar_samples

    class RawDecode(IterableDataset):
        def __iter__(self) -> Iterator[dict]:
            info = get_worker_info()
            worker, count = (0, 1) if info is None else (info.id, info.num_workers)
            while True:
                batch = []
                for path in paths[worker::count]:
                    for raw in read_tar_samples(path):
                        frames = [decode_jpeg(jpeg) for jpeg in raw_frames_of(raw)]
                        batch.append(torch.from_numpy(np.stack(frames)))
                        if len(batch) == micro_batch:
                            yield {"frames": torch.stack(batch)}
                            batch = []

    return DataLoader(RawDecode(), batch_size=None, num_workers=workers, persistent_workers=workers > 0)


def _rate(loader, batches: int, micro_batch: int, warmup: int = 2) -> float:
    iterator = iter(loader)
    for _ in range(warmup):
        next(iterator)
    started = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * micro_batch / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=96, help="samples timed per loader (after a warm-up)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=384)
    args = parser.parse_args()

    import torch

    from model.configuration import VideoReferConfig
    from model.processing import VideoReferProcessor, build_tiny_tokenizer
    from model.training.loader import LoaderSpec, TrainingStream, Uint8FramesEncoder, build_loader, expand_shards
    from model.training.recipes import DataMixture, DataSource
    from model.training.synthetic import write_synthetic_shards

    torch.set_num_threads(1)
    processor = VideoReferProcessor.from_config(build_tiny_tokenizer(), VideoReferConfig.preset("7b"))
    batches = max(1, args.samples // args.micro_batch)
    with tempfile.TemporaryDirectory(prefix="loader-bench-") as directory:
        write_synthetic_shards(directory, shards=4, samples_per_shard=16, frames=args.frames, size=args.size,
                               multi_frame_every=1)
        pattern = str(Path(directory) / "train-*.tar")
        mixture = DataMixture(sources=(DataSource(shards=pattern),), frames_per_sample=args.frames,
                              shuffle_buffer=16, multi_frame_ratio=0.5)
        spec = LoaderSpec(mixture=mixture, micro_batch=args.micro_batch, num_workers=args.workers)
        # Alternate the two measurements so that load from other processes on the machine hits both alike.
        loader_rates, raw_rates = [], []
        loader = build_loader(TrainingStream(spec, Uint8FramesEncoder(processor)))
        raw = _raw_decode_loader(expand_shards(pattern), args.workers, args.micro_batch)
        for _ in range(2):
            raw_rates.append(_rate(raw, batches // 2, args.micro_batch))
            loader_rates.append(_rate(loader, batches // 2, args.micro_batch))
    loader_rate, raw_rate = max(loader_rates), max(raw_rates)
    print(json.dumps({
        "benchmark": "loader_throughput",
        "frames": args.frames, "size": args.size, "workers": args.workers, "micro_batch": args.micro_batch,
        "loader_samples_per_s": round(loader_rate, 2), "raw_decode_samples_per_s": round(raw_rate, 2),
        "ratio": round(loader_rate / raw_rate, 3), "target_ratio": 0.8,
    }))


if __name__ == "__main__":
    main()
