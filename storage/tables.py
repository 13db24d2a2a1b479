"""Parquet stage tables with explicit schemas: engine records to rows and back, losslessly, in a dataset root.

One table per (stage, shard) under `stages/`, rejected items under `rejects/`, ingested clips under `sources/`.
Every nested value keeps its structure as an Arrow struct or list column (masks as COCO RLE strings keyed by
absolute frame index, provenance as a list of structs), so tables are queryable with any Parquet reader and
`read_records(write_records(x)) == x` field for field, None values included. Rows are sorted by their ids so the
same records always give the same file. The stage-config hash is stored in the Parquet metadata and, last, in
the stage's done marker (see `storage.root`).
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from engine.errors import RejectReason
from engine.types import (
    Clip,
    ClipQA,
    Descriptions,
    GivenObject,
    Masklet,
    ObjectRecord,
    Provenance,
    QAPair,
    Reject,
    Review,
    RleMask,
)
from storage.root import SCHEMA_VERSION, DatasetRoot

# ---------------------------------------------------------------- schemas

PROVENANCE_TYPE = pa.struct(
    [
        ("agent", pa.string()),
        ("backend", pa.string()),
        ("model", pa.string()),
        ("prompt_version", pa.string()),
        ("latency_s", pa.float64()),
        ("prompt_tokens", pa.int64()),
        ("completion_tokens", pa.int64()),
    ]
)
MASK_TYPE = pa.struct([("frame", pa.int64()), ("height", pa.int32()), ("width", pa.int32()), ("counts", pa.string())])
MASKLET_TYPE = pa.struct(
    [
        ("key_frame", pa.int64()),
        ("box", pa.list_(pa.float64())),  # null when the masklet has no prompt box
        ("score", pa.float64()),
        ("masks", pa.list_(MASK_TYPE)),
    ]
)
GIVEN_OBJECT_TYPE = pa.struct(
    [("name", pa.string()), ("expression", pa.string()), ("category", pa.string()), ("masklet", MASKLET_TYPE)]
)
_CLIP_FIELDS = [
    ("clip_id", pa.string()),
    ("video_uri", pa.string()),
    ("caption", pa.string()),
    ("start_s", pa.float64()),
    ("end_s", pa.float64()),
    ("fps", pa.float64()),
    ("width", pa.int64()),
    ("height", pa.int64()),
    ("num_frames", pa.int64()),
    ("source", pa.string()),
    ("given_objects", pa.list_(GIVEN_OBJECT_TYPE)),
]
CLIP_TYPE = pa.struct(_CLIP_FIELDS)
DESCRIPTIONS_TYPE = pa.struct([("appearance", pa.string()), ("motion", pa.string()), ("is_static", pa.bool_())])
REVIEW_TYPE = pa.struct([("region_caption", pa.string()), ("accepted", pa.bool_()), ("reason", pa.string())])
_OBJECT_FIELDS = [
    ("object_id", pa.string()),
    ("clip_id", pa.string()),
    ("noun", pa.string()),
    ("is_subject", pa.bool_()),
    ("category", pa.string()),
    ("expression", pa.string()),
    ("clip", CLIP_TYPE),
    ("descriptions", DESCRIPTIONS_TYPE),
    ("masklet", MASKLET_TYPE),
    ("review", REVIEW_TYPE),
    ("detailed_caption", pa.string()),
    ("short_caption", pa.string()),
    ("provenance", pa.list_(PROVENANCE_TYPE)),
]
OBJECT_SCHEMA = pa.schema(_OBJECT_FIELDS)
QA_PAIR_TYPE = pa.struct(
    [
        ("question", pa.string()),
        ("answer", pa.string()),
        ("qa_type", pa.string()),
        ("object_ids", pa.list_(pa.string())),
        ("options", pa.list_(pa.string())),
    ]
)
CLIP_QA_SCHEMA = pa.schema(
    [
        ("clip_id", pa.string()),
        ("clip", CLIP_TYPE),
        ("objects", pa.list_(pa.struct(_OBJECT_FIELDS))),
        ("qa", pa.list_(QA_PAIR_TYPE)),
        ("provenance", pa.list_(PROVENANCE_TYPE)),
    ]
)
CLIPS_SCHEMA = pa.schema(_CLIP_FIELDS)
REJECT_SCHEMA = pa.schema(
    [
        ("stage", pa.string()),
        ("item_id", pa.string()),
        ("clip_id", pa.string()),
        ("reason", pa.string()),
        ("message", pa.string()),
    ]
)

_KIND_KEY = b"videorefer.kind"
_SCHEMA_VERSION_KEY = b"videorefer.schema_version"
_CONFIG_HASH_KEY = b"videorefer.config_hash"
_STAGE_KEY = b"videorefer.stage"

# ---------------------------------------------------------------- records <-> rows


def provenance_to_row(provenance: Provenance) -> dict[str, Any]:
    return {
        "agent": provenance.agent,
        "backend": provenance.backend,
        "model": provenance.model,
        "prompt_version": provenance.prompt_version,
        "latency_s": float(provenance.latency_s),
        "prompt_tokens": int(provenance.prompt_tokens),
        "completion_tokens": int(provenance.completion_tokens),
    }


def provenance_from_row(row: Mapping[str, Any]) -> Provenance:
    return Provenance(**row)


def masklet_to_row(masklet: Masklet | None) -> dict[str, Any] | None:
    if masklet is None:
        return None
    masks = [
        {"frame": int(frame), "height": mask.height, "width": mask.width, "counts": mask.counts}
        for frame, mask in sorted(masklet.masks.items())
    ]
    box = None if masklet.box is None else [float(v) for v in masklet.box]
    return {"key_frame": int(masklet.key_frame), "box": box, "score": float(masklet.score), "masks": masks}


def masklet_from_row(row: Mapping[str, Any] | None) -> Masklet | None:
    if row is None:
        return None
    masks = {
        int(m["frame"]): RleMask(height=int(m["height"]), width=int(m["width"]), counts=m["counts"])
        for m in row["masks"]
    }
    box = None if row["box"] is None else tuple(float(v) for v in row["box"])
    return Masklet(masks=masks, key_frame=int(row["key_frame"]), box=box, score=float(row["score"]))


def clip_to_row(clip: Clip) -> dict[str, Any]:
    return {
        "clip_id": clip.clip_id,
        "video_uri": clip.video_uri,
        "caption": clip.caption,
        "start_s": None if clip.start_s is None else float(clip.start_s),
        "end_s": None if clip.end_s is None else float(clip.end_s),
        "fps": float(clip.fps),
        "width": int(clip.width),
        "height": int(clip.height),
        "num_frames": int(clip.num_frames),
        "source": clip.source,
        "given_objects": [
            {"name": g.name, "expression": g.expression, "category": g.category, "masklet": masklet_to_row(g.masklet)}
            for g in clip.given_objects
        ],
    }


def clip_from_row(row: Mapping[str, Any]) -> Clip:
    given = tuple(
        GivenObject(
            name=g["name"], expression=g["expression"], category=g["category"], masklet=masklet_from_row(g["masklet"])
        )
        for g in row["given_objects"] or ()
    )
    return Clip(
        clip_id=row["clip_id"],
        video_uri=row["video_uri"],
        caption=row["caption"],
        start_s=row["start_s"],
        end_s=row["end_s"],
        fps=row["fps"],
        width=row["width"],
        height=row["height"],
        num_frames=row["num_frames"],
        source=row["source"],
        given_objects=given,
    )


def record_to_row(record: ObjectRecord) -> dict[str, Any]:
    """One `ObjectRecord` as a row of `OBJECT_SCHEMA` (plain Python values)."""
    described = record.descriptions
    review = record.review
    return {
        "object_id": record.object_id,
        "clip_id": record.clip.clip_id,
        "noun": record.noun,
        "is_subject": record.is_subject,
        "category": record.category,
        "expression": record.expression,
        "clip": clip_to_row(record.clip),
        "descriptions": None
        if described is None
        else {"appearance": described.appearance, "motion": described.motion, "is_static": described.is_static},
        "masklet": masklet_to_row(record.masklet),
        "review": None
        if review is None
        else {"region_caption": review.region_caption, "accepted": review.accepted, "reason": review.reason},
        "detailed_caption": record.detailed_caption,
        "short_caption": record.short_caption,
        "provenance": [provenance_to_row(p) for p in record.provenance],
    }


def record_from_row(row: Mapping[str, Any]) -> ObjectRecord:
    """The inverse of `record_to_row`."""
    descriptions = row["descriptions"]
    review = row["review"]
    return ObjectRecord(
        object_id=row["object_id"],
        clip=clip_from_row(row["clip"]),
        noun=row["noun"],
        is_subject=row["is_subject"],
        category=row["category"],
        expression=row["expression"],
        descriptions=None if descriptions is None else Descriptions(**descriptions),
        masklet=masklet_from_row(row["masklet"]),
        review=None if review is None else Review(**review),
        detailed_caption=row["detailed_caption"],
        short_caption=row["short_caption"],
        provenance=tuple(provenance_from_row(p) for p in row["provenance"] or ()),
    )


def clip_qa_to_row(item: ClipQA) -> dict[str, Any]:
    return {
        "clip_id": item.clip.clip_id,
        "clip": clip_to_row(item.clip),
        "objects": [record_to_row(o) for o in item.objects],
        "qa": [
            {
                "question": q.question,
                "answer": q.answer,
                "qa_type": q.qa_type,
                "object_ids": list(q.object_ids),
                "options": list(q.options),
            }
            for q in item.qa
        ],
        "provenance": [provenance_to_row(p) for p in item.provenance],
    }


def clip_qa_from_row(row: Mapping[str, Any]) -> ClipQA:
    return ClipQA(
        clip=clip_from_row(row["clip"]),
        objects=tuple(record_from_row(o) for o in row["objects"] or ()),
        qa=tuple(
            QAPair(
                question=q["question"],
                answer=q["answer"],
                qa_type=q["qa_type"],
                object_ids=tuple(q["object_ids"] or ()),
                options=tuple(q["options"] or ()),
            )
            for q in row["qa"] or ()
        ),
        provenance=tuple(provenance_from_row(p) for p in row["provenance"] or ()),
    )


def reject_to_row(reject: Reject) -> dict[str, Any]:
    return {
        "stage": reject.stage,
        "item_id": reject.item_id,
        "clip_id": reject.clip_id,
        "reason": str(reject.reason),
        "message": reject.message,
    }


def reject_from_row(row: Mapping[str, Any]) -> Reject:
    return Reject(
        stage=row["stage"],
        item_id=row["item_id"],
        clip_id=row["clip_id"],
        reason=RejectReason(row["reason"]),
        message=row["message"],
    )


# ---------------------------------------------------------------- Parquet bytes


def _table_bytes(rows: list[dict[str, Any]], schema: pa.Schema, metadata: dict[bytes, bytes]) -> bytes:
    table = pa.Table.from_pylist(rows, schema=schema).replace_schema_metadata(metadata)
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    return buffer.getvalue()


def _read_table(root: DatasetRoot, relative: str) -> pa.Table:
    if not root.exists(relative):
        raise FileNotFoundError(f"{root.url_of(relative)} does not exist")
    return pq.read_table(io.BytesIO(root.read_bytes(relative)))


def _metadata(kind: str, **fields: str) -> dict[bytes, bytes]:
    out = {_KIND_KEY: kind.encode(), _SCHEMA_VERSION_KEY: str(SCHEMA_VERSION).encode()}
    out.update({f"videorefer.{key}".encode(): value.encode() for key, value in fields.items()})
    return out


def table_metadata(root: DatasetRoot, relative: str) -> dict[str, str]:
    """The `videorefer.*` metadata of a table written here (kind, schema_version, config_hash, stage)."""
    with root.open_read(relative) as handle:
        raw = pq.ParquetFile(handle).schema_arrow.metadata or {}
    return {
        key.decode().removeprefix("videorefer."): value.decode()
        for key, value in raw.items()
        if key.startswith(b"videorefer.")
    }


# ---------------------------------------------------------------- stage tables


def write_records(
    root: DatasetRoot,
    stage: str,
    shard_id: str,
    records: Sequence[ObjectRecord] | Sequence[ClipQA],
    config_hash: str,
    *,
    mark_done: bool = True,
) -> None:
    """Write the stage table of (stage, shard), then (unless `mark_done=False`) its done marker, last.

    A stage that also rejects items writes them first with `write_rejects`, so that a done stage always has both.
    `records` are all `ObjectRecord`s or all `ClipQA`s (the QA path); rows are sorted by their ids.
    """
    items = list(records)
    if items and all(isinstance(item, ClipQA) for item in items):
        kind, schema = "clip_qa", CLIP_QA_SCHEMA
        rows = [clip_qa_to_row(item) for item in sorted(items, key=lambda q: q.clip.clip_id)]
    elif all(isinstance(item, ObjectRecord) for item in items):
        kind, schema = "object", OBJECT_SCHEMA
        rows = [record_to_row(item) for item in sorted(items, key=lambda r: (r.clip.clip_id, r.object_id))]
    else:
        raise TypeError("write_records takes only ObjectRecord or only ClipQA items")
    metadata = _metadata(kind, config_hash=config_hash, stage=stage)
    root.delete(root.done_path(stage, shard_id))  # the old marker must not vouch for a half-rewritten stage
    root.write_bytes(root.stage_path(stage, shard_id), _table_bytes(rows, schema, metadata))
    if mark_done:
        root.mark_done(stage, shard_id, config_hash, rows=len(rows))


def read_records(root: DatasetRoot, stage: str, shard_id: str) -> list[ObjectRecord] | list[ClipQA]:
    """The records of a stage table, in the stored order (`ClipQA`s for tables written from them)."""
    table = _read_table(root, root.stage_path(stage, shard_id))
    kind = (table.schema.metadata or {}).get(_KIND_KEY, b"object")
    rows = table.to_pylist()
    if kind == b"clip_qa":
        return [clip_qa_from_row(row) for row in rows]
    return [record_from_row(row) for row in rows]


def write_stage(
    root: DatasetRoot,
    stage: str,
    shard_id: str,
    records: Sequence[ObjectRecord] | Sequence[ClipQA],
    rejects: Sequence[Reject],
    config_hash: str,
) -> None:
    """A stage task's whole output in the safe order: rejects, records, done marker."""
    write_rejects(root, stage, shard_id, rejects)
    write_records(root, stage, shard_id, records, config_hash)


