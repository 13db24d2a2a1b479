"""`run_stage`: one stage (from the registry, `flows.pipeline.stages`) over one pinned shard, resumable.

The stage reads its inputs for the shard (the shard's clips, or its parent's records), builds its agent from the
warm backend pool (`flows.pipeline.backends`: models load once per worker process), and streams the items
through the agent clip by clip in a bounded in-flight window (`config.concurrency` items, or the stage's
`clips_in_flight`): a new clip starts as soon as one finishes, so one slow reply never idles the other slots. A
`FrameCache` wraps the task, so each clip is decoded once however many agents and objects read it. Output is
written in the safe order: rejects, records, then the done marker carrying the stage's chained hash, last.

Failures by kind: an item-level error is a final reject with its reason, also when it escapes the agent (a
`ValueError` on a garbage mask): the clip's items are then retried one by one so only the bad ones are rejected
(`item_error` when the error is untyped) and the good ones beside them come through; a transient backend failure that
outlived the backend's own retries (`backend_transient`) is NOT final: the records and final rejects so far are
kept as a partial result (no done marker), and the task raises `TransientBackendError`, so Prefect retries it and
a re-run only redoes the items that failed transiently. A backend that stays down (`BackendUnavailableError`)
stops the stream: the clips in flight finish, what is done is kept the same way, and the error fails the run;
re-running resumes with the items that were not done. A stage already done for the same hash is skipped and
reports the figures it stored when it ran.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from agents.frames import frame_cache
from agents.stage import RUN_FATAL_ERRORS, StageResult, reject_for
from engine.config import EngineConfig
from engine.errors import BackendUnavailableError, ConfigError, RejectReason, TransientBackendError
from engine.parsing import text_limit
from engine.types import Clip, ClipQA, ObjectRecord, Reject
from flows.pipeline import layout
from flows.pipeline.backends import BackendPool, TaskBackends, worker_pool
from flows.pipeline.reports import StageReport, count_reasons
from flows.pipeline.stages import INGEST, Stage, chained_hash, get_stage


def run_stage(
    root: layout.RootLike,
    stage: str,
    shard_id: str,
    config: EngineConfig,
    *,
    force: bool = False,
    pool: BackendPool | None = None,
) -> StageReport:
    """Run `stage` on `shard_id` unless it is already done for this config; return its figures."""
    definition = get_stage(stage)
    droot = layout.open_root(root)
    config_hash = chained_hash(config, stage)
    if not force:
        stored = stored_report(droot, stage, shard_id, config_hash)
        if stored is not None:
            return stored
    check_parents_done(droot, definition, shard_id, config)
    if definition.run is not None:
        inputs = {parent: _read_parent(droot, parent, shard_id) for parent in definition.parents}
        with text_limit(config.limits.max_text_chars):
            return definition.run(droot, shard_id, config, config_hash=config_hash, inputs=inputs)

    started = time.perf_counter()
    items = stage_inputs(droot, definition, shard_id)
    previous = PartialOutput() if force else read_partial(droot, definition, shard_id, config_hash)
    todo = [item for item in items if input_id(definition, item) not in previous.finished]
    from flows.pipeline.sources import source_changed_rejects  # a clip whose video changed since ingest: rejected

    todo, changed = source_changed_rejects(droot, shard_id, stage, todo, lambda item: input_id(definition, item))
    with frame_cache() as cache, text_limit(config.limits.max_text_chars):
        records, rejects, stopped = asyncio.run(_run_agent(definition, todo, config, pool or worker_pool()))
    rejects = [*changed, *rejects]
    transient = [reject for reject in rejects if reject.reason == RejectReason.BACKEND_TRANSIENT]
    records = [*previous.records, *records]
    final_rejects = [*previous.rejects, *(r for r in rejects if r.reason != RejectReason.BACKEND_TRANSIENT)]
    if stopped is not None or transient:
        write_partial(droot, stage, shard_id, records, final_rejects, config_hash)
    if stopped is not None:  # the backend is gone: the run fails, the items finished so far are kept
        raise stopped
    if transient:
        raise TransientBackendError(
            f"{len(transient)} of {len(items)} items of {stage}/{shard_id} failed with transient backend errors "
            f"after the backend's retries (first: {transient[0].message}); their results are kept and a retry "
            "redoes only those items"
        )
    report = StageReport(
        stage=stage,
        shard_id=shard_id,
        config_hash=config_hash,
        items_in=len(items),
        items_out=len(records),
        rejects=count_reasons(final_rejects),
        seconds=time.perf_counter() - started,
        decodes=sum(cache.decodes.values()),
        clips=len({item.clip_id for item in todo}),
    )
    droot.write_json(layout.stage_report_path(stage, shard_id), report.to_json())
    layout.write_stage(droot, stage, shard_id, records, final_rejects, config_hash)
    droot.delete(layout.partial_path(stage, shard_id))
    return report


class StageNotReadyError(ConfigError):
    """A stage was asked to run on a shard whose input stage is not done for the current config."""


def check_parents_done(root: layout.RootLike, stage: Stage, shard_id: str, config: EngineConfig) -> None:
    """Fail fast when a stage's inputs are missing or were made with another config (they would be stale)."""
    droot = layout.open_root(root)
    for parent in stage.parents:
        if parent == INGEST:
            if not layout.has_sources(droot, shard_id):
                raise StageNotReadyError(f"shard {shard_id} has no ingested clips (run ingest first)")
        elif not stage_is_done(droot, parent, shard_id, chained_hash(config, parent)):
            raise StageNotReadyError(
                f"stage {stage.name!r} on {shard_id} needs {parent!r} done with the current config; run {parent} first"
            )


