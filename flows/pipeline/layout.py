"""The pipeline's use of the storage layout, in one place: which table holds what for the engine's stages.

Sources are written per shard (`sources/<shard_id>.parquet`), so a stage task reads only its own shard's
clips. Ingest rejects go to `rejects/ingest/batch-<hash>.parquet` (one file per ingest call that rejected
something). Each (stage, shard) also keeps its figures in `reports/stages/<stage>/<shard_id>.json`, written
before the stage's done marker, so a skipped stage still reports its counts.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from engine.config import EngineConfig
from engine.ids import stable_hash
from engine.types import Clip, ClipQA, ObjectRecord, Reject
from storage import shards as storage_shards
from storage import tables
from storage.root import REJECTS_DIR, REPORTS_DIR, STAGES_DIR, DatasetRoot

RootLike = str | Path | DatasetRoot
INGEST_STAGE = "ingest"


def open_root(root: RootLike) -> DatasetRoot:
    """The dataset root at `root`; an empty one (an unset deployment variable) is a `ConfigError`."""
    if isinstance(root, DatasetRoot):
        return root
    if not str(root).strip():
        from engine.errors import ConfigError

        raise ConfigError("the dataset root is empty (for a deployment: set VIDEOREFER_ROOT before `prefect deploy`)")
    return DatasetRoot(root)


def ensure_dataset(root: DatasetRoot, config: EngineConfig, *, name: str | None = None) -> None:
    """Write dataset.json with the config snapshot when it is missing or the config changed."""
    snapshot = config.model_dump(mode="json")
    if root.exists("dataset.json"):
        current = root.read_dataset_json()
        if current.get("config") == snapshot:
            return
        name = name or current.get("name")
    root.write_dataset_json(name=name or Path(root.url.rstrip("/")).name or "videorefer", config=snapshot)


def config_snapshot(root: DatasetRoot) -> dict[str, Any] | None:
    """The engine config recorded in dataset.json, if any."""
    if not root.exists("dataset.json"):
        return None
    return root.read_dataset_json().get("config")


# ---------------------------------------------------------------- sources and shards


def shards(root: DatasetRoot) -> list[str]:
    return storage_shards.list_shards(root)


def shard_members(root: DatasetRoot, shard_id: str) -> list[str]:
    return storage_shards.read_shard(root, shard_id)


def pin(root: DatasetRoot, clip_ids: Sequence[str], shard_size: int) -> list[str]:
    """Pin new clip ids into new shards; return every shard id (old and new)."""
    storage_shards.pin_shards(root, clip_ids, shard_size)
    return storage_shards.list_shards(root)


def has_sources(root: DatasetRoot, shard_id: str) -> bool:
    return root.exists(root.source_path(shard_id))


def write_sources(root: DatasetRoot, shard_id: str, clips: Sequence[Clip]) -> None:
    tables.write_clips(root, shard_id, clips)


def shard_clips(root: DatasetRoot, shard_id: str) -> list[Clip]:
    """The clips of one shard in their pinned order."""
    by_id = {clip.clip_id: clip for clip in tables.read_clips(root, shard_id)}
    return [by_id[cid] for cid in shard_members(root, shard_id) if cid in by_id]


def ingested_clip_ids(root: DatasetRoot) -> set[str]:
    return {clip.clip_id for clip in tables.read_clips(root)}


def ingest_rejected_ids(root: DatasetRoot) -> set[str]:
    found: set[str] = set()
    for name in root.listdir(f"{REJECTS_DIR}/{INGEST_STAGE}"):
        if name.endswith(".parquet"):
            found.update(r.clip_id for r in tables.read_rejects(root, INGEST_STAGE, name.removesuffix(".parquet")))
    return found


def write_ingest_rejects(root: DatasetRoot, rejects: Sequence[Reject]) -> None:
    batch = "batch-" + stable_hash(sorted(r.clip_id for r in rejects))
    tables.write_rejects(root, INGEST_STAGE, batch, rejects)


def ingest_reject_batches(root: DatasetRoot) -> set[str]:
    """The ingest reject batches of a root (one per ingest call that rejected rows)."""
    return {name.removesuffix(".parquet") for name in root.listdir(f"{REJECTS_DIR}/{INGEST_STAGE}")
            if name.endswith(".parquet")}


def ingest_rejects(root: DatasetRoot, batches: Iterable[str] | None = None) -> list[Reject]:
    """The rows ingest rejected: every batch, or only `batches`."""
    chosen = ingest_reject_batches(root) if batches is None else set(batches)
    out: list[Reject] = []
    for batch in sorted(chosen):
        out.extend(tables.read_rejects(root, INGEST_STAGE, batch))
    return out


# ---------------------------------------------------------------- stage tables


def read_stage(root: DatasetRoot, stage: str, shard_id: str) -> list[ObjectRecord] | list[ClipQA]:
    return tables.read_records(root, stage, shard_id)


def write_stage(
    root: DatasetRoot,
    stage: str,
    shard_id: str,
    records: Sequence[ObjectRecord] | Sequence[ClipQA],
    rejects: Sequence[Reject],
    config_hash: str,
) -> None:
    """Rejects, then records, then the done marker (written by storage last)."""
    tables.write_stage(root, stage, shard_id, records, rejects, config_hash)


def read_stage_rejects(root: DatasetRoot, stage: str, shard_id: str) -> list[Reject]:
    return tables.read_rejects(root, stage, shard_id)


def partial_path(stage: str, shard_id: str) -> str:
    """The marker of a partial stage output (kept records after transient failures; no done marker)."""
    return f"{STAGES_DIR}/{stage}/{shard_id}.partial.json"


def stage_report_path(stage: str, shard_id: str) -> str:
    return f"{REPORTS_DIR}/stages/{stage}/{shard_id}.json"


def run_reports_dir() -> str:
    return REPORTS_DIR


def resolve_config(root: RootLike, config_path: str | Path | None = None) -> EngineConfig:
    """The config of a run: the given file, else the snapshot in the root's dataset.json, else `offline`."""
    from engine.config import load_config, parse_config

    if config_path:
        return load_config(config_path)
    snapshot = config_snapshot(open_root(root))
    if snapshot:
        return parse_config(snapshot, source="dataset.json")
    return load_config(None)
