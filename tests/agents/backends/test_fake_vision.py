"""The fake grounder and segmenter: boxes from the pixels and ground-truth masks of synthetic clips, deterministic
boxes for other videos."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agents.backends.base import SegmentPrompt
from agents.backends.fake_vision import FakeGrounder, FakeSegmenter, filled_box_mask, hashed_central_box
from engine.masks import box_iou, decode_rle
from engine.synthetic import make_clip
from engine.video import read_frames

NUM_FRAMES = 8


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory):
    return make_clip(tmp_path_factory.mktemp("fake-vision") / "scene.mp4", seed=3, num_frames=NUM_FRAMES,
                     width=96, height=64, num_objects=2)


def test_grounder_finds_the_named_object_in_the_pixels(clip) -> None:
    truth = clip.ground_truth
    frame = read_frames(str(clip.path), [2])[0]
    for obj in truth.objects:
        for noun in (obj.name, f"the {obj.color} {obj.name}", obj.name.upper()):
            detection = FakeGrounder().ground(video_uri=str(clip.path), frame_index=2, frame=frame, noun=noun)
            assert detection is not None and detection.label == obj.name
            assert box_iou(detection.box, obj.boxes[2]) > 0.8  # H.264 blurs the edges a little
    black = np.zeros_like(frame)  # the object is not in these pixels: nothing is found, whatever the truth says
    noun = truth.objects[0].name
    assert FakeGrounder().ground(video_uri=str(clip.path), frame_index=2, frame=black, noun=noun) is None


def test_grounder_finds_an_entering_object_only_once_it_is_there(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "enter.mp4", seed=3, num_frames=8, width=96, height=64, num_objects=2, enters_at=4)
    late = clip.ground_truth.objects[-1]
    frames = read_frames(str(clip.path), list(range(8)))
    found = [FakeGrounder().ground(video_uri=str(clip.path), frame_index=i, frame=frames[i], noun=late.name)
             for i in range(8)]
    assert [d is not None for d in found] == [False] * 4 + [True] * 4
    assert all(box_iou(found[i].box, late.boxes[i]) > 0.8 for i in range(4, 8))


def test_grounder_without_a_sidecar_uses_a_colour_word(clip, tmp_path: Path) -> None:
    obj = clip.ground_truth.objects[0]
    frame = read_frames(str(clip.path), [2])[0]
    video = str(tmp_path / "no-sidecar.mp4")
    detection = FakeGrounder().ground(video_uri=video, frame_index=2, frame=frame, noun=f"a {obj.color} thing")
    assert detection is not None and box_iou(detection.box, obj.boxes[2]) > 0.8


def test_grounder_finds_nothing_for_a_noun_absent_from_a_synthetic_clip(clip) -> None:
    frame = np.zeros((clip.ground_truth.height, clip.ground_truth.width, 3), dtype=np.uint8)
    assert FakeGrounder().ground(video_uri=str(clip.path), frame_index=0, frame=frame, noun="giraffe") is None


def test_grounder_without_ground_truth_gives_a_deterministic_central_box(tmp_path: Path) -> None:
    frame = np.zeros((120, 200, 3), dtype=np.uint8)
    video = str(tmp_path / "no-sidecar.mp4")
    first = FakeGrounder().ground(video_uri=video, frame_index=0, frame=frame, noun="dog")
    again = FakeGrounder().ground(video_uri=video, frame_index=5, frame=frame, noun="dog")
    other = FakeGrounder().ground(video_uri=video, frame_index=0, frame=frame, noun="cat")
    assert first == again and first.box != other.box
    x0, y0, x1, y1 = first.box
    assert 0 <= x0 < 100 < x1 <= 200 and 0 <= y0 < 60 < y1 <= 120
    assert hashed_central_box("dog", width=200, height=120) == first.box


def test_segmenter_returns_true_masks_on_exactly_the_requested_frames(clip) -> None:
    truth = clip.ground_truth
    target = truth.objects[1]
    masklet = FakeSegmenter().segment(
        video_uri=str(clip.path), frame_indices=[0, 3, 6], key_frame=3, box=target.boxes[3]
    )
    assert masklet.frame_indices == (0, 3, 6) and masklet.key_frame == 3
    for index in (0, 3, 6):
        assert np.array_equal(decode_rle(masklet.masks[index]), decode_rle(target.masks[index]))


def test_segmenter_fills_the_box_when_it_matches_no_object(clip) -> None:
    truth = clip.ground_truth
    box = (0.0, 0.0, 4.0, 4.0)  # a corner no object covers
    masklet = FakeSegmenter().segment(video_uri=str(clip.path), frame_indices=[1, 2], key_frame=1, box=box)
    mask = decode_rle(masklet.masks[2])
    assert mask.shape == (truth.height, truth.width)
    assert mask.sum() == 16 and mask[:4, :4].all()


def test_filled_box_mask_covers_pixel_centres_inside_the_box() -> None:
    mask = filled_box_mask((1.0, 2.0, 4.0, 3.0), width=6, height=5)
    assert mask.sum() == 3 and mask[2, 1:4].all()


def test_segment_many_answers_each_prompt_as_segment_does(clip) -> None:
    truth = clip.ground_truth
    prompts = [SegmentPrompt(key_frame=k, box=obj.boxes[k]) for k, obj in zip((2, 5), truth.objects, strict=True)]
    prompts.append(SegmentPrompt(key_frame=1, box=(0.0, 0.0, 4.0, 4.0)))  # matches no object: the filled box
    segmenter = FakeSegmenter()
    many = segmenter.segment_many(video_uri=str(clip.path), frame_indices=[0, 3, 6], prompts=prompts)
    alone = [FakeSegmenter().segment(video_uri=str(clip.path), frame_indices=[0, 3, 6], key_frame=p.key_frame,
                                     box=p.box) for p in prompts]
    assert many == alone
    assert segmenter.stats.calls == 1 and segmenter.stats.objects == 3 and segmenter.stats.states_started == 0


def test_point_prompts_pick_the_object_under_the_positive_points_and_none_a_negative_point_hits(clip) -> None:
    truth = clip.ground_truth
    first, second = (decode_rle(o.masks[2]).astype(bool) for o in truth.objects[:2])
    inside = [(float(xs[0]), float(ys[0])) for ys, xs in (np.nonzero(first & ~second), np.nonzero(second & ~first))]
    segmenter = FakeSegmenter()

    def points(*labelled: tuple[tuple[float, float], int]) -> list[SegmentPrompt]:
        return [SegmentPrompt(key_frame=2, points=tuple((x, y, label) for (x, y), label in labelled))]

    [picked] = segmenter.segment_many(video_uri=str(clip.path), frame_indices=[0, 2, 5],
                                      prompts=points((inside[1], 1)))
    assert set(picked.masks) == {0, 2, 5}
    assert all((decode_rle(picked.masks[f]) == decode_rle(truth.objects[1].masks[f])).all() for f in (0, 2, 5))
    [refused] = segmenter.segment_many(video_uri=str(clip.path), frame_indices=[2],
                                       prompts=points((inside[1], 1), (inside[1], 0)))  # both on object 1
    assert not (decode_rle(refused.masks[2]) == decode_rle(truth.objects[1].masks[2])).all()
    with pytest.raises(ValueError, match="at least one point"):
        segmenter.segment_many(video_uri=str(clip.path), frame_indices=[2], prompts=points((inside[0], 0)))
