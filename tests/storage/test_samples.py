"""Training samples: JSON round trip (extra mask frames included), every validation rule, and the builders."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from engine.errors import InvalidSampleError, RejectReason
from engine.masks import encode_rle, grid_occupancy
from engine.types import ClipQA, QAPair, RleMask, SampleObject, Turn
from storage.samples import (
    DETAILED_TEMPLATES,
    SHORT_TEMPLATES,
    check_sample,
    detailed_sample,
    qa_samples,
    region_count,
    rle_is_consistent,
    sample_from_json,
    sample_to_json,
    select_mask_frames,
    short_sample,
    use_multi_frame,
    validate_sample,
    vanishes_on_grid,
    vision_grid,
)
from tests.storage.conftest import GRID, HEIGHT, WIDTH, box_mask, make_record, make_sample


def reasons(sample) -> set[RejectReason]:
    return {reason for reason, _ in validate_sample(sample, grid=GRID)}


def with_masks(sample, masks):
    obj = dataclasses.replace(sample.objects[0], masks=masks)
    return dataclasses.replace(sample, objects=(obj, *sample.objects[1:]))


# ---------------------------------------------------------------- JSON


def test_json_round_trip_keeps_every_field() -> None:
    sample = make_sample(regions=2)
    data = sample_to_json(sample)
    assert data["schema_version"] == 1
    assert data["conversations"][0] == {"from": "human", "value": sample.conversations[0].value}
    assert set(data["objects"][0]["masks"]) == {"0", "5", "10"}
    assert data["objects"][0]["masks"]["5"]["size"] == [HEIGHT, WIDTH]
    assert sample_from_json(data) == sample


def test_extra_frames_round_trip_and_old_json_reads_without_them() -> None:
    sample = dataclasses.replace(with_masks(make_sample(frames=(0, 5)), {0: box_mask(0, 0, 20, 20),
                                                                          7: box_mask(0, 0, 20, 20),
                                                                          12: box_mask(0, 0, 20, 20)}),
                                 extra_frame_indices=(7, 12))
    data = sample_to_json(sample)
    assert data["frame_indices"] == [0, 5] and data["extra_frame_indices"] == [7, 12]
    back = sample_from_json(data)
    assert back == sample and back.stored_frame_indices == (0, 5, 7, 12)
    old = {key: value for key, value in sample_to_json(make_sample()).items() if key != "extra_frame_indices"}
    assert sample_from_json(old).extra_frame_indices == ()
    assert sample_to_json(make_sample())["extra_frame_indices"] == []


def test_json_with_wrong_version_or_shape_is_refused() -> None:
    data = sample_to_json(make_sample())
    with pytest.raises(InvalidSampleError):
        sample_from_json({**data, "schema_version": 99})
    with pytest.raises(InvalidSampleError):
        sample_from_json({**data, "objects": [{"masks": {}}]})


# ---------------------------------------------------------------- validation


def test_valid_sample_has_no_problems() -> None:
    assert validate_sample(make_sample(regions=2), grid=GRID) == []
    check_sample(make_sample(), grid=GRID)


def test_region_count_mismatch() -> None:
    sample = make_sample(regions=2)
    assert reasons(dataclasses.replace(sample, objects=sample.objects[:1])) == {RejectReason.REGION_COUNT_MISMATCH}
    with pytest.raises(InvalidSampleError) as info:
        check_sample(dataclasses.replace(sample, objects=sample.objects[:1]), grid=GRID)
    assert info.value.reason is RejectReason.REGION_COUNT_MISMATCH


def test_missing_masks_and_no_objects() -> None:
    assert RejectReason.MISSING_MASK in reasons(with_masks(make_sample(), {}))
    no_objects = dataclasses.replace(make_sample(), objects=())
    assert reasons(no_objects) == {RejectReason.MISSING_MASK, RejectReason.REGION_COUNT_MISMATCH}


def test_empty_mask() -> None:
    empty = RleMask.from_coco(encode_rle(np.zeros((HEIGHT, WIDTH), bool)))
    assert reasons(with_masks(make_sample(frames=(0,)), {0: empty})) == {RejectReason.EMPTY_MASKLET}


def test_mask_that_vanishes_on_the_vision_grid() -> None:
    # One pixel between the grid's sample points disappears after the bilinear resize; a big block does not.
    tiny = np.zeros((384, 384), bool)
    tiny[9, 9] = True
    sample = dataclasses.replace(make_sample(frames=(0,)), height=384, width=384)
    assert reasons(with_masks(sample, {0: RleMask.from_coco(encode_rle(tiny))})) == {
        RejectReason.MASK_VANISHES_ON_GRID
    }
    block = np.zeros((384, 384), bool)
    block[100:140, 100:140] = True
    assert reasons(with_masks(sample, {0: RleMask.from_coco(encode_rle(block))})) == set()


def test_mask_size_mismatch_and_frames_outside_the_sampled_ones() -> None:
    sample = make_sample(frames=(0, 5))
    wrong_size = box_mask(0, 0, 10, 10, height=HEIGHT * 2, width=WIDTH)
    assert reasons(with_masks(sample, {0: wrong_size})) == {RejectReason.MALFORMED_SAMPLE}
    assert reasons(with_masks(sample, {7: box_mask(0, 0, 20, 20)})) == {RejectReason.MALFORMED_SAMPLE}


def test_extra_frames_hold_the_masks_off_the_sampled_frames() -> None:
    sample = with_masks(make_sample(frames=(0, 5)), {0: box_mask(0, 0, 20, 20), 7: box_mask(0, 0, 20, 20)})
    assert reasons(sample) == {RejectReason.MALFORMED_SAMPLE}  # frame 7 is on no stored frame
    assert "neither a sampled frame nor an extra frame" in validate_sample(sample, grid=GRID)[0][1]
    assert validate_sample(dataclasses.replace(sample, extra_frame_indices=(7,)), grid=GRID) == []
    # Repeated sampled frames (a short video) are fine.
    repeated = dataclasses.replace(sample, frame_indices=(0, 0, 5, 5), extra_frame_indices=(7,))
    assert validate_sample(repeated, grid=GRID) == []


@pytest.mark.parametrize(
    ("extras", "message"),
    [
        ((5, 7), "also sampled frames"),
        ((7, 7), "not ascending and distinct"),
        ((9, 7), "not ascending and distinct"),
        ((7, 9), "hold no mask"),
    ],
)
def test_bad_extra_frames(extras, message) -> None:
    masks = {0: box_mask(0, 0, 20, 20), 7: box_mask(0, 0, 20, 20), 9: box_mask(0, 0, 20, 20)}
    if message == "hold no mask":
        masks.pop(9)
    sample = dataclasses.replace(with_masks(make_sample(frames=(0, 5)), masks), extra_frame_indices=extras)
    problems = validate_sample(sample, grid=GRID)
    assert {reason for reason, _ in problems} == {RejectReason.MALFORMED_SAMPLE}
    assert any(message in text for _, text in problems)


def test_extra_frames_need_sampled_frames() -> None:
    sample = dataclasses.replace(make_sample(frames=(7,)), frame_indices=(), extra_frame_indices=(7,))
    assert any("no sampled frames" in text for _, text in validate_sample(sample, grid=GRID))


def test_more_than_100_stored_frames_is_too_many() -> None:
    block = box_mask(0, 0, 20, 20)
    masks = {frame: block for frame in range(1, 86)}  # 85 extra mask frames + 16 sampled frames = 101
    sample = with_masks(make_sample(frames=(0,)), masks)
    sample = dataclasses.replace(sample, frame_indices=(0,) * 16, extra_frame_indices=tuple(range(1, 86)))
    problems = validate_sample(sample, grid=GRID)
    assert problems[0][0] is RejectReason.TOO_MANY_FRAMES and "101 frames" in problems[0][1]
    with pytest.raises(InvalidSampleError) as info:
        check_sample(sample, grid=GRID)
    assert info.value.reason is RejectReason.TOO_MANY_FRAMES
    assert validate_sample(dataclasses.replace(sample, frame_indices=(0,) * 15), grid=GRID) == []  # exactly 100


def test_corrupt_rle_is_reported_not_raised() -> None:
    broken = RleMask(height=HEIGHT, width=WIDTH, counts="\x7f\x7f")
    assert RejectReason.MALFORMED_SAMPLE in reasons(with_masks(make_sample(frames=(0,)), {0: broken}))


@pytest.mark.parametrize(
    "turns",
    [
        (),
        (Turn(role="human", value="no video token <region>"), Turn(role="gpt", value="x")),
        (Turn(role="gpt", value="<video>\n<region>"), Turn(role="human", value="x")),
        (Turn(role="human", value="<video>\n<region>"), Turn(role="gpt", value="  ")),
        (Turn(role="human", value="<video>\n<region>"),),
        (
            Turn(role="human", value="<video>\n<region>"),
            Turn(role="gpt", value="a"),
            Turn(role="gpt", value="b"),
        ),
        (Turn(role="human", value="<video>\n<video>\n<region>"), Turn(role="gpt", value="a")),
    ],
)
def test_malformed_conversations(turns) -> None:
    assert RejectReason.MALFORMED_SAMPLE in reasons(dataclasses.replace(make_sample(), conversations=turns))


def test_multi_turn_conversation_is_valid() -> None:
    turns = (
        Turn(role="human", value="<video>\nWhat is <region> doing?"),
        Turn(role="gpt", value="Running."),
        Turn(role="human", value="And then?"),
        Turn(role="gpt", value="It stops."),
    )
    assert validate_sample(dataclasses.replace(make_sample(), conversations=turns), grid=GRID) == []
    assert region_count(turns) == 1


def test_bad_task_and_key() -> None:
    assert RejectReason.MALFORMED_SAMPLE in reasons(dataclasses.replace(make_sample(), task="poem"))
    assert RejectReason.MALFORMED_SAMPLE in reasons(dataclasses.replace(make_sample(), key="has.dot"))


# ---------------------------------------------------------------- builders


def test_detailed_sample_multi_frame_uses_the_sampled_mask_frames() -> None:
    record = make_record(frames=(0, 10, 20, 30))
    sample = detailed_sample(record, frame_indices=[0, 10, 15, 30], multi_frame=True, seed=1)
    assert sample.task == "detailed"
    assert sorted(sample.objects[0].masks) == [0, 10, 30]
    assert sample.conversations[0].value.startswith("<video>\n")
    assert "describe in detail the object <region> in the video" in sample.conversations[0].value
    assert sample.conversations[1].value == record.detailed_caption
    assert sample.key.startswith("detailed_") and "." not in sample.key
    assert sample.provenance == record.provenance
    assert validate_sample(sample, grid=GRID) == []


def test_single_frame_mode_prefers_the_key_frame_then_the_first_sampled_mask() -> None:
    record = make_record(frames=(0, 10, 20, 30))  # key frame 10
    single = detailed_sample(record, frame_indices=[0, 10, 20], multi_frame=False)
    assert list(single.objects[0].masks) == [10]
    without_key = detailed_sample(record, frame_indices=[5, 20, 30], multi_frame=False)
    assert list(without_key.objects[0].masks) == [20]
    assert validate_sample(single, grid=GRID) == [] and validate_sample(without_key, grid=GRID) == []


def test_builders_skip_empty_mask_frames() -> None:
    record = make_record(frames=(0, 10, 20))
    empty = RleMask.from_coco(encode_rle(np.zeros((HEIGHT, WIDTH), bool)))
    masklet = dataclasses.replace(record.masklet, masks={**record.masklet.masks, 10: empty})
    assert sorted(select_mask_frames(masklet, [0, 10, 20], multi_frame=True)) == [0, 20]
    assert list(select_mask_frames(masklet, [0, 10, 20], multi_frame=False)) == [0]


def test_builders_are_deterministic_and_use_the_templates() -> None:
    record = make_record()
    first = detailed_sample(record, frame_indices=[0, 10], multi_frame=True, seed=3)
    assert first == detailed_sample(record, frame_indices=[0, 10], multi_frame=True, seed=3)
    assert first.key != detailed_sample(record, frame_indices=[0, 10], multi_frame=False, seed=3).key
    used = {
        detailed_sample(make_record(f"clip{i}"), frame_indices=[0, 10], multi_frame=True).conversations[0].value
        for i in range(24)
    }
    assert len(used) > 1
    assert used <= {"<video>\n" + t.format(region="<region>") for t in DETAILED_TEMPLATES}


def test_short_sample_is_single_frame_with_the_brief_prompt() -> None:
    record = make_record()
    sample = short_sample(record, frame_indices=[0, 10, 20, 30])
    assert len(sample.objects[0].masks) == 1
    assert sample.conversations[0].value in {"<video>\n" + t.format(region="<region>") for t in SHORT_TEMPLATES}
    assert "in brief" in sample.conversations[0].value
    assert sample.conversations[1].value == record.short_caption
    fallback = short_sample(dataclasses.replace(record, short_caption=None), frame_indices=[0])
    assert fallback.conversations[1].value == record.clip.caption


def test_builders_refuse_records_without_masks_or_caption() -> None:
    with pytest.raises(InvalidSampleError) as info:
        detailed_sample(make_record(full=False), frame_indices=[0], multi_frame=True)
    assert info.value.reason in {RejectReason.MISSING_MASK, RejectReason.MALFORMED_SAMPLE}
    with pytest.raises(InvalidSampleError) as info:
        detailed_sample(make_record(), frame_indices=[5, 6], multi_frame=True)  # no mask on sampled frames
    assert info.value.reason is RejectReason.MISSING_MASK


def test_qa_samples_one_per_question_with_one_region_per_object() -> None:
    dog, cat = make_record("q", "dog"), make_record("q", "cat", seed=1)
    item = ClipQA(
        clip=dog.clip,
        objects=(dog, cat),
        qa=(
            QAPair(
                question="What is <region> doing?", answer="Running.", qa_type="basic", object_ids=(dog.object_id,)
            ),
            QAPair(
                question="Which one moves first?",
                answer="(A) the dog",
                qa_type="reasoning",
                object_ids=(dog.object_id, cat.object_id),
                options=("the dog", "the cat"),
            ),
            QAPair(question="Where is it?", answer="Here.", qa_type="basic", object_ids=("unknown",)),
        ),
    )
    samples, rejects = qa_samples(item, frame_indices=[0, 10, 20, 30], multi_frame=True)
    assert len(samples) == 2 and len(rejects) == 1
    assert samples[0].conversations[0].value == "<video>\nWhat is <region> doing?"
    second = samples[1].conversations[0].value
    assert second.count("<region>") == 2 and "<object0>" in second and "(B) the cat" in second
    assert [o.object_id for o in samples[1].objects] == [dog.object_id, cat.object_id]
    assert all(validate_sample(s, grid=GRID) == [] for s in samples)
    assert len({s.key for s in samples}) == 2
    assert rejects[0].clip_id == dog.clip_id


def test_multi_frame_coin_is_deterministic_and_follows_the_ratio() -> None:
    flips = [use_multi_frame(0.5, 0, f"object{i}") for i in range(400)]
    assert flips == [use_multi_frame(0.5, 0, f"object{i}") for i in range(400)]
    assert 140 < sum(flips) < 260
    assert not any(use_multi_frame(0.0, 0, f"object{i}") for i in range(50))


def test_sample_object_masks_keep_absolute_frame_indices() -> None:
    obj = SampleObject(object_id="o", category="", masks={1234: box_mask(0, 0, 10, 10)})
    sample = dataclasses.replace(make_sample(frames=(1234,)), objects=(obj,))
    assert sample_from_json(sample_to_json(sample)).objects[0].masks.keys() == {1234}


def test_fast_vanish_check_agrees_with_grid_occupancy() -> None:
    rng = np.random.default_rng(7)
    for _ in range(60):
        height, width = int(rng.integers(20, 120)), int(rng.integers(20, 120))
        mask = np.zeros((height, width), bool)
        for _ in range(int(rng.integers(1, 4))):  # a few sparse pixels: both outcomes occur
            mask[rng.integers(0, height), rng.integers(0, width)] = True
        grid = int(rng.choice([5, 9, 27]))
        assert vanishes_on_grid(mask, grid) == (grid_occupancy(mask, grid) == 0)


def test_rle_consistency_of_real_masks() -> None:
    rng = np.random.default_rng(3)
    for _ in range(30):
        mask = rng.random((int(rng.integers(1, 40)), int(rng.integers(1, 40)))) < rng.random()
        assert rle_is_consistent(RleMask.from_coco(encode_rle(mask)))
    assert not rle_is_consistent(RleMask(height=4, width=4, counts="0"))  # covers 0 of 16 pixels


def test_the_grid_is_required_and_derived_from_image_and_patch_size() -> None:
    with pytest.raises(TypeError):
        validate_sample(make_sample())  # no 27 x 27 default
    with pytest.raises(TypeError):
        check_sample(make_sample())
    with pytest.raises(TypeError):
        vanishes_on_grid(np.ones((4, 4), bool))
    with pytest.raises(ValueError, match="grid"):
        validate_sample(make_sample(), grid=0)
    assert vision_grid(384) == vision_grid(384, 14) == 27  # SigLIP so400m at 384 px: the release
    assert vision_grid(64, 8) == 8 and vision_grid(512) == 36
    with pytest.raises(ValueError):
        vision_grid(10, 14)


def test_vision_grid_matches_the_models_grid() -> None:
    from model.configuration import VideoReferConfig

    for preset in ("tiny", "7b"):
        config = VideoReferConfig.preset(preset)
        assert vision_grid(config.image_size, config.vision_config.patch_size) == config.grid_size
