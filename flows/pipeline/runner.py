"""`run_stage`: one stage over one pinned shard, resumable and idempotent.

The stage reads its input table for the shard (the shard's clips for analyze / short_captions / generate_qa,
the previous stage's records otherwise), streams the items through its agent in chunks of whole clips (so
memory is bounded by the chunk, and a clip's nouns share one frame read), and writes rejects, then records,
then the done marker carrying the stage's chained config hash, last. A stage already done for the same hash
is skipped and reports the figures it stored when it ran.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Sequence
from typing import Any

from engine.config import EngineConfig
from engine.errors import ConfigError
from engine.types import Clip, ObjectRecord, Reject
from flows.pipeline import layout
from flows.pipeline.reports import StageReport, count_reasons
from flows.pipeline.stages import (
    ANALYZE,
    ANNOTATE,
    EXPORT,
    GENERATE_QA,
    REFINE,
    REVIEW,
    SEGMENT,
    SHORT_CAPTIONS,
    STAGE_PARENTS,
    chained_hash,
    check_stage,
)


def run_stage(
    root: layout.RootLike, stage: str, shard_id: str, config: EngineConfig, *, force: bool = False
) -> StageReport:
    """Run `stage` on `shard_id` unless it is already done for this config; return its figures."""
    check_stage(stage)
    droot = layout.open_root(root)
    config_hash = chained_hash(config, stage)
    if not force:
        stored = stored_report(droot, stage, shard_id, config_hash)
        if stored is not None:
            return stored
    if stage == EXPORT:
        from flows.pipeline.export import export_shard

        return export_shard(droot, shard_id, config)

    check_parents_done(droot, stage, shard_id, config)
    started = time.perf_counter()
    items = stage_inputs(droot, stage, shard_id)
    records, rejects = asyncio.run(_run_agent(stage, items, config))
    report = StageReport(
        stage=stage,
        shard_id=shard_id,
        config_hash=config_hash,
        items_in=len(items),
        items_out=len(records),
        rejects=count_reasons(rejects),
        seconds=time.perf_counter() - started,
    )
    droot.write_json(layout.stage_report_path(stage, shard_id), report.to_json())
    layout.write_stage(droot, stage, shard_id, records, rejects, config_hash)
    return report


class StageNotReadyError(ConfigError):
    """A stage was asked to run on a shard whose input stage is not done for the current config."""


def check_parents_done(root: layout.RootLike, stage: str, shard_id: str, config: EngineConfig) -> None:
    """Fail fast when a stage's inputs are missing or were made with another config (they would be stale)."""
    droot = layout.open_root(root)
    for parent in STAGE_PARENTS[stage]:
        if parent == "ingest":
            if not layout.has_sources(droot, shard_id):
                raise StageNotReadyError(f"shard {shard_id} has no ingested clips (run ingest first)")
        elif not droot.stage_done(parent, shard_id, chained_hash(config, parent)):
            raise StageNotReadyError(
                f"stage {stage!r} on {shard_id} needs {parent!r} done with the current config; run {parent} first"
            )


def stored_report(root: layout.RootLike, stage: str, shard_id: str, config_hash: str) -> StageReport | None:
    """The stored figures of a stage done with `config_hash` (marked skipped), or None when it must run."""
    droot = layout.open_root(root)
    if stage == EXPORT:
        from flows.pipeline.export import export_done

        done = export_done(droot, shard_id, config_hash)
    else:
        done = droot.stage_done(stage, shard_id, config_hash)
    if not done:
        return None
    path = layout.stage_report_path(stage, shard_id)
    if droot.exists(path):
        stored = StageReport.from_json(droot.read_json(path))
        return StageReport(**{**_fields(stored), "skipped": True, "seconds": 0.0})
    return StageReport(stage=stage, shard_id=shard_id, config_hash=config_hash, items_in=0, items_out=0, skipped=True)


