"""Ground-truth readers: DAVIS palette PNGs, RLE JSON (700K list, SA-V, plain mapping), synthetic sidecars."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from engine.errors import ConfigError
from engine.masks import decode_rle, encode_rle
from engine.synthetic import make_clip
from storage.truth import SidecarTruth, read_truth, video_key

H, W = 6, 8


def _box(rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
    mask = np.zeros((H, W), dtype=bool)
    mask[rows[0] : rows[1], cols[0] : cols[1]] = True
    return mask


def _palette_png(path: Path, labels: np.ndarray) -> None:
    from PIL import Image

    image = Image.fromarray(labels.astype(np.uint8), mode="P")
    image.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [0, 0, 0] * 252 + [255, 255, 255])
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def test_video_keys() -> None:
    assert video_key("/data/videos/dog.mp4") == "dog"
    assert video_key("DAVIS/JPEGImages/480p/bear/") == "bear"
    assert video_key("clip-0-00001.gt.json") == "clip-0-00001"
    assert video_key("a/video.v2.mkv") == "video.v2"
    assert video_key("frames.001") == "frames.001"


# ------------------------------------------------------------------ DAVIS


def test_davis_palette_pngs_read_as_one_object_per_id_with_void_as_background(tmp_path: Path) -> None:
    folder = tmp_path / "DAVIS" / "Annotations" / "480p" / "bear"
    first = np.zeros((H, W), dtype=np.uint8)
    first[_box((0, 2), (0, 3))] = 1
    first[_box((3, 5), (4, 8))] = 2
    first[5, 0] = 255  # void
    second = np.zeros((H, W), dtype=np.uint8)
    second[_box((1, 3), (1, 4))] = 1  # object 2 has left the frame
    _palette_png(folder / "00000.png", first)
    _palette_png(folder / "00003.png", second)
    truth = read_truth(tmp_path / "DAVIS")
    assert truth.format == "davis"
    video = truth.find("/somewhere/DAVIS/JPEGImages/480p/bear")
    assert video is not None and (video.height, video.width) == (H, W)
    assert [obj.object_id for obj in video.objects] == ["1", "2"]
    one, two = video.objects
    assert one.frames == (0, 3) and two.frames == (0, 3)
    assert np.array_equal(decode_rle(one.masks[0]), _box((0, 2), (0, 3)))
    assert np.array_equal(decode_rle(one.masks[3]), _box((1, 3), (1, 4)))
    assert not decode_rle(two.masks[3]).any()  # absent on that frame: an empty mask, still annotated
    assert not any(decode_rle(obj.masks[0])[5, 0] for obj in video.objects)  # void is nobody's
    assert truth.find("bear.mp4") is video and truth.find("other.mp4") is None


def test_davis_names_that_are_not_numbers_count_in_name_order(tmp_path: Path) -> None:
    labels = np.zeros((H, W), dtype=np.uint8)
    labels[_box((0, 2), (0, 2))] = 3
    for name in ("b.png", "a.png", "c.png"):
        _palette_png(tmp_path / "clip" / name, labels)
    video = read_truth(tmp_path, fmt="davis").find("clip.mp4")
    assert video is not None and video.objects[0].object_id == "3" and video.objects[0].frames == (0, 1, 2)


def test_rgb_pngs_are_refused(tmp_path: Path) -> None:
    from PIL import Image

    (tmp_path / "clip").mkdir()
    Image.fromarray(np.zeros((H, W, 3), dtype=np.uint8)).save(tmp_path / "clip" / "00000.png")
    with pytest.raises(ConfigError, match="palette"):
        read_truth(tmp_path)


# ------------------------------------------------------------------ RLE JSON


def test_videorefer_700k_items_give_the_objects_of_each_video_once(tmp_path: Path) -> None:
    ball = {"0": {"segmentation": encode_rle(_box((0, 2), (0, 2)))}, "4": {"segmentation": None}}
    polygon = [[4.0, 2.0, 8.0, 2.0, 8.0, 6.0, 4.0, 6.0]]
    items = [
        {"video": "Panda-70M/a.mp4", "conversations": [], "annotation": [ball]},
        {"video": "Panda-70M/a.mp4", "conversations": [], "height": H, "width": W,
         "annotation": [ball, {"2": {"segmentation": polygon}}]},
        {"video": "Panda-70M/b.mp4", "annotation": [{"1": {"segmentation": {"size": [H, W], "counts": [0, H * W]}}}]},
    ]
    path = tmp_path / "videorefer-700k.json"
    path.write_text(json.dumps(items))
    truth = read_truth(path)
    assert truth.format == "rle-json" and len(truth) == 2
    video = truth.find("/data/Panda-70M/a.mp4")
    assert video is not None and [obj.frames for obj in video.objects] == [(0,), (2,)]  # the null frame is left out
    assert np.array_equal(decode_rle(video.objects[0].masks[0]), _box((0, 2), (0, 2)))
    assert int(decode_rle(video.objects[1].masks[2]).sum()) == 16  # the 4x4 polygon
    assert decode_rle(truth.find("b.mp4").objects[0].masks[1]).all()  # uncompressed RLE, all ones


def test_sa_v_masklets_are_every_fourth_frame(tmp_path: Path) -> None:
    a, b = encode_rle(_box((0, 2), (0, 2))), encode_rle(_box((2, 4), (2, 4)))
    sav = {"video_id": "sav_000001", "video_height": H, "video_width": W,
           "masklet": [[a, b], [a, None], [b, a]], "masklet_id": [0, 7]}
    (tmp_path / "sav_000001_manual.json").write_text(json.dumps(sav))
    video = read_truth(tmp_path).find("/videos/sav_000001.mp4")
    assert video is not None and [obj.object_id for obj in video.objects] == ["0", "7"]
    assert video.objects[0].frames == (0, 4, 8) and video.objects[1].frames == (0, 8)
    assert np.array_equal(decode_rle(video.objects[0].masks[8]), _box((2, 4), (2, 4)))


def test_a_plain_mapping_of_videos_to_objects(tmp_path: Path) -> None:
    data = {
        "dog.mp4": [{"0": encode_rle(_box((0, 3), (0, 3))), "1": {"segmentation": encode_rle(_box((1, 4), (1, 4)))}}],
        "street": {"car": {"name": "car", "masks": {"5": encode_rle(_box((0, 1), (0, 8)))}}},
    }
    (tmp_path / "truth.json").write_text(json.dumps(data))
    truth = read_truth(tmp_path / "truth.json")
    dog = truth.find("/media/dog.mp4")
    assert dog is not None and dog.objects[0].frames == (0, 1)
    street = truth.find("street.mkv")
    assert street is not None and street.objects[0].object_id == "car" and street.objects[0].name == "car"


def test_videos_of_one_name_are_told_apart_by_their_path(tmp_path: Path) -> None:
    items = [
        {"video": f"{part}/clip.mp4", "annotation": [{"0": {"segmentation": encode_rle(_box((0, k + 1), (0, 2)))}}]}
        for k, part in enumerate(("one", "two"))
    ]
    (tmp_path / "t.json").write_text(json.dumps(items))
    truth = read_truth(tmp_path / "t.json")
    assert int(decode_rle(truth.find("/data/two/clip.mp4").objects[0].masks[0]).sum()) == 4
    assert truth.find("/data/three/clip.mp4") is None  # ambiguous: no guess


def test_broken_truth_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        read_truth(tmp_path / "missing")
    with pytest.raises(ConfigError, match="no ground truth"):
        read_truth(tmp_path)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="readable JSON"):
        read_truth(tmp_path / "bad.json")
    with pytest.raises(ConfigError, match="unknown truth format"):
        read_truth(tmp_path, fmt="coco")  # type: ignore[arg-type]


# ------------------------------------------------------------------ synthetic sidecars


def test_synthetic_sidecars_from_a_folder_and_next_to_the_video(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "clip-7.mp4", seed=7, num_frames=4, width=64, height=48, num_objects=2)
    truth = read_truth(tmp_path)
    assert truth.format == "sidecar"
    video = truth.find(str(clip.path))
    nearby = SidecarTruth().find(str(clip.path))
    assert video is not None and nearby is not None and read_truth(None).find(str(clip.path)) == nearby
    expected = clip.ground_truth.objects
    for found in (video, nearby):
        assert [obj.name for obj in found.objects] == [obj.name for obj in expected]
        assert [obj.is_static for obj in found.objects] == [obj.is_static for obj in expected]
        assert found.objects[0].masks == expected[0].masks and found.objects[0].color == expected[0].color
    assert SidecarTruth().find(str(tmp_path / "no-such.mp4")) is None
