"""Sam2Segmenter: the sam2 video predictor with random weights on tiny synthetic clips (CPU), and on CUDA.

The multi-object path (`segment_many`: one inference state, one propagation for all objects of a clip) is
checked against SAM 2's own single-object path (a fresh state per object, `propagate_in_video` forward then
backward from the object's key frame), which is what the segmenter did per object before.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest

from agents.backends.base import SegmentPrompt
from agents.backends.sam2_segmenter import Sam2Segmenter, thin_frames
from engine.config import Sam2Config
from engine.errors import ConfigError
from engine.masks import encode_rle
from engine.synthetic import make_clip
from engine.types import RleMask
from engine.video import read_frames

pytest.importorskip("sam2")

FRAMES = [0, 2, 3, 5, 7, 8, 10, 11]
TINY = Sam2Config(device="cpu", image_size=256, random_weights=True)


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory):
    return make_clip(tmp_path_factory.mktemp("sam2") / "clip.mp4", seed=5, num_frames=12, width=96, height=64,
                     num_objects=1)


@pytest.fixture(scope="module")
def clip3(tmp_path_factory: pytest.TempPathFactory):
    return make_clip(tmp_path_factory.mktemp("sam2-3") / "clip.mp4", seed=11, num_frames=12, width=128, height=96,
                     num_objects=3)


@pytest.fixture(scope="module")
def tiny() -> Sam2Segmenter:
    return Sam2Segmenter(TINY)


def _segment_both_ways(clip, segmenter: Sam2Segmenter) -> None:
    truth = clip.ground_truth
    requested = [2, 7, 10]
    masklet = segmenter.segment(video_uri=str(clip.path), frame_indices=requested, key_frame=7,
                                box=truth.objects[0].boxes[7])
    # Frames before the key frame come from the backward pass, frames after it from the forward pass.
    assert masklet.frame_indices == tuple(requested)
    assert masklet.key_frame == 7 and masklet.box == truth.objects[0].boxes[7]
    assert all((m.height, m.width) == (truth.height, truth.width) for m in masklet.masks.values())


def test_random_weight_sam2_propagates_forward_and_backward_on_cpu(clip, tiny) -> None:
    _segment_both_ways(clip, tiny)


@pytest.mark.gpu
def test_sam2_on_cuda(clip) -> None:
    _segment_both_ways(clip, Sam2Segmenter(Sam2Config(device="cuda", image_size=512, random_weights=True)))


def _alone(predictor, video: str, indices: list[int], key: int, box) -> dict[int, RleMask]:
    """One object through SAM 2's public single-object path: its own state, propagate_in_video both ways."""
    import torch
    from PIL import Image

    with tempfile.TemporaryDirectory() as folder, torch.inference_mode():
        for position, frame in enumerate(read_frames(video, indices)):
            Image.fromarray(frame).save(Path(folder) / f"{position:05d}.jpg", quality=95)
        state = predictor.init_state(video_path=folder, offload_video_to_cpu=True)
        local_key = indices.index(key)
        predictor.add_new_points_or_box(state, frame_idx=local_key, obj_id=1, box=np.asarray(box, dtype=np.float32))
        masks = {}
        for reverse in (False, True):
            for position, _ids, logits in predictor.propagate_in_video(state, start_frame_idx=local_key,
                                                                       reverse=reverse):
                masks[indices[position]] = RleMask.from_coco(encode_rle((logits[0, 0] > 0.0).cpu().numpy()))
    return dict(sorted(masks.items()))


def test_three_objects_share_one_state_and_match_segmenting_each_alone(clip3, tiny) -> None:
    truth = clip3.ground_truth
    keys = [2, 7, 11]  # different key frames: each object is tracked forward and backward from its own
    prompts = [SegmentPrompt(key_frame=k, box=obj.boxes[k]) for k, obj in zip(keys, truth.objects, strict=True)]
    frames = dict(zip(FRAMES, read_frames(str(clip3.path), FRAMES), strict=True))
    before = tiny.stats
    masklets = tiny.segment_many(video_uri=str(clip3.path), frame_indices=FRAMES, prompts=prompts, frames=frames)
    after = tiny.stats
    assert after.states_started - before.states_started == 1
    assert after.propagations - before.propagations == 1
    assert after.frame_reads == before.frame_reads  # the frames passed in were used: nothing decoded again
    assert after.objects - before.objects == 3
    for masklet, prompt in zip(masklets, prompts, strict=True):
        assert masklet.key_frame == prompt.key_frame and masklet.box == prompt.box
        reference = _alone(tiny._predictor, str(clip3.path), FRAMES, prompt.key_frame, prompt.box)
        assert dict(masklet.masks) == reference
    assert any(m.counts != RleMask.from_coco(encode_rle(np.zeros((96, 128), bool))).counts
               for masklet in masklets for m in masklet.masks.values())  # not trivially empty


def test_one_prompt_is_exactly_segment(clip3, tiny) -> None:
    truth = clip3.ground_truth
    box = truth.objects[1].boxes[5]
    single = tiny.segment(video_uri=str(clip3.path), frame_indices=FRAMES, key_frame=5, box=box)
    reads = tiny.stats.frame_reads
    [many] = tiny.segment_many(video_uri=str(clip3.path), frame_indices=FRAMES,
                               prompts=[SegmentPrompt(key_frame=5, box=box)])
    assert tiny.stats.frame_reads == reads + 1  # no frames passed in: read once by the segmenter
    assert many == single
    assert tiny.segment_many(video_uri=str(clip3.path), frame_indices=FRAMES, prompts=[]) == []


def test_random_weights_are_the_same_in_every_segmenter(clip3, tiny) -> None:
    truth = clip3.ground_truth
    args = {"video_uri": str(clip3.path), "frame_indices": [0, 4, 8], "key_frame": 4, "box": truth.objects[0].boxes[4]}
    assert Sam2Segmenter(TINY).segment(**args) == tiny.segment(**args)


def test_unknown_sam2_config_is_a_config_error(clip) -> None:
    segmenter = Sam2Segmenter(Sam2Config(config_name="configs/sam2.1/no_such_model.yaml", random_weights=True))
    with pytest.raises(ConfigError):
        segmenter.segment(video_uri=str(clip.path), frame_indices=[0, 1], key_frame=0, box=(1.0, 1.0, 9.0, 9.0))


def test_a_config_without_weights_is_refused_before_any_model_work() -> None:
    with pytest.raises(ValueError, match="random_weights"):
        Sam2Config(device="cpu")
    with pytest.raises(ConfigError, match="random_weights"):
        Sam2Segmenter(Sam2Config.model_construct(device="cpu"))  # an unvalidated config: refused by the backend


def test_thin_frames_keeps_the_key_frames_and_spreads_the_rest() -> None:
    assert thin_frames([5, 1, 3, 3], key_frame=2, max_frames=10) == [1, 2, 3, 5]
    thinned = thin_frames(range(100), key_frame=37, max_frames=5)
    assert len(thinned) == 5 and 37 in thinned and thinned[0] == 0 and thinned[-1] == 99
    assert thin_frames(range(10), key_frame=4, max_frames=1) == [4]
    several = thin_frames(range(100), key_frame=[37, 38, 90], max_frames=6)
    assert len(several) == 6 and {37, 38, 90} <= set(several) and several[0] == 0 and several[-1] == 99
    assert thin_frames(range(10), key_frame=[1, 5, 8], max_frames=2) == [1, 5, 8]  # key frames always kept
