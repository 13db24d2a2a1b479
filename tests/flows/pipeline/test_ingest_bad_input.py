"""Ingest at the edge: special files never hang it, sizes and pixels are bounded, frame folders are videos, spans
and given masks are checked against the probed video, and duplicate rows are counted rejects (in = out + rejected).
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest

from engine.errors import RejectReason
from engine.masks import encode_rle
from engine.synthetic import make_clip
from flows.pipeline import layout
from flows.pipeline.ingest import ingest
from tests.flows.conftest import tiny_config

W, H, FRAMES, FPS = 96, 72, 12, 12.0  # a 1 s clip


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    make_clip(root / "videos" / "good.mp4", seed=1, num_frames=FRAMES, width=W, height=H, fps=FPS)
    return root


def _write(root: Path, rows: list[dict]) -> Path:
    path = root / "manifest.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _reasons(root: Path) -> dict[str, str]:
    """Reject reason per manifest row number (messages start with the video or `manifest row N`)."""
    return {r.message: r.reason for r in layout.ingest_rejects(layout.open_root(root))}


def _ingest_in_thread(root: Path, manifest: Path, config) -> object:
    """Ingest on a worker thread: a hang (the old FIFO/`/dev/zero` behaviour) fails the test instead of the run."""
    result: list[object] = []
    worker = threading.Thread(target=lambda: result.append(ingest(root, manifest, config)), daemon=True)
    worker.start()
    worker.join(timeout=300)
    assert not worker.is_alive(), "ingest hung on a special file"
    return result[0]


def _mask(height: int = H, width: int = W) -> dict:
    mask = np.zeros((height, width), bool)
    mask[10:30, 20:50] = True
    return encode_rle(mask)


def test_fifo_and_devices_are_rejected_without_being_opened(root: Path) -> None:
    os.mkfifo(root / "videos" / "pipe.mp4")  # opening it for reading would wait for a writer forever
    os.symlink("/dev/zero", root / "videos" / "zero.mp4")  # hashing it to EOF would never end
    manifest = _write(root, [
        {"video": "videos/good.mp4", "caption": "a good clip"},
        {"video": "videos/pipe.mp4", "caption": "a fifo"},
        {"video": "videos/zero.mp4", "caption": "a device behind a symlink"},
    ])
    result = _ingest_in_thread(root, manifest, tiny_config())
    assert result.report.items_out == 1
    # The symlink leaves the root: refused by path first; allowed explicitly, it is still not a regular file.
    assert result.report.rejects == {RejectReason.NOT_A_REGULAR_FILE: 1, RejectReason.PATH_NOT_ALLOWED: 1}

    other = root.parent / "other"
    manifest = _write(root, [{"video": "videos/zero.mp4", "caption": "allowed outside"}])
    result = _ingest_in_thread(other, manifest, tiny_config(paths={"allow_outside": True}))
    assert result.report.rejects == {RejectReason.NOT_A_REGULAR_FILE: 1}


def test_a_folder_of_frames_is_ingested_as_a_video(root: Path) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for copy in ("frames", "same_frames"):
        folder = root / copy
        folder.mkdir()
        for index in range(5):
            pixels = np.full((H, W, 3), index * 40, np.uint8) + rng.integers(0, 5, (H, W, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{index:05d}.png")
        rng = np.random.default_rng(0)  # the second folder holds the very same images
    manifest = _write(root, [{"video": "frames", "caption": "frames"}, {"video": "same_frames", "caption": "again"}])
    result = ingest(root, manifest, tiny_config())
    assert result.report.items_out == 1 and result.report.rejects == {RejectReason.DUPLICATE_ROW: 1}
    (clip,) = [c for s in result.all_shards for c in layout.shard_clips(layout.open_root(root), s)]
    assert (clip.num_frames, clip.width, clip.height) == (5, W, H)


def test_files_and_pixels_above_the_configured_limits_are_too_large(root: Path) -> None:
    make_clip(root / "videos" / "wide.mp4", seed=2, num_frames=2, width=640, height=480, fps=FPS)
    manifest = _write(root, [{"video": "videos/good.mp4", "caption": "small"},
                             {"video": "videos/wide.mp4", "caption": "large frames"}])
    # 96x72 x 4 frames = 27,648 pixels pass; 640x480 x 4 frames = 1,228,800 do not, however small the file.
    result = ingest(root, manifest, tiny_config(limits={"max_decoded_pixels": 100_000}))
    assert result.report.items_out == 1 and result.report.rejects == {RejectReason.VIDEO_TOO_LARGE: 1}
    (message,) = _reasons(root)
    assert "max_decoded_pixels" in message

    small = root.parent / "small"
    result = ingest(small, manifest, tiny_config(limits={"max_video_bytes": 100}))
    assert result.report.items_out == 0 and result.report.rejects == {RejectReason.VIDEO_TOO_LARGE: 2}


def test_spans_and_given_masks_are_checked_against_the_video(root: Path) -> None:
    good = {"video": "videos/good.mp4", "caption": "c"}
    obj = {"name": "ball", "expression": "the ball"}
    rows = [
        {**good, "start": 0.25, "end": 0.75},
        {**good, "start": "NaN", "end": 0.5},
        {**good, "start": 5, "end": 6},  # the video lasts 1 s
        {**good, "start": 0.5, "end": 30},
        # Spans of their own: rows naming the same video and span are one clip (the later ones duplicates).
        {**good, "end": 1.0, "objects": [{**obj, "masks": {"999": _mask()}}]},
        {**good, "end": 0.9, "objects": [{**obj, "masks": {"3": _mask(H * 2, W * 2)}}]},
        {**good, "end": 0.8, "objects": [{**obj, "masks": {"3": {"size": [H, W], "counts": [0, 50]}}}]},
        {**good, "end": 0.7, "objects": [{**obj, "masks": {"3": _mask()}}]},
    ]
    result = ingest(root, _write(root, rows), tiny_config())
    assert result.report.items_out == 2
    assert result.report.rejects == {
        RejectReason.BAD_SPAN: 3, RejectReason.FRAME_OUT_OF_RANGE: 1, RejectReason.MASK_SIZE_MISMATCH: 1,
        RejectReason.INVALID_MASK: 1,
    }
    assert result.report.items_in == result.report.items_out + sum(result.report.rejects.values())


def test_duplicate_rows_are_counted_rejects_and_a_different_caption_is_named(root: Path) -> None:
    rows = [
        {"video": "videos/good.mp4", "caption": "a red ball"},
        {"video": "videos/good.mp4", "caption": "a red ball"},
        {"video": "videos/../videos/good.mp4", "caption": "a blue box"},  # same bytes, same span
        {"video": "videos/good.mp4", "caption": "a red ball", "start": 0, "end": 0.5},  # another clip
    ]
    manifest = _write(root, rows)
    config = tiny_config()
    first = ingest(root, manifest, config)
    assert (first.report.items_in, first.report.items_out) == (4, 2)
    assert first.report.rejects == {RejectReason.DUPLICATE_ROW: 2}
    messages = sorted(_reasons(root))
    assert "row 1 names the clip of row 0" in messages[0] and "the same caption" in messages[0]
    assert "row 2 names the clip of row 0" in messages[1] and "a different caption 'a blue box'" in messages[1]
    kept = [c for s in first.all_shards for c in layout.shard_clips(layout.open_root(root), s)]
    assert sorted(c.caption for c in kept) == ["a red ball", "a red ball"]
    assert not {c.clip_id for c in kept} & {r.clip_id for r in layout.ingest_rejects(layout.open_root(root))}

    again = ingest(root, manifest, config)  # a re-run finds every row accounted for
    assert (again.report.items_in, again.report.rejects, again.new_shards) == (0, {}, ())
    assert len(layout.ingest_rejects(layout.open_root(root))) == 2
