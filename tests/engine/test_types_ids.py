"""Ids are content-derived, dot-free and stable; records are frozen; RLE records convert to COCO dicts."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from engine import ids
from engine.masks import decode_rle, encode_rle
from engine.types import Clip, ObjectRecord, RleMask


def test_ids_are_stable_hex_without_dots() -> None:
    a = ids.clip_id("file:///videos/a.mp4", 1.0, 2.5)
    assert a == ids.clip_id("file:///videos/a.mp4", 1.0000000001, 2.5)
    assert a != ids.clip_id("file:///videos/a.mp4", 1.0, 2.6)
    assert "." not in a and all(c in "0123456789abcdef" for c in a)
    obj = ids.object_id(a, "Dog ", 3)
    assert obj == ids.object_id(a, "dog", 3) and obj != ids.object_id(a, "dog", 4)
    key = ids.sample_key("detailed", obj, (0, 1, 2))
    assert key.startswith("detailed_") and "." not in key


def test_records_are_frozen() -> None:
    clip = Clip(clip_id="c", video_uri="v.mp4", caption="a dog runs")
    record = ObjectRecord(object_id="o", clip=clip, noun="dog")
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.noun = "cat"  # type: ignore[misc]
    assert record.clip_id == "c"
    assert dataclasses.replace(record, detailed_caption="x").detailed_caption == "x"


def test_rle_mask_round_trips_through_coco_dicts() -> None:
    mask = np.zeros((12, 20), bool)
    mask[3:7, 5:15] = True
    rle = RleMask.from_coco(encode_rle(mask))
    assert (rle.height, rle.width) == (12, 20)
    np.testing.assert_array_equal(decode_rle(rle), mask)
    np.testing.assert_array_equal(decode_rle(rle.to_coco()), mask)
    with pytest.raises(TypeError):
        RleMask.from_coco({"size": [2, 2], "counts": [0, 4]})
