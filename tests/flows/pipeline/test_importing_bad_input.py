"""The 700K import at the edge: every bad item is a reject with the data's reason, the good ones are exported.

Masks are checked before decoding and against the video, frames against its length, paths against the
`--videos` folder, texts against `limits.max_text_chars`, and a FIFO never blocks the import.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from engine.errors import RejectReason
from engine.masks import encode_rle
from engine.synthetic import make_clip
from flows.pipeline.export import exported_tars
from flows.pipeline.importing import import_700k_shard, plan_import
from storage import tables
from storage.root import DatasetRoot
from storage.wds import iter_samples
from tests.flows.conftest import tiny_config

W, H, FRAMES = 64, 48, 20
QUESTION = "<video>\nPlease describe in detail the object <region> in the video."


def _mask(height: int = H, width: int = W) -> dict:
    mask = np.zeros((height, width), bool)
    mask[5:30, 10:40] = True
    return encode_rle(mask)


def _item(video: str = "clip.mp4", annotation: dict | None = None, answer: str = "A ball rolls.", **extra) -> dict:
    return {
        "video": video,
        "conversations": [{"from": "human", "value": QUESTION}, {"from": "gpt", "value": answer}],
        "annotation": [annotation or {"3": {"segmentation": _mask()}}],
        **extra,
    }


def test_bad_items_are_rejected_with_their_reasons_and_good_ones_exported(tmp_path: Path) -> None:
    videos, outside = tmp_path / "videos", tmp_path / "outside"
    make_clip(videos / "clip.mp4", seed=3, num_frames=FRAMES, width=W, height=H)
    make_clip(outside / "other.mp4", seed=4, num_frames=FRAMES, width=W, height=H)
    os.symlink(outside / "other.mp4", videos / "link.mp4")
    os.mkfifo(videos / "pipe.mp4")
    cases = [
        (_item(), None),
        (_item(answer="The ball rolls left."), None),
        (_item(annotation={"3": {"segmentation": {"size": [H, W], "counts": [0, 50]}}}), RejectReason.INVALID_MASK),
        (_item(annotation={"-1": {"segmentation": _mask()}}), RejectReason.FRAME_OUT_OF_RANGE),
        (_item(annotation={"999": {"segmentation": _mask()}}), RejectReason.FRAME_OUT_OF_RANGE),
        (_item(annotation={"3": {"segmentation": _mask(H * 2, W * 2)}}), RejectReason.MASK_SIZE_MISMATCH),
        (_item(height=H * 2, width=W * 2), RejectReason.MASK_SIZE_MISMATCH),  # declared size != its masks
        (_item(annotation={"3": {"segmentation": [[0, 0, 200, 0, 200, 10]]}}, height=H, width=W),
         RejectReason.INVALID_MASK),  # a polygon outside the image
        (_item("../outside/other.mp4"), RejectReason.PATH_NOT_ALLOWED),
        (_item(str(outside / "other.mp4")), RejectReason.PATH_NOT_ALLOWED),
        (_item("link.mp4"), RejectReason.PATH_NOT_ALLOWED),
        (_item(answer="x" * 5000), RejectReason.TEXT_TOO_LONG),
        (_item("pipe.mp4"), RejectReason.NOT_A_REGULAR_FILE),
    ]
    source = tmp_path / "released.json"
    source.write_text(json.dumps([item for item, _ in cases]))
    root = tmp_path / "root"
    config = tiny_config(shard_size=100, limits={"max_text_chars": 1000})
    (chunk,) = plan_import(root, source, config)
    report = import_700k_shard(root, source, videos, chunk, config)

    expected = sorted(reason for _, reason in cases if reason is not None)
    rejects = tables.read_rejects(DatasetRoot(root), "import_700k", chunk)
    assert sorted(r.reason for r in rejects) == expected
    assert report.items_in == len(cases) == report.items_out + sum(report.rejects.values())
    samples = list(iter_samples(exported_tars(root)))
    assert sorted(s.conversations[1].value for s, _ in samples) == ["A ball rolls.", "The ball rolls left."]

    allowed = tiny_config(shard_size=100, paths={"allowed_roots": [str(outside)]})
    other_root = tmp_path / "root2"
    (chunk,) = plan_import(other_root, source, allowed)
    import_700k_shard(other_root, source, videos, chunk, allowed)
    reasons = [r.reason for r in tables.read_rejects(DatasetRoot(other_root), "import_700k", chunk)]
    assert RejectReason.PATH_NOT_ALLOWED not in reasons  # allowed explicitly: imported
    assert RejectReason.TEXT_TOO_LONG not in reasons  # 5,000 characters are within the default limit (20,000)
    assert len(list(iter_samples(exported_tars(other_root)))) == 2 + 3 + 1
