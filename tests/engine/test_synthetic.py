"""engine.synthetic: deterministic H.264 clips whose sidecar masks, boxes and caption match what was drawn."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from engine.masks import decode_rle
from engine.synthetic import (
    COLORS,
    SHAPES,
    load_ground_truth,
    make_clip,
    make_corpus,
    render_scene,
    sidecar_path,
)

SMALL = {"num_frames": 12, "width": 96, "height": 72}


def _decode_all_pyav(path: Path) -> list[np.ndarray]:
    import av

    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def test_same_seed_gives_byte_identical_files(tmp_path: Path) -> None:
    first = make_corpus(tmp_path / "a", 3, seed=7, **SMALL)
    second = make_corpus(tmp_path / "b", 3, seed=7, **SMALL)
    names_a = sorted(p.name for p in (tmp_path / "a").iterdir())
    names_b = sorted(p.name for p in (tmp_path / "b").iterdir())
    assert names_a == names_b and len(names_a) == 6  # mp4 + sidecar per clip, no temporary files left
    for name in names_a:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert [c.ground_truth.caption for c in first] == [c.ground_truth.caption for c in second]


def test_repeated_encodes_are_identical_at_a_height_that_is_not_a_multiple_of_16(tmp_path: Path) -> None:
    # x264's mbtree once made about 1 encode in 15 differ at such heights (uninitialised padding rows).
    digests = {make_clip(tmp_path / "again.mp4", seed=700005, **SMALL).path.read_bytes() for _ in range(20)}
    assert len(digests) == 1


def test_different_seeds_give_different_clips(tmp_path: Path) -> None:
    one = make_clip(tmp_path / "one.mp4", seed=1, **SMALL)
    two = make_clip(tmp_path / "two.mp4", seed=2, **SMALL)
    assert one.path.read_bytes() != two.path.read_bytes()


def test_sidecar_round_trip_and_missing_sidecar(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "clip.mp4", seed=3, num_objects=3, **SMALL)
    assert sidecar_path(clip.path) == tmp_path / "clip.gt.json"
    assert json.loads(sidecar_path(clip.path).read_text())["video"] == "clip.mp4"
    assert load_ground_truth(clip.path) == clip.ground_truth
    assert load_ground_truth(tmp_path / "elsewhere.mp4") is None


def test_caption_nouns_are_the_object_names_subject_first() -> None:
    for seed in range(12):
        _, objects, caption = render_scene(seed=seed, num_objects=1 + seed % 3, **SMALL)
        words = caption.split()
        nouns = [word for word in words if word in SHAPES]
        assert nouns == [obj.name for obj in objects], caption
        assert words[2] == objects[0].name  # "a red ball rolls ...": the subject comes first
        for obj in objects:
            assert f"{obj.color} {obj.name}" in caption
            assert obj.category == SHAPES[obj.name][0]
        assert len({obj.name for obj in objects}) == len(objects)


def test_masks_are_exactly_the_visible_drawn_pixels() -> None:
    frames, objects, _ = render_scene(seed=4, num_objects=3, **SMALL)
    background_only = np.ones(frames.shape[:3], dtype=bool)
    for obj in objects:
        colour = np.asarray(COLORS[obj.color], dtype=np.float64)
        for t in range(SMALL["num_frames"]):
            mask = decode_rle(obj.masks[t])
            assert mask.shape == frames.shape[1:3] and mask.any()
            pixels = frames[t][mask].astype(np.float64)
            # Every visible pixel is the object's colour, lit or shaded by its texture (factor 0.72 or 1).
            ratio = pixels.sum(axis=1) / colour.sum()
            assert np.all((np.abs(ratio - 1.0) < 0.02) | (np.abs(ratio - 0.72) < 0.02))
            ys, xs = np.nonzero(mask)
            assert obj.boxes[t] == (xs.min(), ys.min(), xs.max() + 1.0, ys.max() + 1.0)
            background_only[t] &= ~mask
    # No object colour outside the masks: background pixels are grey (equal channels).
    outside = frames[background_only]
    assert np.all(outside.max(axis=1) == outside.min(axis=1))


def test_masks_of_different_objects_never_overlap() -> None:
    _, objects, _ = render_scene(seed=6, num_objects=3, **SMALL)
    for t in range(SMALL["num_frames"]):
        total = sum(decode_rle(obj.masks[t]).astype(int) for obj in objects)
        assert total.max() <= 1


def test_moving_and_static_objects() -> None:
    statics = 0
    for seed in range(10):
        _, objects, _ = render_scene(seed=seed, num_objects=3, **SMALL)
        assert not objects[0].is_static  # the subject always moves
        subject = objects[0]
        assert subject.masks[0] != subject.masks[SMALL["num_frames"] - 1]
        for obj in objects:
            if not obj.is_static:
                continue
            statics += 1
            areas = {t: int(decode_rle(m).sum()) for t, m in obj.masks.items()}
            unoccluded = {obj.masks[t].counts for t, a in areas.items() if a == max(areas.values())}
            assert len(unoccluded) == 1  # a static object's full shape never changes
    assert statics > 0


def test_the_mp4_decodes_to_num_frames_with_pyav_and_decord(tmp_path: Path) -> None:
    import decord

    clip = make_clip(tmp_path / "clip.mp4", seed=5, **SMALL)
    decoded = _decode_all_pyav(clip.path)
    assert len(decoded) == SMALL["num_frames"]
    assert decoded[0].shape == (SMALL["height"], SMALL["width"], 3)
    assert len(decord.VideoReader(str(clip.path))) == SMALL["num_frames"]


def test_h264_keeps_each_object_in_its_colour(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "clip.mp4", seed=8, num_objects=3, **SMALL)
    decoded = _decode_all_pyav(clip.path)
    palette = {name: np.asarray(rgb, dtype=np.float64) for name, rgb in COLORS.items()}
    for obj in clip.ground_truth.objects:
        for t in (0, SMALL["num_frames"] - 1):
            mean = decoded[t][decode_rle(obj.masks[t])].astype(np.float64).mean(axis=0)
            nearest = min(palette, key=lambda name: _hue_distance(mean, palette[name]))
            assert nearest == obj.color


def _hue_distance(a: np.ndarray, b: np.ndarray) -> float:
    # Texture darkens colours uniformly, so compare chromaticity rather than absolute RGB.
    return float(np.abs(a / a.sum() - b / b.sum()).sum())


def test_default_size_and_bad_arguments(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "default.mp4", seed=0)
    truth = clip.ground_truth
    assert (truth.width, truth.height, truth.num_frames, truth.fps) == (256, 192, 32, 12.0)
    assert all(len(obj.masks) == 32 and len(obj.boxes) == 32 for obj in truth.objects)
    with pytest.raises(ValueError):
        render_scene(seed=0, width=97, height=72)
    with pytest.raises(ValueError):
        render_scene(seed=0, num_objects=0)
    with pytest.raises(ValueError):
        render_scene(seed=0, num_frames=0)
