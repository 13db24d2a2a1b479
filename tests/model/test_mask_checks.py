"""Masks given to inference (`--masks` files, `ask(masks=...)`) are checked before anything decodes them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import typer

from engine.errors import InvalidMaskError, RejectReason
from engine.masks import encode_rle
from flows.cli_model import load_masks_file
from model.inference import check_mask_sizes


def _mask(height: int = 48, width: int = 64) -> dict:
    mask = np.zeros((height, width), bool)
    mask[5:20, 10:30] = True
    return encode_rle(mask)


@pytest.mark.parametrize(
    "masks",
    [
        {"3": {"size": [48, 64], "counts": [0, 50]}},  # covers 50 of 3,072 pixels
        {"3": {"segmentation": {"size": [48, 64], "counts": "~~~~"}}},
        {"-1": _mask()},
        {"3": [[0, 0, 10, 0, 10, 10]]},  # a polygon: the file gives no image size
    ],
)
def test_a_masks_file_with_a_bad_mask_is_one_clear_error(tmp_path: Path, masks: dict) -> None:
    path = tmp_path / "masks.json"
    path.write_text(json.dumps([masks]))
    with pytest.raises(typer.BadParameter, match="object 0 of"):
        load_masks_file(path)


def test_good_masks_files_load_and_sizes_are_checked_against_the_frames(tmp_path: Path) -> None:
    path = tmp_path / "masks.json"
    path.write_text(json.dumps({"annotation": [{"3": {"segmentation": _mask()}}, {"0": _mask()}]}))
    objects = load_masks_file(path)
    assert [sorted(o) for o in objects] == [[3], [0]]
    check_mask_sizes(objects, (48, 64))
    with pytest.raises(InvalidMaskError) as caught:
        check_mask_sizes(objects, (72, 96))
    assert caught.value.reason == RejectReason.MASK_SIZE_MISMATCH
    with pytest.raises(InvalidMaskError) as caught:
        check_mask_sizes([{0: {"size": [48, 64], "counts": [0, 50]}}], (48, 64))
    assert caught.value.reason == RejectReason.INVALID_MASK