def write_rejects(root: DatasetRoot, stage: str, shard_id: str, rejects: Sequence[Reject]) -> None:
    rows = [reject_to_row(r) for r in sorted(rejects, key=lambda r: (r.clip_id, r.item_id, str(r.reason), r.message))]
    root.write_bytes(root.reject_path(stage, shard_id), _table_bytes(rows, REJECT_SCHEMA, _metadata("reject")))


def read_rejects(root: DatasetRoot, stage: str, shard_id: str) -> list[Reject]:
    """Rejected items of (stage, shard); empty when the stage wrote none."""
    relative = root.reject_path(stage, shard_id)
    if not root.exists(relative):
        return []
    return [reject_from_row(row) for row in _read_table(root, relative).to_pylist()]


# ---------------------------------------------------------------- sources


def write_clips(root: DatasetRoot, part: str, clips: Sequence[Clip]) -> None:
    """Ingested clips of one source part (`sources/<part>.parquet`), sorted by clip id."""
    rows = [clip_to_row(c) for c in sorted(clips, key=lambda c: c.clip_id)]
    root.write_bytes(root.source_path(part), _table_bytes(rows, CLIPS_SCHEMA, _metadata("clips")))


def read_clips(root: DatasetRoot, part: str | None = None) -> list[Clip]:
    """Clips of one source part, or of every part (in part-name order) when `part` is None."""
    parts = [part] if part is not None else list_source_parts(root)
    clips: list[Clip] = []
    for name in parts:
        clips.extend(clip_from_row(row) for row in _read_table(root, root.source_path(name)).to_pylist())
    return clips


def list_source_parts(root: DatasetRoot) -> list[str]:
    return [name.removesuffix(".parquet") for name in root.listdir("sources") if name.endswith(".parquet")]
