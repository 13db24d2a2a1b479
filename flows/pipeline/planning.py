"""Which (stage, shard) pairs of a run have work left, decided before any task is submitted.

A pair already done for the current config (its done marker carries the stage's chained hash and its outputs are
in place) is not submitted at all: its stored figures are reported as skipped, exactly what its task would have
returned (`runner.stored_report`). So a build, stage or export with nothing left to do costs no Prefect task run
and writes nothing; only the pairs that must run become tasks. `force` plans every pair. A run whose every
report is skipped (and that failed nowhere) is *idle*: it leaves no run report and redraws no data report.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from engine.config import EngineConfig
from flows.pipeline import layout
from flows.pipeline.reports import StageReport
from flows.pipeline.runner import stored_report
from flows.pipeline.stages import INGEST, SHARD_STAGES, chained_hash


@dataclass(frozen=True, slots=True)
class StagePlan:
    """The pairs to run (stage-major, in pipeline order) and the stored reports of the pairs already done."""

    todo: tuple[tuple[str, str], ...]
    done: tuple[StageReport, ...]


def plan_stages(
    root: layout.RootLike, config: EngineConfig, shard_ids: Sequence[str], stages: Sequence[str], *,
    force: bool = False,
) -> StagePlan:
    """Split the run's (stage, shard) pairs into those with work left and those done for this config."""
    droot = layout.open_root(root)
    wanted = [stage for stage in SHARD_STAGES if stage in set(stages)]
    todo: list[tuple[str, str]] = []
    done: list[StageReport] = []
    for stage in wanted:
        config_hash = chained_hash(config, stage)
        for shard in shard_ids:
            stored = None if force else stored_report(droot, stage, shard, config_hash)
            if stored is None:
                todo.append((stage, shard))
            else:
                done.append(stored)
    return StagePlan(todo=tuple(todo), done=tuple(done))


def in_stage_order(reports: Sequence[StageReport]) -> list[StageReport]:
    """Reports ordered as a run lists them: ingest, then the stages in pipeline order, shards in order."""
    rank = {INGEST: -1, **{stage: number for number, stage in enumerate(SHARD_STAGES)}}
    return sorted(reports, key=lambda r: (rank.get(r.stage, len(rank)), r.shard_id))


def is_idle(reports: Sequence[StageReport], failures: Sequence[object] = ()) -> bool:
    """True when a run did nothing: it has reports, every one skipped (done before), and no failure."""
    return bool(reports) and not failures and all(report.skipped for report in reports)
