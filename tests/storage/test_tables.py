"""Parquet stage tables: lossless round trips of every record field (None included), order, metadata, rejects."""

from __future__ import annotations

import dataclasses
import io

import pyarrow.parquet as pq
import pytest

from engine.errors import RejectReason
from engine.types import ClipQA, QAPair, Reject
from storage.root import DatasetRoot
from storage.tables import (
    OBJECT_SCHEMA,
    read_clips,
    read_records,
    read_rejects,
    record_from_row,
    record_to_row,
    table_metadata,
    write_clips,
    write_records,
    write_rejects,
    write_stage,
)
from tests.storage.conftest import make_clip, make_record


def test_full_record_round_trips_every_field(root: DatasetRoot) -> None:
    record = make_record("a")
    write_records(root, "refine", "shard-000000", [record], "cfg1")
    (back,) = read_records(root, "refine", "shard-000000")
    assert back == record
    for field in dataclasses.fields(record):
        assert getattr(back, field.name) == getattr(record, field.name), field.name
    assert back.masklet.box == (1.0, 2.5, 30.0, 40.0)
    assert back.provenance[0].latency_s == 0.25


def test_bare_record_keeps_none_values(root: DatasetRoot) -> None:
    record = make_record("b", full=False)
    bare_clip = dataclasses.replace(record.clip, start_s=None, end_s=None)
    record = dataclasses.replace(record, clip=bare_clip)
    write_records(root, "analyze", "s", [record], "h")
    (back,) = read_records(root, "analyze", "s")
    assert back == record
    assert back.descriptions is None and back.masklet is None and back.review is None
    assert back.detailed_caption is None and back.short_caption is None
    assert back.clip.start_s is None and back.provenance == ()


def test_masklet_without_box_and_given_objects_round_trip(root: DatasetRoot) -> None:
    record = make_record("c")
    record = dataclasses.replace(
        record, clip=make_clip("c", given=True), masklet=dataclasses.replace(record.masklet, box=None)
    )
    write_records(root, "segment", "s", [record], "h")
    assert read_records(root, "segment", "s") == [record]


def test_rows_are_sorted_so_files_are_identical(root: DatasetRoot) -> None:
    records = [make_record(f"clip{i}", noun) for i in range(3) for noun in ("dog", "ball")]
    write_records(root, "annotate", "s", records, "h")
    first = root.read_bytes(root.stage_path("annotate", "s"))
    write_records(root, "annotate", "s", list(reversed(records)), "h")
    assert root.read_bytes(root.stage_path("annotate", "s")) == first
    back = read_records(root, "annotate", "s")
    assert [(r.clip_id, r.object_id) for r in back] == sorted((r.clip_id, r.object_id) for r in records)


def test_config_hash_in_parquet_metadata_and_done_marker(root: DatasetRoot) -> None:
    write_records(root, "review", "shard-000003", [make_record()], "abc123")
    meta = table_metadata(root, root.stage_path("review", "shard-000003"))
    assert meta["config_hash"] == "abc123" and meta["stage"] == "review" and meta["kind"] == "object"
    assert root.stage_done("review", "shard-000003", "abc123")
    assert not root.stage_done("review", "shard-000003", "other")


def test_rewrite_without_marking_done_clears_the_old_marker(root: DatasetRoot) -> None:
    write_records(root, "refine", "s", [make_record()], "h")
    write_records(root, "refine", "s", [make_record()], "h", mark_done=False)
    assert not root.stage_done("refine", "s", "h")


def test_explicit_schema_is_used(root: DatasetRoot) -> None:
    write_records(root, "refine", "s", [make_record()], "h")
    table = pq.read_table(io.BytesIO(root.read_bytes(root.stage_path("refine", "s"))))
    assert table.schema.remove_metadata() == OBJECT_SCHEMA
    assert table.column("provenance").to_pylist()[0][0]["agent"] == "analyzer"


def test_empty_stage_table(root: DatasetRoot) -> None:
    write_records(root, "analyze", "s", [], "h")
    assert read_records(root, "analyze", "s") == []
    assert root.stage_done("analyze", "s", "h")


def test_missing_stage_table_raises(root: DatasetRoot) -> None:
    with pytest.raises(FileNotFoundError):
        read_records(root, "analyze", "nope")


def test_mixed_record_types_are_refused(root: DatasetRoot) -> None:
    record = make_record()
    qa = ClipQA(clip=record.clip, objects=(record,), qa=())
    with pytest.raises(TypeError):
        write_records(root, "generate_qa", "s", [record, qa], "h")


def test_clip_qa_round_trip(root: DatasetRoot) -> None:
    first, second = make_record("q", "dog"), make_record("q", "cat", seed=1, full=False)
    item = ClipQA(
        clip=make_clip("q", given=True),
        objects=(first, second),
        qa=(
            QAPair(
                question="What does <region> do?", answer="It runs.", qa_type="basic", object_ids=(first.object_id,)
            ),
            QAPair(
                question="Which is faster?",
                answer="(A)",
                qa_type="reasoning",
                object_ids=(first.object_id, second.object_id),
                options=("the dog", "the cat"),
            ),
        ),
        provenance=(make_record().provenance[0],),
    )
    write_records(root, "generate_qa", "s", [item], "h")
    assert read_records(root, "generate_qa", "s") == [item]
    assert table_metadata(root, root.stage_path("generate_qa", "s"))["kind"] == "clip_qa"


def test_rejects_round_trip_sorted(root: DatasetRoot) -> None:
    rejects = [
        Reject(stage="segment", item_id="o2", clip_id="c2", reason=RejectReason.NO_MASK, message="nothing found"),
        Reject(stage="segment", item_id="o1", clip_id="c1", reason=RejectReason.NO_BOX),
    ]
    write_rejects(root, "segment", "s", rejects)
    back = read_rejects(root, "segment", "s")
    assert back == sorted(rejects, key=lambda r: r.clip_id)
    assert back[0].reason is RejectReason.NO_BOX
    assert read_rejects(root, "segment", "other") == []


def test_write_stage_writes_rejects_records_and_marker(root: DatasetRoot) -> None:
    reject = Reject(stage="review", item_id="o", clip_id="c", reason=RejectReason.REVIEW_REJECTED)
    write_stage(root, "review", "s", [make_record()], [reject], "h")
    assert read_rejects(root, "review", "s") == [reject]
    assert len(read_records(root, "review", "s")) == 1
    assert root.stage_done("review", "s", "h")


def test_clips_table_round_trip(root: DatasetRoot) -> None:
    clips = [make_clip("z"), make_clip("a", given=True), dataclasses.replace(make_clip("m"), start_s=None)]
    write_clips(root, "part-0001", clips)
    assert read_clips(root, "part-0001") == sorted(clips, key=lambda c: c.clip_id)
    write_clips(root, "part-0000", [make_clip("other")])
    assert len(read_clips(root)) == 4


def test_row_functions_are_inverse() -> None:
    record = make_record("r")
    assert record_from_row(record_to_row(record)) == record
