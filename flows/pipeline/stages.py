"""The stage graph of the data engine: which stages exist, what each one reads, and the chained stage hashes.

A stage's hash is the hash of the config settings it depends on (`EngineConfig.stage_hash`) combined with the
hashes of the stages it reads from, so a config change invalidates that stage and every stage after it, and
nothing before it (a new refiner prompt re-runs refine and export, never SAM 2).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from engine.config import EngineConfig
from engine.errors import ConfigError

INGEST = "ingest"
ANALYZE = "analyze"
ANNOTATE = "annotate"
SEGMENT = "segment"
REVIEW = "review"
REFINE = "refine"
SHORT_CAPTIONS = "short_captions"
GENERATE_QA = "generate_qa"
EXPORT = "export"

# What each stage reads; `ingest` reads the manifest and is not a per-shard stage.
STAGE_PARENTS: dict[str, tuple[str, ...]] = {
    INGEST: (),
    ANALYZE: (INGEST,),
    ANNOTATE: (ANALYZE,),
    SEGMENT: (ANNOTATE,),
    REVIEW: (SEGMENT,),
    REFINE: (REVIEW,),
    SHORT_CAPTIONS: (INGEST,),
    GENERATE_QA: (INGEST,),
    EXPORT: (REFINE, SHORT_CAPTIONS, GENERATE_QA),
}

# The per-shard stages in an order that respects STAGE_PARENTS (one Prefect task each per shard).
SHARD_STAGES: tuple[str, ...] = (ANALYZE, ANNOTATE, SEGMENT, REVIEW, REFINE, SHORT_CAPTIONS, GENERATE_QA, EXPORT)

# Stages that need an accelerator when their backends run locally on a GPU (Ray asks for a GPU for them).
GPU_STAGES: frozenset[str] = frozenset({SEGMENT, SHORT_CAPTIONS})


def check_stage(stage: str) -> str:
    """Return `stage` when it names a per-shard stage; a `ConfigError` otherwise."""
    if stage not in SHARD_STAGES:
        raise ConfigError(f"unknown stage {stage!r}; expected one of {', '.join(SHARD_STAGES)}")
    return stage


def chained_hash(config: EngineConfig, stage: str) -> str:
    """The stage's own config hash combined with the chained hashes of every stage it reads from."""
    if stage == INGEST:
        # Shard membership is pinned once and never recomputed, so ingest settings (shard_size) change which
        # clips future shards get, not the output of shards that exist: they do not invalidate any stage.
        return "ingest"
    parents = "".join(f"{parent}={chained_hash(config, parent)};" for parent in STAGE_PARENTS[stage])
    own = config.stage_hash(stage)
    return hashlib.sha256(f"{stage}:{own};{parents}".encode()).hexdigest()[:12]


def downstream(stages: Iterable[str]) -> list[str]:
    """The given per-shard stages and every stage that reads from them, in pipeline order."""
    picked = set(stages)
    changed = True
    while changed:
        changed = False
        for stage, parents in STAGE_PARENTS.items():
            if stage not in picked and picked.intersection(parents):
                picked.add(stage)
                changed = True
    return [stage for stage in SHARD_STAGES if stage in picked]
