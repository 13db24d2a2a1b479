"""Sam3Segmenter: transformers' SAM 3 video model with tiny random weights on a tiny synthetic clip (CPU).

Random weights find meaningless instances; what is tested is the plumbing: every instance of every phrase comes
back under its phrase with one id for the whole clip, masks at the video's size from the frame it was first found
on, and the tracker path (`segment_many`: boxes or points) works on SAM 3's own image features. (The tiny model's
tracker says "object present" everywhere, so that random instances stay tracked instead of vanishing.)
"""

from __future__ import annotations

import pytest

from agents.backends.base import PhraseSegmenter, SegmentPrompt
from agents.backends.factory import build_segmenter
from engine.errors import ConfigError
from engine.synthetic import make_clip
from engine.video import read_frames

FRAMES = list(range(5))


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory):
    return make_clip(tmp_path_factory.mktemp("sam3") / "clip.mp4", seed=11, num_frames=5, width=64, height=48,
                     num_objects=2)


@pytest.fixture(scope="module")
def frames(clip):
    return dict(zip(FRAMES, read_frames(str(clip.path), FRAMES), strict=True))


@pytest.fixture(scope="module")
def sam3():
    return build_segmenter({"kind": "sam3", "random_weights": True, "image_size": 56, "encoder_batch": 2})


def test_every_instance_of_every_phrase_keeps_one_id(clip, frames, sam3, one_torch_thread) -> None:
    assert isinstance(sam3, PhraseSegmenter) and sam3.kind == "sam3" and "random" in sam3.model
    found = sam3.segment_phrases(video_uri=str(clip.path), frame_indices=FRAMES, phrases=["Red  Ball", "box"],
                                 frames=frames)
    assert list(found) == ["red ball", "box"]  # normalised phrases, in order
    instances = [i for phrase in found.values() for i in phrase]
    assert instances and len({i.instance_id for i in instances}) == len(instances)  # one id per instance
    for instance in instances:
        masks = instance.masklet.masks
        assert min(masks) == instance.first_frame == instance.masklet.key_frame
        assert sorted(masks) == FRAMES[FRAMES.index(instance.first_frame):]  # tracked on every later frame
        assert all((m.height, m.width) == (48, 64) for m in masks.values())
    assert sam3.stats.frame_reads == 0


def test_boxes_and_points_go_through_the_sam3_tracker(clip, frames, sam3, one_torch_thread) -> None:
    box = clip.ground_truth.objects[0].boxes[2]
    prompts = [SegmentPrompt(key_frame=2, box=box), SegmentPrompt(key_frame=3, points=((30.0, 20.0, 1),))]
    before = sam3.stats
    masklets = sam3.segment_many(video_uri=str(clip.path), frame_indices=FRAMES, prompts=prompts, frames=frames)
    assert [m.key_frame for m in masklets] == [2, 3] and all(m.frame_indices == tuple(FRAMES) for m in masklets)
    assert sam3.stats.frames_encoded - before.frames_encoded == len(FRAMES)
    assert sam3.stats.encoder_batches - before.encoder_batches == 3  # 5 frames, 2 at a time


def test_a_sam3_folder_without_a_model_is_a_config_error(clip, tmp_path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):  # a missing folder: at build time
        build_segmenter({"kind": "sam3", "model": str(tmp_path / "nothing")})
    (tmp_path / "empty").mkdir()
    segmenter = build_segmenter({"kind": "sam3", "model": str(tmp_path / "empty")})
    with pytest.raises(ConfigError, match="sam3 cannot load"):  # a folder that holds no model: when it loads
        segmenter.segment_phrases(video_uri=str(clip.path), frame_indices=[0], phrases=["ball"])
    with pytest.raises(ConfigError, match="facebook/sam3"):
        build_segmenter({"kind": "sam3"})