def _fields(report: StageReport) -> dict[str, Any]:
    return {name: getattr(report, name) for name in StageReport.__dataclass_fields__}


def stage_inputs(root: layout.RootLike, stage: str, shard_id: str) -> list[Any]:
    """What `stage` consumes on `shard_id`: clips for the first stages of each path, else the parent's records."""
    droot = layout.open_root(root)
    parent = STAGE_PARENTS[stage][0]  # export, the one stage with several inputs, reads them itself
    if parent == "ingest":
        clips = layout.shard_clips(droot, shard_id)
        if stage == GENERATE_QA:
            return [clip for clip in clips if clip.given_objects]
        return [clip for clip in clips if not clip.given_objects]
    return list(layout.read_stage(droot, parent, shard_id))


def chunks_of_whole_clips(items: Sequence[Any], size: int) -> Iterator[list[Any]]:
    """Consecutive chunks of about `size` items that never split one clip's items across two chunks."""
    chunk: list[Any] = []
    for item in items:
        if len(chunk) >= size and _clip_of(item) != _clip_of(chunk[-1]):
            yield chunk
            chunk = []
        chunk.append(item)
    if chunk:
        yield chunk


def _clip_of(item: Clip | ObjectRecord) -> str:
    return item.clip_id


async def _run_agent(stage: str, items: Sequence[Any], config: EngineConfig) -> tuple[list[Any], list[Reject]]:
    records: list[Any] = []
    rejects: list[Reject] = []
    if not items:
        return records, rejects
    agent, backends = _build_agent(stage, config)
    try:
        for chunk in chunks_of_whole_clips(items, max(1, config.concurrency)):
            result = await agent.run(chunk)
            records.extend(result.records)
            rejects.extend(result.rejects)
    finally:
        for backend in backends:
            await backend.aclose()
    return records, rejects


def _build_agent(stage: str, config: EngineConfig) -> tuple[Any, list[Any]]:
    """The agent of `stage` and the chat backends it owns (closed after the stage)."""
    from agents.backends.factory import build_chat_backend, build_grounder, build_segmenter

    agents_cfg = config.agents
    num_frames = config.sampling.num_frames

    def segmentor() -> Any:
        from agents.segmentor import Segmentor

        return Segmentor(
            build_grounder(agents_cfg.grounder),
            build_segmenter(agents_cfg.segmenter),
            key_frame=config.key_frame,
            seed=config.seed,
            min_mask_area_px=config.min_mask_area_px,
            min_mask_frames=config.min_mask_frames,
            num_frames=num_frames,
        )

    if stage == ANALYZE:
        from agents.analyzer import Analyzer

        backend = build_chat_backend(agents_cfg.analyzer)
        return Analyzer(backend), [backend]
    if stage == ANNOTATE:
        from agents.annotator import Annotator

        backend = build_chat_backend(agents_cfg.annotator)
        return Annotator(backend, num_frames=num_frames), [backend]
    if stage == SEGMENT:
        return segmentor(), []
    if stage == REVIEW:
        from agents.reviewer import Reviewer

        captioner = build_chat_backend(agents_cfg.region_captioner)
        judge = build_chat_backend(agents_cfg.judge)
        return Reviewer(captioner, judge), [captioner, judge]  # one outlined key frame, as in the paper
    if stage == REFINE:
        from agents.refiner import Refiner

        backend = build_chat_backend(agents_cfg.refiner)
        return Refiner(backend), [backend]
    if stage == SHORT_CAPTIONS:
        from agents.short_captions import ShortCaptioner

        backend = build_chat_backend(agents_cfg.analyzer)
        return ShortCaptioner(backend, segmentor()), [backend]
    if stage == GENERATE_QA:
        from agents.qa import QAGenerator

        annotator = build_chat_backend(agents_cfg.annotator)
        llm = build_chat_backend(agents_cfg.refiner)
        return QAGenerator(annotator, llm, num_frames=num_frames), [annotator, llm]
    raise AssertionError(f"no agent for stage {stage}")
