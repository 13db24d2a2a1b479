"""Quality of the fake grounder + segmenter path on synthetic clips: mask IoU against the ground truth.

The path is the segmentor's: read the key frame, ground the noun, segment from the box on uniformly spaced
frames. IoU is computed with `engine.masks.iou` on decoded masks against the sidecar's masks, so a fake that
drifted (wrong object, wrong frame keys, shifted masks) would lower it. For fakes it must be exactly 1.0.
"""

from __future__ import annotations

import numpy as np
import pytest

from agents.backends.fake_vision import FakeGrounder, FakeSegmenter
from engine.masks import decode_rle, iou
from engine.synthetic import make_corpus
from engine.video import read_frames

NUM_FRAMES = 10


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory):
    return make_corpus(tmp_path_factory.mktemp("quality"), 3, seed=11, num_frames=NUM_FRAMES, width=96, height=64)


def test_fake_grounder_and_segmenter_reproduce_ground_truth_masks(
    corpus, record_property: pytest.RecordProperty
) -> None:
    grounder, segmenter = FakeGrounder(), FakeSegmenter()
    scores: list[float] = []
    for clip in corpus:
        truth = clip.ground_truth
        frame_indices = [0, 3, 6, 9]
        key_frame = 3
        key_image = read_frames(clip.path, [key_frame])[0]
        for obj in truth.objects:
            detection = grounder.ground(
                video_uri=str(clip.path), frame_index=key_frame, frame=key_image, noun=obj.name
            )
            assert detection is not None, f"{obj.name} not grounded in {clip.path.name}"
            masklet = segmenter.segment(
                video_uri=str(clip.path), frame_indices=frame_indices, key_frame=key_frame, box=detection.box
            )
            assert masklet.frame_indices == tuple(frame_indices)
            for index in frame_indices:
                scores.append(iou(decode_rle(masklet.masks[index]), decode_rle(obj.masks[index])))
    mean_iou = float(np.mean(scores))
    record_property("fake_vision_mean_iou", mean_iou)
    print(f"fake grounder+segmenter mean IoU over {len(scores)} masks: {mean_iou:.4f}")
    assert len(scores) >= 3 * 4 and mean_iou == pytest.approx(1.0)


def test_iou_is_low_for_another_objects_masks(corpus) -> None:
    """The measurement itself can fail: the masks of a different object score well below 1."""
    clip = next(c for c in corpus if len(c.ground_truth.objects) >= 2)
    first, second = clip.ground_truth.objects[:2]
    masklet = FakeSegmenter().segment(
        video_uri=str(clip.path), frame_indices=[0, 5], key_frame=0, box=second.boxes[0]
    )
    assert iou(decode_rle(masklet.masks[5]), decode_rle(first.masks[5])) < 0.5
