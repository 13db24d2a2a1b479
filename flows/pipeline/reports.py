"""The figures of the data engine: one `StageReport` per (stage, shard) and the `RunReport` of a whole run.

A stage report is stored beside the stage's output (`reports/stages/<stage>/<shard_id>.json`) before the
stage's done marker, so a skipped stage still contributes its counts to the figures of a later run. A run
report (items in/out, rejects per reason and seconds per stage) is written as JSON under `<root>/reports/`
and checked against `max_reject_fraction` at the end of a run. Each stage report also says where its task ran
(`node`: the Ray node's address or the host name; `pid`: the worker process), and the run report lists that per
task, so a cluster run shows which stage ran on which node.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from engine.errors import VideoReferError


class RejectFractionExceededError(VideoReferError):
    """A stage rejected more than `max_reject_fraction` of its items: the run fails after finishing its work."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StageReport:
    """What one stage did on one shard (or what ingest did on one manifest, with `shard_id` "manifest")."""

    stage: str
    shard_id: str
    config_hash: str
    items_in: int
    items_out: int
    rejects: Mapping[str, int] = field(default_factory=dict)  # reason code -> count
    seconds: float = 0.0
    skipped: bool = False
    decodes: int = 0  # frame decode calls of the task (its frame cache's misses)
    clips: int = 0  # distinct clips the task ran (decodes / clips: how often a clip was decoded)
    node: str = ""  # where the task ran: the Ray node's address, else the host name ("" when not recorded)
    pid: int = 0  # the process that ran it

    @property
    def rejected(self) -> int:
        return sum(self.rejects.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "shard_id": self.shard_id,
            "config_hash": self.config_hash,
            "items_in": self.items_in,
            "items_out": self.items_out,
            "rejects": dict(sorted(self.rejects.items())),
            "seconds": round(self.seconds, 4),
            "skipped": self.skipped,
            "decodes": self.decodes,
            "clips": self.clips,
            "node": self.node,
            "pid": self.pid,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> StageReport:
        return cls(
            stage=data["stage"],
            shard_id=data["shard_id"],
            config_hash=data["config_hash"],
            items_in=int(data["items_in"]),
            items_out=int(data["items_out"]),
            rejects={str(k): int(v) for k, v in data.get("rejects", {}).items()},
            seconds=float(data.get("seconds", 0.0)),
            skipped=bool(data.get("skipped", False)),
            decodes=int(data.get("decodes", 0)),
            clips=int(data.get("clips", 0)),
            node=str(data.get("node", "")),
            pid=int(data.get("pid", 0)),
        )


def count_reasons(rejects: Iterable[Any]) -> dict[str, int]:
    """Reject records -> {reason code: count}."""
    return dict(Counter(str(reject.reason) for reject in rejects))


@dataclass(frozen=True, slots=True, kw_only=True)
class StageFigures:
    """One stage summed over the shards of a run."""

    stage: str
    shards: int
    shards_skipped: int
    items_in: int
    items_out: int
    rejects: Mapping[str, int]
    seconds: float

    @property
    def reject_fraction(self) -> float:
        return sum(self.rejects.values()) / self.items_in if self.items_in else 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class RunReport:
    """The figures of one run: per stage, summed over shards, in pipeline order."""

    run_id: str
    stages: tuple[StageFigures, ...]
    wall_seconds: float
    created: str
    tasks: tuple[StageReport, ...] = ()  # every (stage, shard) task of the run, with where it ran

    @classmethod
    def from_stage_reports(cls, reports: Sequence[StageReport], *, run_id: str, wall_seconds: float) -> RunReport:
        order: list[str] = []
        grouped: dict[str, list[StageReport]] = {}
        for report in reports:
            if report.stage not in grouped:
                order.append(report.stage)
                grouped[report.stage] = []
            grouped[report.stage].append(report)
        figures = []
        for stage in order:
            group = grouped[stage]
            reasons: Counter[str] = Counter()
            for report in group:
                reasons.update(report.rejects)
            figures.append(
                StageFigures(
                    stage=stage,
                    shards=len(group),
                    shards_skipped=sum(r.skipped for r in group),
                    items_in=sum(r.items_in for r in group),
                    items_out=sum(r.items_out for r in group),
                    rejects=dict(sorted(reasons.items())),
                    seconds=sum(r.seconds for r in group if not r.skipped),
                )
            )
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        return cls(run_id=run_id, stages=tuple(figures), wall_seconds=wall_seconds, created=created,
                   tasks=tuple(reports))

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "created": self.created,
            "wall_seconds": round(self.wall_seconds, 3),
            "stages": [
                {
                    "stage": f.stage,
                    "shards": f.shards,
                    "shards_skipped": f.shards_skipped,
                    "items_in": f.items_in,
                    "items_out": f.items_out,
                    "rejected": sum(f.rejects.values()),
                    "reject_fraction": round(f.reject_fraction, 4),
                    "rejects": dict(f.rejects),
                    "seconds": round(f.seconds, 3),
                }
                for f in self.stages
            ],
            "tasks": [
                {"stage": r.stage, "shard_id": r.shard_id, "node": r.node, "pid": r.pid, "skipped": r.skipped,
                 "seconds": round(r.seconds, 3)}
                for r in self.tasks
            ],
        }

    def over_limit(self, max_reject_fraction: float) -> list[StageFigures]:
        """Stages whose rejected fraction is above the bound."""
        return [f for f in self.stages if f.items_in and f.reject_fraction > max_reject_fraction]

    def reject_fraction_error(self, max_reject_fraction: float) -> RejectFractionExceededError | None:
        """The `RejectFractionExceededError` naming every stage above the bound, or None."""
        over = self.over_limit(max_reject_fraction)
        if not over:
            return None
        lines = ", ".join(
            f"{f.stage}: {sum(f.rejects.values())}/{f.items_in} rejected ({f.reject_fraction:.0%}; "
            f"{', '.join(f'{k}={v}' for k, v in f.rejects.items())})"
            for f in over
        )
        return RejectFractionExceededError(f"reject fraction above max_reject_fraction={max_reject_fraction}: {lines}")

    def check_reject_fraction(self, max_reject_fraction: float) -> None:
        """Raise `RejectFractionExceededError` naming every stage above the bound."""
        error = self.reject_fraction_error(max_reject_fraction)
        if error is not None:
            raise error

    def to_markdown(self) -> str:
        """A table for the Prefect artifact and the CLI."""
        rows = [
            "| stage | shards (skipped) | in | out | rejected | reasons | seconds |",
            "|---|---|---|---|---|---|---|",
        ]
        for f in self.stages:
            reasons = ", ".join(f"{k} {v}" for k, v in f.rejects.items()) or "-"
            rows.append(
                f"| {f.stage} | {f.shards} ({f.shards_skipped}) | {f.items_in} | {f.items_out} | "
                f"{sum(f.rejects.values())} | {reasons} | {f.seconds:.2f} |"
            )
        return "\n".join(rows)
