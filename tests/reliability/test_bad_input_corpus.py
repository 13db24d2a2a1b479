"""A corpus of bad inputs, generated here (no binary fixtures), through the commands a user runs.

`videorefer build --manifest` gets a manifest whose rows cover every kind of bad input the edge checks know of
(special files, paths leaving the root, broken or huge videos, bad spans, garbage masks, duplicates, overlong
captions) beside good rows; `videorefer import-700k` gets a released-format JSON with the same kinds for items.
Each bad row or item must become a reject with its expected reason code, nothing may hang or crash, every input
must be accounted for, and the good ones must come out as exported samples. `KINDS` below is the table of kinds
and the reason each must get.
"""

from __future__ import annotations

import json
import os
import re
import threading
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from engine.errors import RejectReason as R
from engine.masks import encode_rle
from engine.synthetic import make_clip
from flows.cli import app
from flows.pipeline import layout
from flows.pipeline.export import exported_tars
from storage import tables
from storage.root import DatasetRoot
from storage.wds import iter_samples
from tests.flows.conftest import CLIP_SIZE, TINY, make_inputs, prefect_server  # noqa: F401  (session fixture)

W, H, FRAMES, FPS = CLIP_SIZE["width"], CLIP_SIZE["height"], CLIP_SIZE["num_frames"], CLIP_SIZE["fps"]
LIMITS = {"max_text_chars": 2000, "max_video_bytes": 400_000, "max_decoded_pixels": 2_000_000}
GOOD = "accepted"
pytestmark = pytest.mark.usefixtures("prefect_server")  # the commands run their flows on the test server


def _cli(*args: str) -> str:
    """Run one command in-process on a worker thread, so that a hang fails the test instead of stalling it."""
    out: list = []
    worker = threading.Thread(target=lambda: out.append(CliRunner().invoke(app, list(args))), daemon=True)
    worker.start()
    worker.join(timeout=900)
    assert not worker.is_alive(), f"videorefer {' '.join(args)} hung"
    result = out[0]
    assert result.exit_code == 0, f"{args}: {result.output}\n{result.exception!r}"
    return result.output


def _config(path: Path, **extra: object) -> Path:
    import yaml

    path.write_text(yaml.safe_dump({**TINY, "max_reject_fraction": 1.0, "limits": LIMITS, **extra}))
    return path


def _mask(height: int = H, width: int = W, frame_box: tuple[int, int, int, int] = (10, 20, 40, 60)) -> dict:
    mask = np.zeros((height, width), bool)
    y0, x0, y1, x1 = frame_box
    mask[y0:y1, x0:x1] = True
    return encode_rle(mask)


