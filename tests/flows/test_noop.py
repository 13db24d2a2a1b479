"""Nothing to do costs nothing: a build, stage or export with no work left submits no task and writes nothing.

After a build, the same build again (manifest included), the export flow and a stage flow leave every file of
the root as it was (bytes and modification times: no re-merge of train.json, no `_stats.json` or report
redraw, no run report) and submit no stage task; their figures still say every shard was skipped. Work left on
one shard is planned, and runs, only there.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from flows import engine_flows
from flows.pipeline import layout
from flows.pipeline.planning import plan_stages
from flows.pipeline.stages import EXPORT, REFINE, SHARD_STAGES
from flows.runtime import run_flow
from tests.flows.conftest import tiny_config, write_config


def _snapshot(root: Path) -> dict[str, tuple[int, str]]:
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(root.rglob("*")) if p.is_file()}


class _NoSubmissions:
    """Stands in for the stage task: any submission fails the test (a done pair must cost no task run)."""

    def with_options(self, **_options: object) -> _NoSubmissions:
        return self

    def submit(self, *args: object, **kwargs: object) -> None:
        raise AssertionError(f"a stage task was submitted for {args[1:3]}")


def test_a_build_with_nothing_left_to_do_writes_nothing(prefect_server, corpus, tmp_path, monkeypatch) -> None:
    root, manifest = corpus
    config = write_config(tmp_path / "tiny.yaml")
    first = run_flow(engine_flows.build, root=str(root), manifest=str(manifest), config_path=str(config))
    assert (root / "export" / "json" / "train.json").is_file() and (root / "reports" / "index.html").is_file()
    before = _snapshot(root)
    monkeypatch.setattr(engine_flows, "stage_task", _NoSubmissions())

    again = run_flow(engine_flows.build, root=str(root), manifest=str(manifest), config_path=str(config))
    assert _snapshot(root) == before
    assert [(r["stage"], r["shards"], r["shards_skipped"]) for r in again["stages"][1:]] == [
        (stage, 2, 2) for stage in SHARD_STAGES]
    assert [r["items_out"] for r in again["stages"][1:]] == [r["items_out"] for r in first["stages"][1:]]
    run_flow(engine_flows.export, root=str(root), config_path=str(config))
    run_flow(engine_flows.STAGE_FLOWS[REFINE], root=str(root), config_path=str(config))
    assert _snapshot(root) == before
    monkeypatch.undo()

    # Work left on one shard: only that pair is planned (and run).
    droot = layout.open_root(root)
    shards = layout.shards(droot)
    plan = plan_stages(droot, tiny_config(), shards, SHARD_STAGES)
    assert plan.todo == () and len(plan.done) == len(shards) * len(SHARD_STAGES)
    assert all(report.skipped for report in plan.done)
    droot.delete(droot.done_path(EXPORT, shards[1]))
    assert plan_stages(droot, tiny_config(), shards, SHARD_STAGES).todo == ((EXPORT, shards[1]),)
    assert len(plan_stages(droot, tiny_config(), shards, [EXPORT], force=True).todo) == len(shards)

    train = root / "export" / "json" / "train.json"
    stamp = train.stat().st_mtime_ns
    report = run_flow(engine_flows.build, root=str(root), config_path=str(config))
    export = {r["stage"]: r for r in report["stages"]}[EXPORT]
    assert (export["shards"], export["shards_skipped"]) == (2, 1)
    assert train.stat().st_mtime_ns == stamp  # re-exported with the same content: the merged JSON is unchanged
