"""Synthetic WebDataset training shards: coloured squares moving over a plain background, with exact masks.

A real (not mocked) source of training samples in the exported format (DESIGN.md section 5, `storage.samples`):
each sample's json holds a short caption naming the square's colour and direction, its masks as COCO RLE on the
pre-sampled frames, and `NN.jpg` frames. The text is a function of the pixels, so a tiny model can learn it:
tests use these shards to check that training lowers the loss, and benchmarks use them at 16 frames x 384 px.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np

from engine.ids import sample_key, stable_hash
from engine.masks import encode_rle
from engine.types import REGION_TOKEN, VIDEO_TOKEN, RleMask, Sample, SampleObject, Turn
from model.training.loader import jpeg_bytes

COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (40, 80, 220), "yellow": (230, 210, 40)}
DIRECTIONS = {"right": (1, 0), "left": (-1, 0), "down": (0, 1), "up": (0, -1)}


def synthetic_sample(index: int, *, frames: int, size: int, seed: int = 0,
                     multi_frame: bool = True) -> tuple[Sample, list[np.ndarray]]:
    """One sample: a square of a random colour moving in a random direction; its masks; its frames (RGB uint8)."""
    rng = random.Random(f"{seed}-{index}")
    colour = rng.choice(sorted(COLOURS))
    direction = rng.choice(sorted(DIRECTIONS))
    side = max(4, size // 3)
    dx, dy = DIRECTIONS[direction]
    travel = size - side
    start_x = rng.randrange(0, travel + 1) if dx == 0 else (0 if dx > 0 else travel)
    start_y = rng.randrange(0, travel + 1) if dy == 0 else (0 if dy > 0 else travel)
    background = np.array([rng.randrange(90, 140)] * 3, dtype=np.uint8)
    images, masks = [], {}
    for t in range(frames):
        shift = round(travel * t / max(1, frames - 1))
        x, y = start_x + dx * shift, start_y + dy * shift
        image = np.empty((size, size, 3), dtype=np.uint8)
        image[:] = background
        image[y : y + side, x : x + side] = COLOURS[colour]
        mask = np.zeros((size, size), dtype=bool)
        mask[y : y + side, x : x + side] = True
        images.append(image)
        masks[t] = RleMask.from_coco(encode_rle(mask))
    if not multi_frame:
        masks = {0: masks[0]}
    clip = stable_hash("synthetic-clip", seed, index)
    key = sample_key("short", clip, index)
    question = f"{VIDEO_TOKEN}\nPlease describe the object {REGION_TOKEN} in the video in brief."
    answer = f"A {colour} square moving {direction}."
    sample = Sample(
        key=key,
        task="short",
        video_uri=f"synthetic://{clip}",
        clip_id=clip,
        height=size,
        width=size,
        frame_indices=tuple(range(frames)),
        conversations=(Turn(role="human", value=question), Turn(role="gpt", value=answer)),
        objects=(SampleObject(object_id=stable_hash("object", clip), category=f"{colour} square", masks=masks),),
    )
    return sample, images


def write_synthetic_shards(directory: str | Path, *, shards: int = 2, samples_per_shard: int = 4, frames: int = 4,
                           size: int = 64, seed: int = 0, prefix: str = "train",
                           multi_frame_every: int = 2) -> list[Path]:
    """Write `shards` WebDataset tars of synthetic samples (every `multi_frame_every`-th one multi-frame)."""
    import webdataset as wds

    from storage.samples import sample_to_json

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for shard in range(shards):
        path = directory / f"{prefix}-{shard:06d}.tar"
        temporary = path.with_suffix(".tar.tmp")
        with wds.TarWriter(str(temporary)) as writer:
            for offset in range(samples_per_shard):
                index = shard * samples_per_shard + offset
                multi = multi_frame_every > 0 and index % multi_frame_every == 0
                sample, images = synthetic_sample(index, frames=frames, size=size, seed=seed, multi_frame=multi)
                record = {"__key__": sample.key, "json": sample_to_json(sample)}
                for t, image in enumerate(images):
                    record[f"{t:02d}.jpg"] = jpeg_bytes(image)
                writer.write(record)
        temporary.replace(path)
        paths.append(path)
    return paths
