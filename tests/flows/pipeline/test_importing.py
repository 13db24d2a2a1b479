"""The VideoRefer-700K import: sampled frames by the release's rule, every annotated frame kept as a frame of its own.

The videos are the project's synthetic H.264 clips (`engine.synthetic`), so each stored image can be checked
against the very frame of the video it claims to be. No Prefect server: the stage functions are called directly.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from engine.synthetic import SyntheticClip, make_clip
from engine.video import read_frames, resize_frames, uniform_indices
from flows.pipeline.export import exported_tars
from flows.pipeline.importing import import_700k_shard, plan_import
from storage.wds import iter_samples
from tests.flows.conftest import tiny_config

NUM_FRAMES = 40
SIZE = 48  # the tiny config's `sampling.image_size`
QUESTION = "<video>\nWhat do <region> and <region> do in the video?"


def _item(clip: SyntheticClip, frames_per_object: list[list[int]], answer: str) -> dict:
    objects, last = clip.ground_truth.objects, clip.ground_truth.num_frames - 1  # a frame past the end: last mask
    return {
        "video": clip.path.name,
        "conversations": [{"from": "human", "value": QUESTION}, {"from": "gpt", "value": answer}],
        "annotation": [
            {str(f): {"segmentation": objects[k].masks[min(f, last)].to_coco()} for f in frames}
            for k, frames in enumerate(frames_per_object)
        ],
    }


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> dict:
    directory = tmp_path_factory.mktemp("import700k")
    videos = directory / "videos"
    clip = make_clip(videos / "clip.mp4", seed=11, num_frames=NUM_FRAMES, width=64, height=48)
    long_clip = make_clip(videos / "long.mp4", seed=12, num_frames=120, width=64, height=48)
    uniform = uniform_indices(NUM_FRAMES, 4)
    # Object 0: two sampled frames and two others; object 1: one sampled frame and two others.
    on_and_off = [[uniform[0], 10, uniform[2], 37], [2, uniform[1], 38]]
    items = [
        _item(clip, on_and_off, "Both move."),
        _item(clip, [[uniform[0], NUM_FRAMES + 3], [uniform[1]]], "Beyond the end."),
        _item(long_clip, [list(range(0, 101)), [60]], "Too many frames."),  # 4 sampled + 98 extra frames
    ]
    source = directory / "released.json"
    source.write_text(json.dumps(items))
    root = directory / "root"
    config = tiny_config()
    (chunk,) = plan_import(root, source, config)
    report = import_700k_shard(root, source, videos, chunk, config)
    samples = list(iter_samples(exported_tars(root)))
    return {"report": report, "samples": samples, "clip": clip, "uniform": uniform, "annotated": on_and_off}


def test_every_annotated_frame_is_kept_after_the_uniform_frames(imported: dict) -> None:
    ((sample, _),) = imported["samples"]
    uniform, annotated = imported["uniform"], imported["annotated"]
    assert uniform == [5, 15, 24, 34]
    assert list(sample.frame_indices) == uniform
    every = sorted({f for frames in annotated for f in frames})
    assert list(sample.extra_frame_indices) == [f for f in every if f not in uniform] == [2, 10, 37, 38]
    assert [sorted(obj.masks) for obj in sample.objects] == [sorted(frames) for frames in annotated]


def test_stored_images_are_the_frames_they_name(imported: dict) -> None:
    ((sample, images),) = imported["samples"]
    video = resize_frames(read_frames(imported["clip"].path, list(range(NUM_FRAMES))), SIZE)
    assert len(images) == len(sample.stored_frame_indices) == 8
    for image, index in zip(images, sample.stored_frame_indices, strict=True):
        errors = [np.abs(image.astype(int) - frame.astype(int)).mean() for frame in video]
        assert int(np.argmin(errors)) == index and errors[index] < 4, (index, int(np.argmin(errors)))


def test_samples_that_cannot_be_stored_are_rejects_with_reasons(imported: dict) -> None:
    report = imported["report"]
    assert report.items_in == 3 and report.items_out == 1
    assert report.rejects == {"frame_out_of_range": 1, "too_many_frames": 1}
