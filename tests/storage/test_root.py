"""DatasetRoot: layout paths, bytes/JSON round trips, atomic writes and done markers, on local disk and memory://."""

from __future__ import annotations

import pytest

from storage.root import DatasetRoot


def test_bytes_and_json_round_trip(root: DatasetRoot) -> None:
    root.write_bytes("a/b/c.bin", b"\x00\x01payload")
    root.write_json("dataset.json", {"name": "x", "nested": [1, 2, {"k": None}]})
    assert root.read_bytes("a/b/c.bin") == b"\x00\x01payload"
    assert root.read_json("dataset.json") == {"name": "x", "nested": [1, 2, {"k": None}]}
    assert root.exists("a/b/c.bin")
    assert not root.exists("a/b/missing.bin")
    assert root.listdir("a/b") == ["c.bin"]
    assert root.listdir("nowhere") == []


def test_write_json_is_deterministic(root: DatasetRoot) -> None:
    root.write_json("x.json", {"b": 1, "a": 2})
    first = root.read_bytes("x.json")
    root.write_json("x.json", {"a": 2, "b": 1})
    assert root.read_bytes("x.json") == first


def test_atomic_write_leaves_nothing_behind_on_failure(root: DatasetRoot) -> None:
    root.write_bytes("dir/keep.bin", b"old")
    with pytest.raises(RuntimeError), root.open_atomic("dir/keep.bin") as handle:
        handle.write(b"half of the new")
        raise RuntimeError("killed mid-write")
    assert root.read_bytes("dir/keep.bin") == b"old"
    assert root.listdir("dir") == ["keep.bin"]  # no temporary file left


def test_atomic_write_uses_a_temporary_name_until_complete(root: DatasetRoot) -> None:
    with root.open_atomic("out/data.tar", temp_name="data.tar.tmp") as handle:
        handle.write(b"x" * 10)
        handle.flush()
        assert not root.exists("out/data.tar")
    assert root.listdir("out") == ["data.tar"]
    assert root.read_bytes("out/data.tar") == b"x" * 10


def test_layout_paths() -> None:
    assert DatasetRoot.stage_path("segment", "shard-000001") == "stages/segment/shard-000001.parquet"
    assert DatasetRoot.reject_path("segment", "shard-000001") == "rejects/segment/shard-000001.parquet"
    assert DatasetRoot.shard_path("shard-000001") == "shards/shard-000001.json"
    assert DatasetRoot.source_path("part0") == "sources/part0.parquet"


def test_stage_done_needs_output_marker_and_matching_hash(root: DatasetRoot) -> None:
    assert not root.stage_done("analyze", "shard-000000", "h1")
    root.write_bytes(root.stage_path("analyze", "shard-000000"), b"table")
    assert not root.stage_done("analyze", "shard-000000", "h1")  # output without marker: not done
    root.mark_done("analyze", "shard-000000", "h1")
    assert root.stage_done("analyze", "shard-000000", "h1")
    assert not root.stage_done("analyze", "shard-000000", "h2")  # config changed: re-run
    assert root.done_shards("analyze") == ["shard-000000"]


def test_unreadable_marker_means_not_done(root: DatasetRoot) -> None:
    root.write_bytes(root.stage_path("refine", "s"), b"table")
    root.write_bytes(root.done_path("refine", "s"), b"{not json")
    assert not root.stage_done("refine", "s", "h")


def test_dataset_json_and_sub_roots(root: DatasetRoot) -> None:
    root.write_dataset_json(name="demo", config={"seed": 1})
    assert root.read_dataset_json()["name"] == "demo"
    assert root.read_dataset_json()["schema_version"] == 1
    root.sub("export/wds").write_bytes("f.txt", b"hi")
    assert root.read_bytes("export/wds/f.txt") == b"hi"
    assert DatasetRoot(root.url).read_bytes("export/wds/f.txt") == b"hi"
