"""VideoRefer-700K JSON: import with reasons for unusable items, polygon/uncompressed RLE conversion, round trip."""

from __future__ import annotations

import copy

import numpy as np
from pycocotools import mask as coco_mask

from engine.errors import RejectReason
from engine.masks import decode_rle, encode_rle
from storage.root import DatasetRoot
from storage.samples import validate_sample
from storage.videorefer_json import export_700k, import_700k, read_700k, write_export_json
from tests.storage.conftest import GRID

H, W = 48, 64


def rle(y0: int, x0: int, y1: int, x1: int) -> dict:
    mask = np.zeros((H, W), bool)
    mask[y0:y1, x0:x1] = True
    return encode_rle(mask)


def item(regions: int = 1, *, prompt: str = "describe in detail the object {r} in the video", **extra) -> dict:
    region_text = " and ".join(["<region>"] * regions)
    return {
        "video": "panda/clip_0001.mp4",
        "conversations": [
            {"from": "human", "value": "<video>\nPlease " + prompt.format(r=region_text) + "."},
            {"from": "gpt", "value": "A man in a red coat walks to the left."},
        ],
        "annotation": [{"3": {"segmentation": rle(5, 5, 30, 30)}, "17": {"segmentation": rle(10, 10, 40, 40)}}]
        * regions,
        **extra,
    }


def test_valid_items_round_trip_exactly() -> None:
    items = [
        item(),
        item(2, height=H, width=W, id="abc", source="mevis"),
        item(prompt="describe the object {r} in the video in brief"),
    ]
    samples, rejects = import_700k(items, video_root="/data/videos", grid=GRID)
    assert rejects == []
    assert [s.task for s in samples] == ["detailed", "detailed", "short"]
    assert samples[0].video_uri == "/data/videos/panda/clip_0001.mp4"
    assert samples[1].height == H and len(samples[1].objects) == 2
    assert sorted(samples[0].objects[0].masks) == [3, 17]
    assert all(validate_sample(s, grid=GRID) == [] for s in samples)
    assert export_700k(samples) == items


def test_null_missing_and_empty_segmentation_are_rejected_with_reasons() -> None:
    null = item()
    null["annotation"] = [{"3": {"segmentation": None}}]
    missing = item()
    missing["annotation"] = [{"3": {}}]
    empty_object = item()
    empty_object["annotation"] = [{}]
    no_annotation = item()
    del no_annotation["annotation"]
    zero_area = item()
    zero_area["annotation"] = [{"3": {"segmentation": encode_rle(np.zeros((H, W), bool))}}]
    samples, rejects = import_700k([null, missing, empty_object, no_annotation, zero_area, item()], grid=GRID)
    assert len(samples) == 1
    assert [r.item_id for r in rejects] == ["item0", "item1", "item2", "item3", "item4"]
    assert [r.reason for r in rejects] == [RejectReason.MISSING_MASK] * 4 + [RejectReason.EMPTY_MASKLET]
    assert all(r.message for r in rejects)


def test_region_count_mismatch_and_malformed_items() -> None:
    two_regions_one_mask = item(2)
    two_regions_one_mask["annotation"] = two_regions_one_mask["annotation"][:1]
    no_video_prefix = item()
    no_video_prefix["conversations"][0]["value"] = "describe in detail the object <region> in the video"
    not_a_dict = ["just a string"]
    no_video = item()
    del no_video["video"]
    samples, rejects = import_700k([two_regions_one_mask, no_video_prefix, not_a_dict, no_video], grid=GRID)
    assert samples == []
    assert [r.reason for r in rejects] == [
        RejectReason.REGION_COUNT_MISMATCH,
        RejectReason.MALFORMED_SAMPLE,
        RejectReason.MALFORMED_SAMPLE,
        RejectReason.MALFORMED_SAMPLE,
    ]


