"""Manifest rows checked where no video is needed: paths inside the allowed roots, finite spans, text length and
given masks that decode faithfully; each bad row keeps its reason for the ingest reject."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from engine.errors import RejectReason
from engine.masks import encode_rle
from flows.pipeline.manifest import ManifestPolicy, read_manifest


def _manifest(folder: Path, rows: list[dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "manifest.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _problems(path: Path, policy: ManifestPolicy | None = None) -> list[tuple[str, str]]:
    return [(row.problem_reason.value if row.problem else "", row.problem) for row in read_manifest(path, policy)]


def _object(masks: dict) -> dict:
    return {"name": "ball", "expression": "the red ball", "masks": masks}


def _rle(height: int = 8, width: int = 10) -> dict:
    mask = np.zeros((height, width), bool)
    mask[2:5, 3:7] = True
    return encode_rle(mask)


@pytest.mark.parametrize(
    ("span", "reason"),
    [
        ({"start": "NaN", "end": 3}, RejectReason.BAD_SPAN),
        ({"start": 0, "end": "inf"}, RejectReason.BAD_SPAN),
        ({"start": "soon", "end": 3}, RejectReason.BAD_SPAN),
        ({"start": -1, "end": 3}, RejectReason.BAD_SPAN),
        ({"start": 3, "end": 3}, RejectReason.BAD_SPAN),
        ({"start": 4, "end": 1}, RejectReason.BAD_SPAN),
        ({"start": True, "end": 3}, RejectReason.BAD_SPAN),
    ],
)
def test_spans_that_are_not_finite_ordered_seconds_are_bad_spans(tmp_path: Path, span: dict, reason: str) -> None:
    path = _manifest(tmp_path, [{"video": "a.mp4", "caption": "a dog", **span}])
    ((code, problem),) = _problems(path)
    assert code == reason and problem.startswith("bad span")


def test_paths_outside_the_manifest_folder_and_allowed_roots_are_not_allowed(tmp_path: Path) -> None:
    inside, outside = tmp_path / "data", tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "b.mp4").write_bytes(b"x")
    (inside / "videos").mkdir(parents=True)
    os.symlink(outside / "b.mp4", inside / "videos" / "link.mp4")  # a symlink inside that leaves the root
    os.symlink(inside / "videos", inside / "alias")  # a symlink that stays inside is fine
    rows = [
        {"video": "videos/a.mp4", "caption": "ok"},
        {"video": "../elsewhere/b.mp4", "caption": "dot-dot"},
        {"video": str(outside / "b.mp4"), "caption": "absolute"},
        {"video": f"file://{outside / 'b.mp4'}", "caption": "file url"},
        {"video": "videos/link.mp4", "caption": "symlink out"},
        {"video": "alias/a.mp4", "caption": "symlink in"},
        {"video": "https://host/c.mp4", "caption": "a URL is not a local path"},
    ]
    path = _manifest(inside, rows)
    codes = [code for code, _ in _problems(path)]
    bad = RejectReason.PATH_NOT_ALLOWED
    assert codes == ["", bad, bad, bad, bad, "", ""]
    assert "paths.allowed_roots" in read_manifest(path)[1].problem  # the message says how to allow it
    assert read_manifest(path)[5].video_uri == str((inside / "videos" / "a.mp4").resolve())

    allowed = _problems(path, ManifestPolicy(allowed_roots=(outside,)))
    assert [code for code, _ in allowed] == [""] * 7
    assert [code for code, _ in _problems(path, ManifestPolicy(allow_outside=True))] == [""] * 7


def test_texts_above_the_limit_are_too_long(tmp_path: Path) -> None:
    rows = [
        {"video": "a.mp4", "caption": "x" * 101},
        {"video": "a.mp4", "caption": "x" * 100},
        {"video": "a.mp4", "caption": "ok", "objects": [{**_object({"0": _rle()}), "expression": "y" * 101}]},
    ]
    path = _manifest(tmp_path, rows)
    codes = [code for code, _ in _problems(path, ManifestPolicy(max_text_chars=100))]
    assert codes == [RejectReason.TEXT_TOO_LONG, "", RejectReason.TEXT_TOO_LONG]
    assert [code for code, _ in _problems(path)] == ["", "", ""]  # no limit without a policy saying so


@pytest.mark.parametrize(
    ("masks", "reason"),
    [
        ({"0": {"size": [720, 1280], "counts": [0, 50]}}, RejectReason.INVALID_MASK),
        ({"0": {"segmentation": {"size": [8, 10], "counts": "garbage\x7f"}}}, RejectReason.INVALID_MASK),
        ({"-1": _rle()}, RejectReason.FRAME_OUT_OF_RANGE),
        ({"0": _rle(), "1": _rle(16, 20)}, RejectReason.MASK_SIZE_MISMATCH),
        ({"x": _rle()}, RejectReason.MALFORMED_SAMPLE),
        ({"0": [[1, 2, 3, 4, 5, 6]]}, RejectReason.MALFORMED_SAMPLE),  # a polygon without a size
    ],
)
def test_given_masks_that_would_decode_to_garbage_are_rejected(tmp_path: Path, masks: dict, reason: str) -> None:
    path = _manifest(tmp_path, [{"video": "a.mp4", "caption": "c", "objects": [_object(masks)]}])
    ((code, problem),) = _problems(path)
    assert code == reason and problem.startswith("malformed objects")


def test_good_rows_keep_their_masks_and_have_no_problem(tmp_path: Path) -> None:
    uncompressed = {"size": [2, 3], "counts": [1, 2, 3]}
    rows = [{"video": "a.mp4", "caption": "c", "start": "0.5", "end": 2, "objects": [_object({"4": uncompressed})]}]
    (row,) = read_manifest(_manifest(tmp_path, rows))
    assert row.problem == "" and (row.start_s, row.end_s) == (0.5, 2.0)
    (obj,) = row.given_objects
    assert sorted(obj.masklet.masks) == [4] and obj.masklet.masks[4].height == 2