def stage_is_done(root: layout.RootLike, stage: str, shard_id: str, config_hash: str) -> bool:
    """The stage's done marker is there with this hash (and, for table stages, its table)."""
    droot = layout.open_root(root)
    if get_stage(stage).run is not None:  # export: the marker lists its files, each must be in place
        marker = droot.read_done(stage, shard_id)
        if marker is None or marker.get("config_hash") != config_hash:
            return False
        return all(droot.exists(path) for path in marker.get("files", []))
    return droot.stage_done(stage, shard_id, config_hash)


def stored_report(root: layout.RootLike, stage: str, shard_id: str, config_hash: str) -> StageReport | None:
    """The stored figures of a stage done with `config_hash` (marked skipped), or None when it must run."""
    droot = layout.open_root(root)
    if not stage_is_done(droot, stage, shard_id, config_hash):
        return None
    path = layout.stage_report_path(stage, shard_id)
    if droot.exists(path):
        stored = StageReport.from_json(droot.read_json(path))
        return StageReport(**{**_fields(stored), "skipped": True, "seconds": 0.0})
    return StageReport(stage=stage, shard_id=shard_id, config_hash=config_hash, items_in=0, items_out=0, skipped=True)


def _fields(report: StageReport) -> dict[str, Any]:
    return {name: getattr(report, name) for name in StageReport.__dataclass_fields__}


def _read_parent(root: layout.RootLike, parent: str, shard_id: str) -> list[Any]:
    droot = layout.open_root(root)
    if not droot.exists(droot.stage_path(parent, shard_id)):
        return []
    return list(layout.read_stage(droot, parent, shard_id))


def stage_inputs(root: layout.RootLike, stage: Stage, shard_id: str) -> list[Any]:
    """What `stage` consumes on `shard_id`: the shard's clips (with or without objects), or its parent's records."""
    droot = layout.open_root(root)
    if stage.inputs == "records":
        return list(layout.read_stage(droot, stage.parents[0], shard_id))
    clips = layout.shard_clips(droot, shard_id)
    with_objects = stage.inputs == "clips_with_objects"
    return [clip for clip in clips if bool(clip.given_objects) == with_objects]


def input_id(stage: Stage, item: Clip | ObjectRecord) -> str:
    """The id by which an input item is tracked: its clip for clip stages, its object for record stages."""
    return item.object_id if stage.inputs == "records" else item.clip_id  # type: ignore[union-attr]


def output_input_id(stage: Stage, output: ObjectRecord | ClipQA | Reject) -> str:
    """The input id an output record or reject belongs to."""
    if isinstance(output, Reject):
        return output.item_id if stage.inputs == "records" else output.clip_id
    if stage.inputs == "records":
        return output.object_id  # type: ignore[union-attr]
    return output.clip_id if isinstance(output, ObjectRecord) else output.clip.clip_id


# ---------------------------------------------------------------- partial results (transient failures)


@dataclass(frozen=True, slots=True)
class PartialOutput:
    """What an interrupted-by-transient-errors run of this stage kept: records, final rejects, finished inputs."""

    records: tuple[Any, ...] = ()
    rejects: tuple[Reject, ...] = ()
    finished: frozenset[str] = frozenset()


def write_partial(root: layout.RootLike, stage: str, shard_id: str, records: Sequence[Any],
                  rejects: Sequence[Reject], config_hash: str) -> None:
    """Rejects, records (no done marker), then the partial marker naming the hash, last."""
    droot = layout.open_root(root)
    layout.tables.write_rejects(droot, stage, shard_id, rejects)
    layout.tables.write_records(droot, stage, shard_id, records, config_hash, mark_done=False)
    droot.write_json(layout.partial_path(stage, shard_id), {"config_hash": config_hash, "records": len(records),
                                                            "rejects": len(rejects)})