def test_polygons_and_uncompressed_rle_are_converted() -> None:
    polygon = item(height=H, width=W)
    polygon["annotation"] = [{"0": {"segmentation": [[5.0, 5.0, 30.0, 5.0, 30.0, 25.0, 5.0, 25.0]]}}]
    dense = np.zeros((H, W), bool)
    dense[8:20, 4:50] = True
    fortran = coco_mask.encode(np.asfortranarray(dense.astype(np.uint8)))
    runs = []  # uncompressed RLE: column-major run lengths starting with zeros
    flat, value, count = dense.flatten(order="F"), False, 0
    for pixel in flat:
        if pixel == value:
            count += 1
        else:
            runs.append(count)
            value, count = pixel, 1
    runs.append(count)
    uncompressed = item()
    uncompressed["annotation"] = [{"4": {"segmentation": {"size": [H, W], "counts": runs}}}]
    samples, rejects = import_700k([polygon, uncompressed], grid=GRID)
    assert rejects == []
    poly_mask = decode_rle(samples[0].objects[0].masks[0])
    assert poly_mask[10, 10] and not poly_mask[40, 60] and poly_mask.sum() > 400
    assert samples[1].objects[0].masks[4].counts == fortran["counts"].decode()
    exported = export_700k(samples)[1]["annotation"][0]["4"]["segmentation"]
    assert exported == {"size": [H, W], "counts": fortran["counts"].decode()}


def test_polygon_without_image_size_is_rejected() -> None:
    polygon = item()
    polygon["annotation"] = [{"0": {"segmentation": [[5.0, 5.0, 30.0, 5.0, 30.0, 25.0]]}}]
    samples, rejects = import_700k([polygon], grid=GRID)
    assert samples == [] and rejects[0].reason is RejectReason.MALFORMED_SAMPLE


def test_qa_items_and_task_override() -> None:
    qa = item(prompt="what is the object {r} doing in the video?")
    samples, _ = import_700k([qa], grid=GRID)
    assert samples[0].task == "qa"
    samples, _ = import_700k([qa], task="detailed", grid=GRID)
    assert samples[0].task == "detailed"


def test_import_does_not_mutate_items_and_keys_are_stable() -> None:
    items = [item(), item(2)]
    original = copy.deepcopy(items)
    first, _ = import_700k(items, grid=GRID)
    second, _ = import_700k(items, grid=GRID)
    assert items == original
    assert [s.key for s in first] == [s.key for s in second]
    assert len({s.key for s in first}) == 2 and all("." not in s.key for s in first)


def test_export_json_file_in_root(root: DatasetRoot) -> None:
    samples, _ = import_700k([item(), item(2)], grid=GRID)
    relative = write_export_json(root, "detailed", samples)
    assert relative == "export/json/detailed.json"
    assert read_700k(root, relative) == [item(), item(2)]


# ---------------------------------------------------------------- one JSON per export (issue 14.9)