def _manifest_corpus(root: Path, outside: Path) -> tuple[Path, list[tuple[str, dict, str]]]:
    """The demo corpus (good rows) plus one row per bad kind: (kind, row, expected reason or GOOD)."""
    manifest = make_inputs(root, clips=2, qa_clips=1)
    good_rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    clip = good_rows[0]["video"]
    bad = root / "bad"
    bad.mkdir()
    (bad / "text.mp4").write_text("hello, I am text")
    (bad / "empty.mp4").write_bytes(b"")
    os.mkfifo(bad / "fifo.mp4")
    os.symlink("/dev/zero", bad / "zero.mp4")
    (bad / "no_frames").mkdir()
    with (bad / "huge.mp4").open("wb") as handle:  # sparse: 1 MB on paper, nothing on disk
        handle.truncate(1_000_000)
    make_clip(bad / "big_frames.mp4", seed=5, num_frames=2, width=1024, height=1024, fps=FPS)
    frames = root / "frames"
    frames.mkdir()
    from PIL import Image

    for index in range(6):
        Image.fromarray(np.full((H, W, 3), 30 * index, np.uint8)).save(frames / f"{index:04d}.png")
    make_clip(outside / "elsewhere.mp4", seed=6, num_frames=FRAMES, **{k: CLIP_SIZE[k] for k in ("width", "height")})
    os.symlink(outside / "elsewhere.mp4", bad / "leaves_root.mp4")
    obj = {"name": "ball", "expression": "the red ball"}
    cases: list[tuple[str, dict, str]] = [(f"good row {n}", row, GOOD) for n, row in enumerate(good_rows)]
    cases += [
        ("frame folder", {"video": "frames", "caption": "a grey screen brightens"}, GOOD),
        ("missing file", {"video": "bad/missing.mp4", "caption": "c"}, R.VIDEO_NOT_FOUND),
        ("text named .mp4", {"video": "bad/text.mp4", "caption": "c"}, R.BAD_VIDEO),
        ("empty file", {"video": "bad/empty.mp4", "caption": "c"}, R.EMPTY_VIDEO),
        ("FIFO", {"video": "bad/fifo.mp4", "caption": "c"}, R.NOT_A_REGULAR_FILE),
        ("symlink to /dev/zero", {"video": "bad/zero.mp4", "caption": "c"}, R.PATH_NOT_ALLOWED),
        ("folder without frames", {"video": "bad/no_frames", "caption": "c"}, R.EMPTY_VIDEO),
        ("file above max_video_bytes", {"video": "bad/huge.mp4", "caption": "c"}, R.VIDEO_TOO_LARGE),
        ("1024x1024 frames above the pixel budget", {"video": "bad/big_frames.mp4", "caption": "c"},
         R.VIDEO_TOO_LARGE),
        ("../ path", {"video": "../outside/elsewhere.mp4", "caption": "c"}, R.PATH_NOT_ALLOWED),
        ("absolute path outside", {"video": str(outside / "elsewhere.mp4"), "caption": "c"}, R.PATH_NOT_ALLOWED),
        ("symlink leaving the root", {"video": "bad/leaves_root.mp4", "caption": "c"}, R.PATH_NOT_ALLOWED),
        ("start NaN", {"video": clip, "caption": "c", "start": "NaN", "end": 0.5}, R.BAD_SPAN),
        ("start not a number", {"video": clip, "caption": "c", "start": "soon", "end": 0.5}, R.BAD_SPAN),
        ("reversed span", {"video": clip, "caption": "c", "start": 0.8, "end": 0.2}, R.BAD_SPAN),
        ("span past the end", {"video": clip, "caption": "c", "start": 0.5, "end": 30}, R.BAD_SPAN),
        ("span after the end", {"video": clip, "caption": "c", "start": 20, "end": 30}, R.BAD_SPAN),
        ("caption above max_text_chars", {"video": clip, "caption": "x" * 5000, "end": 0.9}, R.TEXT_TOO_LONG),
        ("duplicate row", dict(good_rows[0]), R.DUPLICATE_ROW),
        ("duplicate with another caption", {**good_rows[1], "caption": "something else"}, R.DUPLICATE_ROW),
        ("mask on frame 999", {"video": clip, "caption": "c", "end": 0.8,
                               "objects": [{**obj, "masks": {"999": _mask()}}]}, R.FRAME_OUT_OF_RANGE),
        ("mask on frame -1", {"video": clip, "caption": "c", "end": 0.7,
                              "objects": [{**obj, "masks": {"-1": _mask()}}]}, R.FRAME_OUT_OF_RANGE),
        ("uncompressed RLE [0, 50]", {"video": clip, "caption": "c", "end": 0.6, "objects": [
            {**obj, "masks": {"2": {"size": [H, W], "counts": [0, 50]}}}]}, R.INVALID_MASK),
        ("compressed RLE of a smaller mask", {"video": clip, "caption": "c", "end": 0.5, "objects": [
            {**obj, "masks": {"2": {"size": [H, W], "counts": _mask(10, 10, (1, 1, 5, 5))["counts"]}}}]},
         R.INVALID_MASK),
        ("RLE counts not COCO characters", {"video": clip, "caption": "c", "end": 0.45, "objects": [
            {**obj, "masks": {"2": {"size": [H, W], "counts": "\x01\x02"}}}]}, R.INVALID_MASK),
        ("mask of another size than the video", {"video": clip, "caption": "c", "end": 0.4, "objects": [
            {**obj, "masks": {"2": _mask(H // 2, W // 2, (1, 1, 10, 10))}}]}, R.MASK_SIZE_MISMATCH),
        ("masks of two sizes", {"video": clip, "caption": "c", "end": 0.35, "objects": [
            {**obj, "masks": {"2": _mask(), "3": _mask(H * 2, W * 2)}}]}, R.MASK_SIZE_MISMATCH),
        ("objects not a list", {"video": clip, "caption": "c", "end": 0.3, "objects": "{}"}, R.MALFORMED_SAMPLE),
        ("row without a video", {"caption": "c"}, R.MALFORMED_SAMPLE),
        ("row without caption or objects", {"video": clip, "end": 0.25}, R.MALFORMED_SAMPLE),
    ]
    manifest.write_text("".join(json.dumps(row) + "\n" for _, row, _ in cases))
    return manifest, cases


def _reject_rows(root: Path, cases: list[tuple[str, dict, str]]) -> dict[int, str]:
    """Manifest row -> reject reason, from the ingest rejects (messages name the row, or else the video)."""
    by_video = {}
    for number, (_, row, _) in enumerate(cases):
        video = row.get("video", "")
        by_video.setdefault(str(video if video.startswith("/") else (root / video).resolve()), number)
        by_video.setdefault(str(root / video), number)
    out = {}
    for reject in layout.ingest_rejects(layout.open_root(root)):
        match = re.match(r"manifest row (\d+)", reject.message)
        if match:
            number = int(match.group(1))
        else:
            number = next(n for video, n in by_video.items() if reject.message.startswith(f"{video}:"))
        assert number not in out, f"two rejects for row {number}"
        out[number] = reject.reason
    return out


def test_every_bad_manifest_row_gets_its_reason_and_the_good_ones_are_built(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    outside.mkdir()
    manifest, cases = _manifest_corpus(root, outside)
    config = _config(tmp_path / "tiny.yaml")
    _cli("build", "--root", str(root), "--manifest", str(manifest), "--config", str(config))

    rejected = _reject_rows(root, cases)
    outcome = {kind: rejected.get(number, GOOD) for number, (kind, _, _) in enumerate(cases)}
    assert outcome == {kind: expected for kind, _, expected in cases}
    droot = layout.open_root(root)
    clips = [c for s in layout.shards(droot) for c in layout.shard_clips(droot, s)]
    assert len(clips) + len(rejected) == len(cases)  # every row accounted for: in = out + rejected
    samples = list(iter_samples(exported_tars(root)))
    exported = {sample.clip_id for sample, _ in samples}
    assert {c.clip_id for c in clips} <= exported  # every good row, the frame folder included, is exported
    assert any(c.num_frames == 6 for c in clips if c.clip_id in exported)  # the frame folder

    # The same manifest again: nothing new, nothing counted twice.
    _cli("ingest", "--root", str(root), "--manifest", str(manifest), "--config", str(config))
    assert len(layout.ingest_rejects(droot)) == len(rejected)

    # Allowed explicitly, the paths outside are read (and, being good videos, built).
    allowed = _config(tmp_path / "allowed.yaml", paths={"allow_outside": True})
    other = tmp_path / "other"
    _cli("ingest", "--root", str(other), "--manifest", str(manifest), "--config", str(allowed))
    reasons = [r.reason for r in layout.ingest_rejects(layout.open_root(other))]
    assert reasons.count(R.PATH_NOT_ALLOWED) == 0
    assert reasons.count(R.NOT_A_REGULAR_FILE) == 2  # the FIFO, and /dev/zero once its symlink may be followed


def _item(video: str, annotation: dict | None = None, answer: str = "A ball rolls to the left.", **extra) -> dict:
    question = "<video>\nPlease describe in detail the object <region> in the video."
    return {
        "video": video,
        "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}],
        "annotation": [annotation if annotation is not None else {"3": {"segmentation": _mask()}}],
        **extra,
    }


def test_every_bad_700k_item_gets_its_reason_and_the_good_ones_are_imported(tmp_path: Path) -> None:
    videos, outside = tmp_path / "videos", tmp_path / "outside"
    make_clip(videos / "clip.mp4", seed=7, num_frames=FRAMES, width=W, height=H, fps=FPS)
    make_clip(outside / "other.mp4", seed=8, num_frames=FRAMES, width=W, height=H, fps=FPS)
    os.mkfifo(videos / "fifo.mp4")
    os.symlink(outside / "other.mp4", videos / "link.mp4")
    two_regions = _item("clip.mp4")
    two_regions["conversations"][0]["value"] += " And <region>?"
    cases = [
        ("good item", _item("clip.mp4"), GOOD),
        ("good item, polygon mask", _item("clip.mp4", {"4": {"segmentation": [[10, 10, 50, 10, 50, 40]]}},
                                          height=H, width=W), GOOD),
        ("uncompressed RLE [0, 50]", _item("clip.mp4", {"3": {"segmentation": {"size": [H, W], "counts": [0, 50]}}}),
         R.INVALID_MASK),
        ("polygon outside the image", _item("clip.mp4", {"3": {"segmentation": [[0, 0, 500, 0, 500, 9]]}},
                                            height=H, width=W), R.INVALID_MASK),
        ("mask on frame -1", _item("clip.mp4", {"-1": {"segmentation": _mask()}}), R.FRAME_OUT_OF_RANGE),
        ("mask on frame 999", _item("clip.mp4", {"999": {"segmentation": _mask()}}), R.FRAME_OUT_OF_RANGE),
        ("mask of another size than the video", _item("clip.mp4", {"3": {"segmentation": _mask(H * 2, W * 2)}}),
         R.MASK_SIZE_MISMATCH),
        ("declared size differs from the masks", _item("clip.mp4", height=H + 1, width=W), R.MASK_SIZE_MISMATCH),
        ("null segmentation", _item("clip.mp4", {"3": {"segmentation": None}}), R.MISSING_MASK),
        ("<region> count differs", two_regions, R.REGION_COUNT_MISMATCH),
        ("answer above max_text_chars", _item("clip.mp4", answer="y" * 5000), R.TEXT_TOO_LONG),
        ("../ path", _item("../outside/other.mp4"), R.PATH_NOT_ALLOWED),
        ("absolute path outside", _item(str(outside / "other.mp4")), R.PATH_NOT_ALLOWED),
        ("symlink leaving the root", _item("link.mp4"), R.PATH_NOT_ALLOWED),
        ("missing video", _item("missing.mp4"), R.VIDEO_NOT_FOUND),
        ("FIFO", _item("fifo.mp4"), R.NOT_A_REGULAR_FILE),
    ]
    source = tmp_path / "released.json"
    source.write_text(json.dumps([item for _, item, _ in cases]))
    root = tmp_path / "root"
    config = _config(tmp_path / "tiny.yaml", shard_size=100)
    _cli("import-700k", "--json", str(source), "--videos", str(videos), "--root", str(root), "--config", str(config))

    droot = DatasetRoot(root)
    rejects = [r for name in droot.listdir("rejects/import_700k") if name.endswith(".parquet")
               for r in tables.read_rejects(droot, "import_700k", name.removesuffix(".parquet"))]
    expected = sorted(reason for _, _, reason in cases if reason != GOOD)
    assert sorted(r.reason for r in rejects) == expected
    samples = list(iter_samples(exported_tars(root)))
    assert len(samples) == sum(reason == GOOD for _, _, reason in cases) == len(cases) - len(rejects)


def test_demo_videos_outside_the_root_are_allowed_because_the_user_named_them(tmp_path: Path) -> None:
    videos = tmp_path / "my_videos"
    make_clip(videos / "a.mp4", seed=9, num_frames=FRAMES, width=W, height=H, fps=FPS)
    (videos / "a.txt").write_text("a red ball bounces\n")
    root = tmp_path / "demo"
    _cli("demo", "--root", str(root), "--clips", "1", "--videos", str(videos))
    droot = layout.open_root(root)
    assert not [r for r in layout.ingest_rejects(droot) if r.reason == R.PATH_NOT_ALLOWED]
    clips = [c for s in layout.shards(droot) for c in layout.shard_clips(droot, s)]
    assert str((videos / "a.mp4").resolve()) in {c.video_uri for c in clips}
