"""Sam2Segmenter: transformers' SAM 2 video model with tiny random weights on tiny synthetic clips (CPU), and on CUDA.

The equality with the sam2 package on the same weights is tests/agents/backends/test_sam2_equality.py; here: the
both-ways propagation, several objects of a call each as if alone, batched image encoding equal to the per-frame
loop, point prompts, random weights reproducible, and config errors before any model work.
"""

from __future__ import annotations

import numpy as np
import pytest

from agents.backends.base import SegmentPrompt
from agents.backends.sam2_segmenter import Sam2Segmenter, thin_frames
from engine.config import Sam2Config, parse_config
from engine.errors import ConfigError
from engine.masks import decode_rle
from engine.synthetic import make_clip
from engine.video import read_frames

FRAMES = [0, 2, 3, 5, 7, 8, 10, 11]
TINY = Sam2Config(device="cpu", random_weights=True, encoder_batch=4)


@pytest.fixture(scope="module")
def clip3(tmp_path_factory: pytest.TempPathFactory):
    return make_clip(tmp_path_factory.mktemp("sam2-3") / "clip.mp4", seed=11, num_frames=12, width=128, height=96,
                     num_objects=3)


@pytest.fixture(scope="module")
def frames(clip3):
    return dict(zip(FRAMES, read_frames(str(clip3.path), FRAMES), strict=True))


@pytest.fixture(scope="module")
def tiny() -> Sam2Segmenter:
    return Sam2Segmenter(TINY)


def _both_ways(clip, segmenter: Sam2Segmenter) -> None:
    truth = clip.ground_truth
    requested = [2, 7, 10]
    masklet = segmenter.segment(video_uri=str(clip.path), frame_indices=requested, key_frame=7,
                                box=truth.objects[0].boxes[7])
    # Frames before the key frame come from the backward pass, frames after it from the forward pass.
    assert masklet.frame_indices == tuple(requested)
    assert masklet.key_frame == 7 and masklet.box == truth.objects[0].boxes[7]
    assert all((m.height, m.width) == (truth.height, truth.width) for m in masklet.masks.values())


def test_random_weight_sam2_propagates_forward_and_backward_on_cpu(clip3, tiny, one_torch_thread) -> None:
    _both_ways(clip3, tiny)


@pytest.mark.gpu
def test_sam2_on_cuda(clip3) -> None:
    _both_ways(clip3, Sam2Segmenter(Sam2Config(device="cuda", image_size=512, random_weights=True)))


def test_objects_of_one_call_are_each_segmented_as_alone_and_batching_changes_nothing(
    clip3, frames, tiny, one_torch_thread
) -> None:
    truth = clip3.ground_truth
    keys = [2, 7, 11]  # different key frames: each object is tracked forward and backward from its own
    prompts = [SegmentPrompt(key_frame=k, box=obj.boxes[k]) for k, obj in zip(keys, truth.objects, strict=True)]
    before = tiny.stats
    together = tiny.segment_many(video_uri=str(clip3.path), frame_indices=FRAMES, prompts=prompts, frames=frames)
    after = tiny.stats
    assert after.frames_encoded - before.frames_encoded == len(FRAMES)  # once per frame, not per object
    assert after.encoder_batches - before.encoder_batches == 2  # 8 frames, 4 at a time
    assert after.frame_reads == before.frame_reads  # the frames passed in were used: nothing decoded again
    per_frame = Sam2Segmenter(Sam2Config(device="cpu", random_weights=True, encoder_batch=1))
    for masklet, prompt in zip(together, prompts, strict=True):
        assert masklet.key_frame == prompt.key_frame and masklet.box == prompt.box
        [alone] = per_frame.segment_many(video_uri=str(clip3.path), frame_indices=FRAMES, prompts=[prompt],
                                         frames=frames)
        assert alone.masks.keys() == masklet.masks.keys()
        for frame, mask in masklet.masks.items():  # batched encoding: equal up to float summation order
            a, b = decode_rle(mask), decode_rle(alone.masks[frame])
            assert np.logical_xor(a, b).sum() <= 0.001 * a.size
    assert per_frame.stats.encoder_batches == 3 * len(FRAMES)


