"""Pinned shards: membership decided once, incremental ingest only adds shards, interrupted pins resume identically."""

from __future__ import annotations

import pytest

from engine.errors import ConfigError
from storage.root import DatasetRoot
from storage.shards import list_shards, pin_shards, pinned_clip_ids, read_shard

CLIPS = [f"c{i:03d}" for i in range(10)]


def test_pin_cuts_clips_into_shards_in_order(root: DatasetRoot) -> None:
    created = pin_shards(root, CLIPS, 4)
    assert created == ["shard-000000", "shard-000001", "shard-000002"]
    assert list_shards(root) == created
    assert [read_shard(root, s) for s in created] == [CLIPS[0:4], CLIPS[4:8], CLIPS[8:10]]


def test_incremental_ingest_never_changes_existing_shards(root: DatasetRoot) -> None:
    pin_shards(root, CLIPS[:6], 4)
    before = {s: root.read_bytes(root.shard_path(s)) for s in list_shards(root)}
    more = CLIPS + ["c100", "c101"]  # the manifest grew; old rows come again
    created = pin_shards(root, more, 4)
    assert created == ["shard-000002", "shard-000003"]
    assert {s: root.read_bytes(root.shard_path(s)) for s in before} == before
    assert read_shard(root, "shard-000002") == ["c006", "c007", "c008", "c009"]
    assert read_shard(root, "shard-000003") == ["c100", "c101"]
    assert pin_shards(root, more, 4) == []  # nothing new: nothing pinned
    assert sorted(pinned_clip_ids(root)) == sorted(more)


def test_duplicates_are_pinned_once(root: DatasetRoot) -> None:
    pin_shards(root, ["a", "b", "a", "c", "b"], 10)
    assert read_shard(root, "shard-000000") == ["a", "b", "c"]


def test_interrupted_pin_resumes_to_the_same_layout(root: DatasetRoot, tmp_path) -> None:
    reference = DatasetRoot(tmp_path / "reference")
    pin_shards(reference, CLIPS, 3)
    pin_shards(root, CLIPS[:3], 3)  # as if the run died after writing the first shard
    pin_shards(root, CLIPS, 3)
    assert [read_shard(root, s) for s in list_shards(root)] == [
        read_shard(reference, s) for s in list_shards(reference)
    ]


def test_bad_arguments(root: DatasetRoot) -> None:
    with pytest.raises(ConfigError):
        pin_shards(root, CLIPS, 0)
    with pytest.raises(ValueError):
        pin_shards(root, ["has.dot"], 2)
    assert list_shards(root) == []
