"""Synthetic engine records, samples and frames for the storage tests, built with numpy only (no video needed)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from engine.ids import clip_id, object_id
from engine.masks import encode_rle
from engine.types import (
    Clip,
    Descriptions,
    GivenObject,
    Masklet,
    ObjectRecord,
    Provenance,
    Review,
    RleMask,
    Sample,
    SampleObject,
    Turn,
)
from storage.root import DatasetRoot
from storage.samples import vision_grid

HEIGHT, WIDTH = 48, 64
GRID = vision_grid(384)  # the release's 27 x 27 SigLIP grid


def box_mask(y0: int, x0: int, y1: int, x1: int, height: int = HEIGHT, width: int = WIDTH) -> RleMask:
    mask = np.zeros((height, width), dtype=bool)
    mask[y0:y1, x0:x1] = True
    return RleMask.from_coco(encode_rle(mask))


def random_mask(rng: np.random.Generator, height: int = HEIGHT, width: int = WIDTH) -> RleMask:
    y0, x0 = int(rng.integers(0, height // 2)), int(rng.integers(0, width // 2))
    return box_mask(
        y0, x0, y0 + int(rng.integers(8, height // 2)), x0 + int(rng.integers(8, width // 2)), height, width
    )


def make_clip(name: str = "clip", *, given: bool = False) -> Clip:
    cid = clip_id(f"file:///videos/{name}.mp4", 0.0, 4.0)
    given_objects = ()
    if given:
        given_objects = (
            GivenObject(
                name="dog",
                expression="the dog running left",
                masklet=Masklet(masks={0: box_mask(2, 2, 20, 20)}, key_frame=0),
                category="animal",
            ),
        )
    return Clip(
        clip_id=cid,
        video_uri=f"file:///videos/{name}.mp4",
        caption=f"a dog runs in {name}",
        start_s=0.0,
        end_s=4.0,
        fps=25.0,
        width=WIDTH,
        height=HEIGHT,
        num_frames=100,
        source="synthetic",
        given_objects=given_objects,
    )


def make_record(
    name: str = "clip",
    noun: str = "dog",
    *,
    seed: int = 0,
    frames: tuple[int, ...] = (0, 10, 20, 30),
    full: bool = True,
) -> ObjectRecord:
    """A fully enriched record (every optional field set) or, with `full=False`, a bare analyzer output."""
    rng = np.random.default_rng(seed)
    clip = make_clip(name)
    oid = object_id(clip.clip_id, noun, frames[1])
    if not full:
        return ObjectRecord(object_id=oid, clip=clip, noun=noun)
    return ObjectRecord(
        object_id=oid,
        clip=clip,
        noun=noun,
        is_subject=False,
        category="animal",
        expression="the brown dog",
        descriptions=Descriptions(appearance="brown fur", motion="runs left", is_static=False),
        masklet=Masklet(
            masks={f: random_mask(rng) for f in frames}, key_frame=frames[1], box=(1.0, 2.5, 30.0, 40.0), score=0.9
        ),
        review=Review(region_caption="a dog", accepted=True, reason="same object"),
        detailed_caption="A brown dog runs to the left across the grass.",
        short_caption="a dog running",
        provenance=(
            Provenance(
                agent="analyzer",
                backend="fake",
                model="fake-chat",
                prompt_version="abc",
                latency_s=0.25,
                prompt_tokens=10,
                completion_tokens=5,
            ),
            Provenance(agent="refiner", backend="openai", model="gpt-4o"),
        ),
    )


def make_sample(key: str = "detailed_0001", *, frames: tuple[int, ...] = (0, 5, 10), regions: int = 1) -> Sample:
    rng = np.random.default_rng(len(key))
    objects = tuple(
        SampleObject(object_id=f"obj{i}", category="dog", masks={f: random_mask(rng) for f in frames})
        for i in range(regions)
    )
    question = "<video>\nPlease describe in detail " + " and ".join(["the object <region>"] * regions) + "."
    return Sample(
        key=key,
        task="detailed",
        video_uri="file:///videos/clip.mp4",
        conversations=(Turn(role="human", value=question), Turn(role="gpt", value="A dog runs.")),
        objects=objects,
        frame_indices=frames,
        clip_id="c0ffee",
        height=HEIGHT,
        width=WIDTH,
        provenance=(Provenance(agent="refiner", backend="fake", model="fake-chat"),),
        extra={"mode": "multi"},
    )


def make_frames(count: int, *, seed: int = 0, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """Smooth random RGB frames (compressible like real video, so JPEG round trips stay close)."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width]
    frames = []
    for _ in range(count):
        a, b, c = rng.uniform(0.5, 3.0, size=3)
        base = np.stack([np.sin(xs / (8 * a)), np.cos(ys / (8 * b)), np.sin((xs + ys) / (8 * c))], axis=-1)
        frames.append(((base + 1) * 127.5).astype(np.uint8))
    return np.stack(frames)


@pytest.fixture(params=["local", "memory"])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DatasetRoot]:
    """A dataset root on local disk and one in fsspec's in-memory file system."""
    if request.param == "local":
        yield DatasetRoot(tmp_path / "ds")
        return
    memory_root = DatasetRoot(f"memory://storage-tests/{uuid.uuid4().hex}")
    yield memory_root
    if memory_root.exists(""):
        memory_root.fs.rm(memory_root.full_path(""), recursive=True)
