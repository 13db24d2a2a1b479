"""Sam2Segmenter: the sam2 video predictor with random weights on a tiny synthetic clip (CPU), and on CUDA."""

from __future__ import annotations

import pytest

from agents.backends.sam2_segmenter import Sam2Segmenter, thin_frames
from engine.config import Sam2Config
from engine.errors import ConfigError
from engine.synthetic import make_clip


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory):
    return make_clip(tmp_path_factory.mktemp("sam2") / "clip.mp4", seed=5, num_frames=12, width=96, height=64,
                     num_objects=1)


def _segment_both_ways(clip, config: Sam2Config) -> None:
    truth = clip.ground_truth
    segmenter = Sam2Segmenter(config)
    requested = [2, 7, 10]
    masklet = segmenter.segment(video_uri=str(clip.path), frame_indices=requested, key_frame=7,
                                box=truth.objects[0].boxes[7])
    # Frames before the key frame come from the backward pass, frames after it from the forward pass.
    assert masklet.frame_indices == tuple(requested)
    assert masklet.key_frame == 7 and masklet.box == truth.objects[0].boxes[7]
    assert all((m.height, m.width) == (truth.height, truth.width) for m in masklet.masks.values())


def test_random_weight_sam2_propagates_forward_and_backward_on_cpu(clip) -> None:
    _segment_both_ways(clip, Sam2Config(device="cpu", image_size=256))


@pytest.mark.gpu
def test_sam2_on_cuda(clip) -> None:
    _segment_both_ways(clip, Sam2Config(device="cuda", image_size=512))


def test_unknown_sam2_config_is_a_config_error(clip) -> None:
    segmenter = Sam2Segmenter(Sam2Config(config_name="configs/sam2.1/no_such_model.yaml"))
    with pytest.raises(ConfigError):
        segmenter.segment(video_uri=str(clip.path), frame_indices=[0, 1], key_frame=0, box=(1.0, 1.0, 9.0, 9.0))


def test_thin_frames_keeps_the_key_frame_and_spreads_the_rest() -> None:
    assert thin_frames([5, 1, 3, 3], key_frame=2, max_frames=10) == [1, 2, 3, 5]
    thinned = thin_frames(range(100), key_frame=37, max_frames=5)
    assert len(thinned) == 5 and 37 in thinned and thinned[0] == 0 and thinned[-1] == 99
    assert thin_frames(range(10), key_frame=4, max_frames=1) == [4]
