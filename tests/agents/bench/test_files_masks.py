"""Bench files: masks are checked before decoding and against the entry's video (frame size, frame count)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from agents.bench.files import read_bench_d
from engine.errors import RejectReason
from engine.masks import encode_rle
from engine.synthetic import make_clip

W, H, FRAMES = 64, 48, 10


def _mask(height: int = H, width: int = W) -> dict:
    mask = np.zeros((height, width), bool)
    mask[5:20, 10:30] = True
    return encode_rle(mask)


def _entry(idx: int, annotation: dict, video: str = "clip.mp4", **over) -> dict:
    return {"id": idx, "video": video, "caption": "A ball rolls.", "frame_idx": "2", "annotation": [annotation],
            **over}


def test_bad_masks_and_special_files_are_rejected_with_their_reasons(tmp_path: Path) -> None:
    make_clip(tmp_path / "clip.mp4", seed=1, num_frames=FRAMES, width=W, height=H)
    os.mkfifo(tmp_path / "pipe.mp4")
    entries = [
        _entry(0, {"2": {"segmentation": _mask()}, "4": {"segmentation": None}}),
        _entry(1, {"2": {"segmentation": {"size": [H, W], "counts": [0, 50]}}}),
        _entry(2, {"2": {"segmentation": _mask(H * 2, W)}}),
        _entry(3, {"999": {"segmentation": _mask()}}),
        _entry(4, {"-1": {"segmentation": _mask()}}),
        _entry(5, {"2": {"segmentation": [[0, 0, 300, 0, 300, 20]]}}, height=H, width=W),
        _entry(6, {"2": {"segmentation": [[0, 0, 30, 0, 30, 20]]}}, height=H, width=W),
        _entry(7, {"2": {"segmentation": _mask()}}, video="pipe.mp4"),
    ]
    path = tmp_path / "d.json"
    path.write_text(json.dumps(entries))
    bench = read_bench_d(path)
    assert [item.item_id for item in bench.items] == ["0", "6"]
    assert {r.item_id: r.reason for r in bench.rejects} == {
        "1": RejectReason.INVALID_MASK,
        "2": RejectReason.MASK_SIZE_MISMATCH,
        "3": RejectReason.FRAME_OUT_OF_RANGE,
        "4": RejectReason.FRAME_OUT_OF_RANGE,
        "5": RejectReason.INVALID_MASK,
        "7": RejectReason.NOT_A_REGULAR_FILE,
    }
