"""flows.interactive: opening videos within limits, prompting objects, questions with <region> references, the
masks the model pools, streaming, and the two downloads (700K masks JSON, training sample)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from agents.backends.factory import build_segmenter
from engine.errors import BadVideoError, InvalidSampleError, NoMaskError, VideoTooLargeError
from engine.masks import decode_rle, encode_rle, iou
from engine.types import Masklet, RleMask
from flows.interactive import (
    Answered,
    AppLimits,
    Prompt,
    add_object,
    box_from_corners,
    masks_json,
    model_masks,
    open_video,
    overlay,
    parse_question,
    remove_object,
    segment,
    stream_answer,
    training_sample,
)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    from engine.synthetic import make_clip

    return make_clip(tmp_path_factory.mktemp("interactive") / "clip.mp4", seed=7, num_frames=20, width=96, height=64,
                     num_objects=2)


def _rle(mask: np.ndarray) -> RleMask:
    return RleMask.from_coco(encode_rle(mask))


def test_open_video_chooses_shown_segmented_and_sampled_frames(clip) -> None:
    opened = open_video(clip.path, AppLimits(max_frames=8), model_frames=4)
    assert opened.info.num_frames == 20 and len(opened.shown_frames) == 8
    assert opened.shown_frames[0] == 0 and opened.shown_frames[-1] == 19
    assert set(opened.shown_frames) <= set(opened.segment_frames)
    from engine.video import uniform_indices

    assert set(uniform_indices(20, 4)) <= set(opened.segment_frames)


def test_open_video_refuses_what_the_limits_refuse(clip, tmp_path) -> None:
    not_a_video = tmp_path / "notes.mp4"
    not_a_video.write_text("this is not a video")
    with pytest.raises(BadVideoError):
        open_video(not_a_video, AppLimits(), model_frames=4)
    with pytest.raises(VideoTooLargeError, match="bytes"):
        open_video(clip.path, AppLimits(max_video_bytes=100), model_frames=4)
    with pytest.raises(VideoTooLargeError, match="long"):
        open_video(clip.path, AppLimits(max_seconds=0.5), model_frames=4)
    with pytest.raises(VideoTooLargeError, match="max_decoded_pixels"):
        open_video(clip.path, AppLimits(max_decoded_pixels=96 * 64 * 3), model_frames=4)


def test_a_box_prompt_gives_the_objects_masklet_over_the_segmented_frames(clip) -> None:
    opened = open_video(clip.path, AppLimits(max_frames=6), model_frames=4)
    truth = clip.ground_truth.objects[1]
    masklet = segment(build_segmenter({"kind": "fake"}), opened, Prompt(key_frame=5, box=truth.boxes[5]))
    assert set(masklet.masks) == set(opened.segment_frames) | {5}
    assert all(iou(decode_rle(masklet.masks[f]), decode_rle(truth.masks[f])) == 1.0 for f in opened.segment_frames)


def test_a_click_on_an_object_picks_that_object_through_segment_many(clip) -> None:
    opened = open_video(clip.path, AppLimits(max_frames=6), model_frames=4)
    truth = clip.ground_truth.objects[0]
    ys, xs = np.nonzero(decode_rle(truth.masks[3]))
    point = (float(xs[len(xs) // 2]), float(ys[len(ys) // 2]))
    masklet = segment(build_segmenter({"kind": "fake"}), opened, Prompt(key_frame=3, points=(point,), labels=(1,)))
    assert iou(decode_rle(masklet.masks[3]), decode_rle(truth.masks[3])) == 1.0

    class Recording:  # any segmenter kind gets the clicks as one SegmentPrompt with labelled points
        kind, model = "recording", "recording"
        seen: list = []

        def segment_many(self, *, video_uri, frame_indices, prompts, frames=None):
            self.seen.extend(prompts)
            return [masklet]

    recording = Recording()
    segment(recording, opened, Prompt(key_frame=3, points=(point, (1.0, 2.0)), labels=(1, 0)))
    assert recording.seen[0].points == ((point[0], point[1], 1), (1.0, 2.0, 0)) and recording.seen[0].box is None
    with pytest.raises(ValueError, match="box or at least one point"):
        segment(recording, opened, Prompt(key_frame=3))
    with pytest.raises(ValueError, match="labels"):
        segment(recording, opened, Prompt(key_frame=3, points=(point,), labels=(1, 0)))


def test_box_from_corners_in_any_order_and_refuses_a_flat_box() -> None:
    assert box_from_corners((30, 5), (10, 25)) == (10.0, 5.0, 30.0, 25.0)
    with pytest.raises(ValueError, match="no area"):
        box_from_corners((10, 5), (10.5, 40))


def _object_masklet(frames: dict[int, np.ndarray], key: int) -> Masklet:
    return Masklet(masks={f: _rle(m) for f, m in frames.items()}, key_frame=key)


def _square(top: int, left: int, size: int = 4, shape=(16, 16)) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[top : top + size, left : left + size] = True
    return mask


def test_objects_are_numbered_coloured_and_removable() -> None:
    masklet = _object_masklet({0: _square(1, 1)}, 0)
    objects = add_object((), Prompt(key_frame=0, box=(1, 1, 5, 5)), masklet)
    objects = add_object(objects, Prompt(key_frame=0, box=(8, 8, 12, 12)), masklet)
    assert [o.number for o in objects] == [1, 2] and objects[0].color != objects[1].color
    left = remove_object(objects, 1)
    assert [o.number for o in left] == [2]
    assert [o.number for o in add_object(left, Prompt(key_frame=0, box=(1, 1, 2, 2)), masklet)] == [2, 3]


def test_overlay_changes_pixels_where_the_object_is_and_nowhere_else() -> None:
    import cv2

    frame = np.full((64, 64, 3), 40, dtype=np.uint8)
    mask = _square(20, 16, size=24, shape=(64, 64))
    objects = add_object((), Prompt(key_frame=2, box=(16, 20, 40, 44)), _object_masklet({2: mask}, 2))
    drawn = overlay(frame, 2, objects)
    changed = (drawn != frame).any(axis=2)
    near = cv2.dilate(mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)  # the 2-px outline
    assert changed[mask].all() and not changed[~near].any()
    assert (overlay(frame, 3, objects) == frame).all()  # no mask on frame 3


def test_parse_question_resolves_plain_and_numbered_region_references() -> None:
    masklet = _object_masklet({0: _square(1, 1)}, 0)
    objects = add_object(add_object((), Prompt(key_frame=0, box=(1, 1, 5, 5)), masklet),
                         Prompt(key_frame=0, box=(1, 1, 5, 5)), masklet)
    both = parse_question("Is <region> left of <region>?", objects)
    assert both.text == "<video>\nIs <region> left of <region>?" and [o.number for o in both.objects] == [1, 2]
    second = parse_question("What is <region2> doing?", objects)
    assert second.text == "<video>\nWhat is <region> doing?" and [o.number for o in second.objects] == [2]
    swapped = parse_question("Does <region2> follow <region1>?", objects)
    assert [o.number for o in swapped.objects] == [2, 1]
    unnamed = parse_question("What happens?", objects)
    assert unnamed.text.count("<region>") == 2 and len(unnamed.objects) == 2
    for bad in ("What is <region>?", "<region1> and <region>?", "<region3>?", "<region1> or <region1>?", "  "):
        with pytest.raises(InvalidSampleError):
            parse_question(bad, objects)
    with pytest.raises(InvalidSampleError, match="characters"):
        parse_question("x" * 50, objects, max_chars=10)


def test_model_masks_single_uses_the_clicked_frame_multi_every_sampled_frame_with_a_mask() -> None:
    empty = np.zeros((16, 16), dtype=bool)
    masklet = _object_masklet({0: _square(1, 1), 4: _square(2, 2), 8: empty, 9: _square(3, 3)}, 9)
    assert list(model_masks(masklet, [0, 4, 8], "single")) == [9]
    assert list(model_masks(masklet, [0, 4, 8], "multi")) == [0, 4]
    assert list(model_masks(masklet, [8], "multi")) == [9]  # visible on no sampled frame: the clicked one
    hidden = _object_masklet({0: empty, 1: empty}, 0)
    with pytest.raises(NoMaskError):
        model_masks(hidden, [0, 1], "single")


def test_stream_answer_yields_the_growing_answer_and_raises_the_askers_error() -> None:
    def ask(callback):
        for piece in ("a", "b ", "c"):
            callback(piece)
        return " ab c "

    assert list(stream_answer(ask)) == ["a", "ab ", "ab c", "ab c"]

    def broken(callback):
        callback("x")
        raise RuntimeError("model failed")

    seen = []
    with pytest.raises(RuntimeError, match="model failed"):
        for text in stream_answer(broken):
            seen.append(text)
    assert seen == ["x"]


def test_masks_json_reads_back_through_infer_masks_and_the_sample_validates(clip, tmp_path) -> None:
    from flows.cli_model import load_masks_file
    from storage.samples import sample_from_json, sample_to_json, validate_sample

    opened = open_video(clip.path, AppLimits(max_frames=6), model_frames=4)
    segmenter = build_segmenter({"kind": "fake"})
    objects = ()
    for number, truth in enumerate(clip.ground_truth.objects):
        prompt = Prompt(key_frame=2 + number, box=truth.boxes[2 + number])
        objects = add_object(objects, prompt, segment(segmenter, opened, prompt))
    path = tmp_path / "masks.json"
    path.write_text(json.dumps(masks_json(objects)))
    loaded = load_masks_file(path)
    assert [sorted(obj) for obj in loaded] == [sorted(o.masklet.masks) for o in objects]
    assert loaded[1][4]["segmentation"] == objects[1].masklet.masks[4].to_coco()

    question = parse_question("Is <region> near <region>?", objects)
    sampled = [0, 6, 12, 19]
    masks = tuple(model_masks(o.masklet, sampled, "multi") for o in question.objects)
    answered = Answered(question=question, answer="Yes.", mode="multi", frame_indices=tuple(sampled), masks=masks)
    sample = training_sample(opened, answered)
    assert sample.task == "qa" and sample.video_uri == "clip.mp4"
    assert sample.conversations[0].value == "<video>\nIs <region> near <region>?"
    assert validate_sample(sample, grid=8) == []
    assert sample_from_json(json.loads(json.dumps(sample_to_json(sample)))) == sample
    with pytest.raises(InvalidSampleError):
        training_sample(opened, Answered(question=question, answer=" ", mode="multi", frame_indices=(0,),
                                         masks=masks))