def test_points_prompt_and_one_prompt_is_segment(clip3, frames, tiny, one_torch_thread) -> None:
    box = clip3.ground_truth.objects[1].boxes[5]
    single = tiny.segment(video_uri=str(clip3.path), frame_indices=FRAMES, key_frame=5, box=box)
    reads = tiny.stats.frame_reads
    [many] = tiny.segment_many(video_uri=str(clip3.path), frame_indices=FRAMES,
                               prompts=[SegmentPrompt(key_frame=5, box=box)])
    assert tiny.stats.frame_reads == reads + 1  # no frames passed in: read once by the segmenter
    assert many == single
    centre = ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2, 1)
    [by_point] = tiny.segment_many(video_uri=str(clip3.path), frame_indices=FRAMES, frames=frames,
                                   prompts=[SegmentPrompt(key_frame=5, points=(centre,))])
    assert by_point.frame_indices == tuple(FRAMES) and by_point.box is None
    assert tiny.segment_many(video_uri=str(clip3.path), frame_indices=FRAMES, prompts=[]) == []


def test_random_weights_are_the_same_in_every_segmenter(clip3, tiny, one_torch_thread) -> None:
    truth = clip3.ground_truth
    args = {"video_uri": str(clip3.path), "frame_indices": [0, 4, 8], "key_frame": 4, "box": truth.objects[0].boxes[4]}
    assert Sam2Segmenter(TINY).segment(**args) == tiny.segment(**args)


def test_a_folder_that_is_no_sam2_model_is_a_config_error(clip3, tmp_path) -> None:
    segmenter = Sam2Segmenter(Sam2Config(model=str(tmp_path / "no-such-model")))
    with pytest.raises(ConfigError, match="sam2 cannot load"):
        segmenter.segment(video_uri=str(clip3.path), frame_indices=[0, 1], key_frame=0, box=(1.0, 1.0, 9.0, 9.0))


def test_a_config_without_weights_or_with_the_old_package_keys_is_refused_before_any_model_work() -> None:
    with pytest.raises(ValueError, match="random_weights"):
        Sam2Config(device="cpu")
    with pytest.raises(ValueError, match="not both"):
        Sam2Config(model="models/sam2.1-hiera-tiny", random_weights=True)
    with pytest.raises(ValueError, match="real weights have their own"):
        Sam2Config(model="models/sam2.1-hiera-tiny", image_size=512)
    with pytest.raises(ConfigError, match="random_weights"):
        Sam2Segmenter(Sam2Config.model_construct(device="cpu"))  # an unvalidated config: refused by the backend
    with pytest.raises(ConfigError, match="facebook/sam2.1-hiera-large"):  # says what to do instead
        parse_config({"agents": {"segmenter": {"kind": "sam2", "checkpoint": "checkpoints/sam2.1_hiera_tiny.pt"}}})


def test_a_prompt_needs_a_box_or_a_point() -> None:
    with pytest.raises(ValueError, match="box or at least one point"):
        SegmentPrompt(key_frame=0)
    with pytest.raises(ValueError, match="labels"):
        SegmentPrompt(key_frame=0, points=((1.0, 2.0, 3),))


def test_thin_frames_keeps_the_key_frames_and_spreads_the_rest() -> None:
    assert thin_frames([5, 1, 3, 3], key_frame=2, max_frames=10) == [1, 2, 3, 5]
    thinned = thin_frames(range(100), key_frame=37, max_frames=5)
    assert len(thinned) == 5 and 37 in thinned and thinned[0] == 0 and thinned[-1] == 99
    assert thin_frames(range(10), key_frame=4, max_frames=1) == [4]
    several = thin_frames(range(100), key_frame=[37, 38, 90], max_frames=6)
    assert len(several) == 6 and {37, 38, 90} <= set(several) and several[0] == 0 and several[-1] == 99
    assert thin_frames(range(10), key_frame=[1, 5, 8], max_frames=2) == [1, 5, 8]  # key frames always kept
