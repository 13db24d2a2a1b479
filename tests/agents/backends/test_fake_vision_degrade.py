"""The fake segmenter's labelled degradation (`FakeSegmenterConfig.degrade`): off by default, damages as it says."""

from __future__ import annotations

import numpy as np
import pytest

from agents.backends.fake_vision import FakeSegmenter, degrade_mask
from engine.config import FakeSegmenterConfig, MaskDegradation, parse_config
from engine.errors import ConfigError
from engine.masks import decode_rle, iou
from engine.synthetic import make_clip


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory):
    return make_clip(tmp_path_factory.mktemp("degrade") / "c.mp4", seed=3, num_frames=6, width=96, height=64,
                     num_objects=1)


def _masklet(clip, **degrade: int):
    obj = clip.ground_truth.objects[0]
    segmenter = FakeSegmenter(FakeSegmenterConfig(degrade=MaskDegradation(**degrade)))
    masklet = segmenter.segment(video_uri=str(clip.path), frame_indices=[0, 2, 5], key_frame=2, box=obj.boxes[2])
    return segmenter, masklet, obj


def test_off_by_default_the_masks_are_the_ground_truth(clip) -> None:
    segmenter, masklet, obj = _masklet(clip)
    assert not FakeSegmenterConfig().degrade.active and segmenter.model == "fake-segmenter"
    assert all(masklet.masks[i] == obj.masks[i] for i in (0, 2, 5))


def test_a_shift_moves_every_mask_right_and_down_and_says_so(clip) -> None:
    segmenter, masklet, obj = _masklet(clip, shift_px=3)
    assert segmenter.model == "fake-segmenter+degraded(shift_px=3)"
    for index in (0, 2, 5):
        truth, got = decode_rle(obj.masks[index]), decode_rle(masklet.masks[index])
        expected = np.zeros_like(truth)
        expected[3:, 3:] = truth[:-3, :-3]
        assert np.array_equal(got, expected) and iou(got, truth) < 1.0


def test_erosion_shrinks_and_dilation_grows(clip) -> None:
    _, eroded, obj = _masklet(clip, erode_px=2)
    _, dilated, _ = _masklet(clip, dilate_px=2)
    truth = decode_rle(obj.masks[2])
    small, large = decode_rle(eroded.masks[2]), decode_rle(dilated.masks[2])
    assert small.sum() < truth.sum() < large.sum()
    assert not (small & ~truth).any() and not (truth & ~large).any()
    segmenter, _, _ = _masklet(clip, shift_px=1, erode_px=1, dilate_px=2)
    assert segmenter.model == "fake-segmenter+degraded(shift_px=1,erode_px=1,dilate_px=2)"


def test_degrade_mask_edge_cases() -> None:
    mask = np.ones((4, 5), dtype=bool)
    assert not degrade_mask(mask, MaskDegradation(shift_px=9)).any()  # shifted out of the frame
    assert degrade_mask(mask, MaskDegradation(erode_px=1)).sum() == 2 * 3  # the frame edge is background
    assert np.array_equal(degrade_mask(mask, MaskDegradation()), mask)


def test_negative_settings_are_refused_and_the_config_file_form_parses() -> None:
    with pytest.raises(ConfigError, match="shift_px"):
        parse_config({"agents": {"segmenter": {"kind": "fake", "degrade": {"shift_px": -1}}}})
    config = parse_config({"base_profile": "offline",
                           "agents": {"segmenter": {"kind": "fake", "degrade": {"shift_px": 4, "erode_px": 1}}}})
    assert config.agents.segmenter.degrade == MaskDegradation(shift_px=4, erode_px=1)