def test_one_json_file_per_export_with_paths_relative_to_the_stated_video_root(tmp_path) -> None:
    import json

    from storage.videorefer_json import export_video_root, write_export_files

    root = DatasetRoot(tmp_path / "ds")
    items = [item(), {**item(2), "video": "videos/b.mp4"}]
    root.write_json("export/json/train-000003.json", [])  # a part of an earlier, bigger export
    written = write_export_files(root, items)
    assert written == ["export/json/train.json", "export/json/_export.json"]
    assert not root.exists("export/json/train-000003.json")
    meta = root.read_json("export/json/_export.json")
    # Videos under the dataset root: the root, stated relative to export/json (the same files on any root).
    assert {k: v for k, v in meta.items() if k != "parts"} == {
        "format": "videorefer-700k", "video_root": "../..", "files": ["train.json"], "items": 2}
    assert set(meta["parts"]) == {"train.json"}  # what each file was made of: unchanged files are not rewritten
    assert export_video_root(root) == str(tmp_path / "ds")
    back = read_700k(root, "export/json/train.json")
    assert back == items
    samples, rejects = import_700k(back, grid=GRID, video_root=export_video_root(root))
    assert not rejects and samples[1].video_uri == str(tmp_path / "ds" / "videos" / "b.mp4")

    outside = [{**item(), "video": "/data/set/a/x.mp4"}, {**item(), "video": "/data/set/b/y.mp4"}, item()]
    write_export_files(root, outside, max_items=2)
    meta = json.loads((tmp_path / "ds" / "export" / "json" / "_export.json").read_text())
    assert meta["files"] == ["train-000000.json", "train-000001.json"] and meta["items"] == 3
    assert not root.exists("export/json/train.json")
    videos = [i["video"] for f in meta["files"] for i in read_700k(root, f"export/json/{f}")]
    assert meta["video_root"] == export_video_root(root) == "/"  # deepest folder of /data/set/... and the root
    assert [f"{meta['video_root'].rstrip('/')}/{v}" for v in videos] == [
        "/data/set/a/x.mp4", "/data/set/b/y.mp4", str(tmp_path / "ds" / "panda" / "clip_0001.mp4")]
    assert write_export_files(root, []) == [] and not root.exists("export/json/_export.json")


# ---------------------------------------------------------------- streamed shard by shard, only what changed


def test_export_parts_stream_shard_by_shard_and_rewrite_only_the_files_that_changed(tmp_path) -> None:
    from storage.videorefer_json import ExportPart, part_bytes, video_summary, write_export_files, write_export_parts

    root = DatasetRoot(tmp_path / "ds")
    shards = {f"s{n}": [{**item(), "video": f"videos/{n}-{k}.mp4"} for k in range(count)]
              for n, count in enumerate([3, 2, 4])}

    def parts() -> list[ExportPart]:
        return [ExportPart(shard_id=shard, items=len(items), digest=part_bytes(items)[1],
                           videos=video_summary(items, root)) for shard, items in shards.items()]

    reads: list[str] = []

    def read_part(shard: str) -> list[dict]:
        reads.append(shard)
        return shards[shard]

    written = write_export_parts(root, parts(), read_part, max_items=4)
    names = ["train-000000.json", "train-000001.json", "train-000002.json"]  # 9 items, 4 per file
    assert written == [*(f"export/json/{n}" for n in names), "export/json/_export.json"]
    merged = [i for n in names for i in read_700k(root, f"export/json/{n}")]
    assert merged == [i for items in shards.values() for i in items]
    # The same bytes as the one-list writer, which the streamed writer replaces.
    other = DatasetRoot(tmp_path / "other")
    write_export_files(other, merged, max_items=4)
    assert all(root.read_bytes(f"export/json/{n}") == other.read_bytes(f"export/json/{n}") for n in names)

    stamps = {n: (tmp_path / "ds" / "export" / "json" / n).stat().st_mtime_ns for n in names}
    reads.clear()
    assert write_export_parts(root, parts(), read_part, max_items=4) == []  # nothing changed: nothing written
    assert reads == []
    shards["s2"][0] = {**shards["s2"][0], "video": "videos/changed.mp4"}  # items 5..8: the second and third file
    assert write_export_parts(root, parts(), read_part, max_items=4) == [
        *(f"export/json/{n}" for n in names[1:]), "export/json/_export.json"]
    assert set(reads) == {"s1", "s2"} and "s0" not in reads  # s0's items lie only in the unchanged first file
    assert (tmp_path / "ds" / "export" / "json" / names[0]).stat().st_mtime_ns == stamps[names[0]]
    assert read_700k(root, "export/json/train-000001.json")[1]["video"] == "videos/changed.mp4"
    shards.pop("s2")
    shards.pop("s1")  # 3 items left: one file, the numbered parts removed
    assert write_export_parts(root, parts(), read_part, max_items=4)[-1] == "export/json/_export.json"
    assert sorted(root.listdir("export/json")) == ["_export.json", "train.json"]