def read_partial(root: layout.RootLike, stage: Stage, shard_id: str, config_hash: str) -> PartialOutput:
    """The partial result of an earlier run of this stage with the same hash, or nothing."""
    droot = layout.open_root(root)
    path = layout.partial_path(stage.name, shard_id)
    if not droot.exists(path) or droot.read_json(path).get("config_hash") != config_hash:
        return PartialOutput()
    records = tuple(layout.read_stage(droot, stage.name, shard_id))
    rejects = tuple(layout.read_stage_rejects(droot, stage.name, shard_id))
    finished = frozenset(output_input_id(stage, output) for output in (*records, *rejects))
    return PartialOutput(records=records, rejects=rejects, finished=finished)


# ---------------------------------------------------------------- streaming items through the agent


def clip_groups(items: Sequence[Any]) -> Iterator[list[Any]]:
    """Consecutive items of one clip together (a clip's nouns share one frame read)."""
    group: list[Any] = []
    for item in items:
        if group and item.clip_id != group[-1].clip_id:
            yield group
            group = []
        group.append(item)
    if group:
        yield group


async def _run_agent(
    stage: Stage, items: Sequence[Any], config: EngineConfig, pool: BackendPool
) -> tuple[list[Any], list[Reject], BackendUnavailableError | None]:
    """Records and rejects of the items, and the `BackendUnavailableError` that stopped the stream, if one did
    (no new clip starts after it; the clips already in flight finish, so their results are kept)."""
    if not items:
        return [], [], None
    backends = TaskBackends(pool)
    stopped: list[BackendUnavailableError] = []

    async def run(group: Sequence[Any]) -> Any:
        try:
            return await agent.run(group)
        except BackendUnavailableError as exc:
            stopped.append(exc)
            return None
        except RUN_FATAL_ERRORS:
            raise
        except Exception as exc:  # noqa: BLE001 - the safety net: one bad item must not lose the shard
            return await isolate(group, exc)

    async def isolate(group: Sequence[Any], error: Exception) -> StageResult[Any]:
        """An error escaped the agent for a clip's items: each item alone, so only the bad ones are rejected."""
        if len(group) == 1:
            return StageResult(records=(), rejects=(item_reject(stage, group[0], error),))
        results = []
        for item in group:
            try:
                results.append(await agent.run([item]))
            except BackendUnavailableError as exc:
                stopped.append(exc)
                break
            except RUN_FATAL_ERRORS:
                raise
            except Exception as exc:  # noqa: BLE001 - this item's own failure
                results.append(StageResult(records=(), rejects=(item_reject(stage, item, exc),)))
        return StageResult.merge(*results)

    try:
        agent = stage.build(stage.settings(config), backends)
        limit = max(1, config.concurrency)
        results = await stream_groups(run, list(clip_groups(items)), max_items=limit,
                                      max_groups=stage.clips_in_flight or limit, stop=lambda: bool(stopped))
    finally:
        await backends.aclose()
    done = [result for result in results if result is not None]
    records = [record for result in done for record in result.records]
    rejects = [reject for result in done for reject in result.rejects]
    return records, rejects, (stopped[0] if stopped else None)


def item_reject(stage: Stage, item: Any, error: BaseException) -> Reject:
    """The reject of one input item whose processing raised `error` outside the agent's own handling (its
    reason from the taxonomy; an untyped data error is `item_error`); run-fatal errors re-raise."""
    return reject_for(error, stage=stage.name, item_id=input_id(stage, item), clip_id=item.clip_id)


async def stream_groups(
    run: Any, groups: Sequence[Sequence[Any]], *, max_items: int, max_groups: int, stop: Any = None
) -> list[Any]:
    """`run(group)` for every group, at most `max_items` items (and `max_groups` groups) in flight; a group
    starts as soon as there is room (a group larger than the window runs alone). Results in group order; once
    `stop()` is true no new group starts (their results stay None)."""
    results: list[Any] = [None] * len(groups)
    state = {"items": 0, "groups": 0}
    room = asyncio.Condition()

    async def one(position: int, group: Sequence[Any]) -> None:
        try:
            results[position] = await run(group)
        finally:
            async with room:
                state["items"] -= len(group)
                state["groups"] -= 1
                room.notify_all()

    def fits(size: int) -> bool:
        if state["groups"] == 0:
            return True
        return state["groups"] < max_groups and state["items"] + size <= max_items

    try:
        async with asyncio.TaskGroup() as tasks:
            for position, group in enumerate(groups):
                async with room:
                    await room.wait_for(lambda size=len(group): fits(size))
                    if stop is not None and stop():
                        break
                    state["items"] += len(group)
                    state["groups"] += 1
                tasks.create_task(one(position, group))
    except BaseExceptionGroup as failures:
        raise _first_leaf(failures) from None
    return results


def _first_leaf(group: BaseExceptionGroup) -> BaseException:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first
