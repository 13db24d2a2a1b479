"""The data engine's Prefect flows: one task per (stage, shard), per-stage flows, the full build, and import.

Prefect is the control plane only: each task calls a plain pipeline function (`flows.pipeline`) that streams
a whole shard through one agent. Flows: `ingest`, one flow per stage of the registry (`flows.pipeline.stages`:
`analyze`, `annotate`, `segment`, `review`, `refine`, `short_captions`, `generate_qa`, `export`, each over all or
the selected shards), `build` (ingest, then every stage chained per shard, shards in parallel on the task
runner) and `import_700k`.

Failures: a transient backend error that survived the backend's own retries is retried by Prefect
(`retry_condition_fn` accepts only `TransientBackendError`); an unreachable backend (`BackendUnavailableError`)
fails the run with a message naming the stage and shard; bad items are rejects; at the end the run fails if
a stage's rejected fraction passes `max_reject_fraction`, after writing the run's figures to
`<root>/reports/` and a Prefect markdown artifact.

Concurrency per backend: every stage task carries tags naming its backends (`sam2`, `grounding_dino`,
`chat:openai`, `chat:local`, `gpu` when a backend runs on CUDA, and `stage:<name>`). Tags only limit work once
a limit exists on the server, e.g. `prefect concurrency-limit create sam2 1` (one SAM 2 task per GPU
machine) or `prefect concurrency-limit create chat:openai 4`; without limits the tags are labels.

Runners (`flows.task_runners`): the default is Prefect's `ProcessPoolTaskRunner` (one worker process per core);
`thread`, `ray` (prefect-ray, joining a cluster; GPU stages ask Ray for the GPU resource, CPU stages spread) and
`prefect` (task workers: each stage has its own task, `stage_<name>`, so `videorefer worker --stages ...` serves
just those stages) are chosen with `--runner` / `VIDEOREFER_RUNNER`. Every task records the node and process it
ran on, in its report and at its start (`reports/tasks/<stage>/<shard>.json`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture, wait

from engine.config import EngineConfig
from engine.errors import BackendUnavailableError, ConfigError, TransientBackendError
from engine.parsing import bounded
from flows.pipeline import layout
from flows.pipeline.backends import close_worker_pool
from flows.pipeline.ingest import ingest as ingest_manifest
from flows.pipeline.planning import in_stage_order, is_idle, plan_stages
from flows.pipeline.preflight import check_run
from flows.pipeline.reports import RunReport, StageReport
from flows.pipeline.runner import run_stage
from flows.pipeline.stages import (
    ANALYZE,
    ANNOTATE,
    EXPORT,
    GENERATE_QA,
    REFINE,
    REVIEW,
    SEGMENT,
    SHARD_STAGES,
    SHORT_CAPTIONS,
    STAGE_PARENTS,
    STAGES,
    Stage,
    check_stage,
    needs_gpu,
    stage_tags,
)
from flows.runtime import run_name
from flows.task_runners import RunnerSettings, is_gpu_stage, is_ray_runner, make_task_runner, ray_options, where

# Prefect retries on top of the backend's own retries, only for errors that may pass with time.
TASK_RETRIES = 2
TASK_RETRY_DELAYS_S = [2.0, 10.0]


class _SubmissionOrderIsDeadlockFree(logging.Filter):
    """Drops Prefect's "N tags but only M workers: may dead-lock" warning for our stage tasks.

    The warning guards against a task holding a worker thread (the process pool: a resolver thread) while it
    waits for an upstream task that cannot get one. `submit_stages` submits every upstream task before its
    dependents and the runner's queue is FIFO, so an upstream task always has a thread (running or done) before
    any dependent waits on it.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "may lead to dead-locks" not in record.getMessage()


for _pool in ("threadpool", "processpool"):  # the process pool resolves upstream futures in as many threads
    logging.getLogger(f"prefect.task_runner.{_pool}").addFilter(_SubmissionOrderIsDeadlockFree())


class StageFailedError(RuntimeError):
    """One or more stage tasks failed; the message names each (stage, shard) and its error."""


def is_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect `retry_condition_fn`: retry only transient backend errors (never bad config, bad items, bugs)."""
    exc = state.data if isinstance(getattr(state, "data", None), BaseException) else None
    if exc is None:
        try:
            exc = state.result(raise_on_failure=False)
        except Exception:  # noqa: BLE001 - a result we cannot read is not a reason to retry
            return False
    return isinstance(exc, TransientBackendError)


def run_stage_task(root: str, stage: str, shard_id: str, config: EngineConfig, force: bool = False) -> StageReport:
    """One stage over one shard (skipped when already done for this config); logs the shard's figures and
    records where it runs (at its start under `reports/tasks/`, and in its report)."""
    node, pid = where()
    layout.open_root(root).write_json(task_start_path(stage, shard_id),
                                      {"stage": stage, "shard_id": shard_id, "node": node, "pid": pid,
                                       "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    try:
        report = dataclasses.replace(run_stage(root, stage, shard_id, config, force=force), node=node, pid=pid)
        _shard_logger().info(shard_log_line(report))
        return report
    except BackendUnavailableError as exc:
        raise BackendUnavailableError(
            f"stage {stage!r} on {shard_id}: a backend is unreachable, the run stops here (nothing was marked "
            f"failed; fix the backend and re-run to resume): {exc}"
        ) from exc


def task_start_path(stage: str, shard_id: str) -> str:
    """Where a stage task notes, as it starts, the node and process it runs on."""
    return f"{layout.run_reports_dir()}/tasks/{stage}/{shard_id}.json"


_STAGE_TASK_OPTIONS: dict[str, Any] = {
    "task_run_name": "{stage}-{shard_id}",
    "retries": TASK_RETRIES,
    "retry_delay_seconds": TASK_RETRY_DELAYS_S,
    "retry_condition_fn": is_transient,
    "cache_policy": NO_CACHE,
    "persist_result": False,
}
stage_task = task(name="stage", **_STAGE_TASK_OPTIONS)(run_stage_task)


def _stage_function(stage: str) -> Any:
    """`run_stage_task` under the name `stage_<stage>`, a module attribute: Prefect keys a task by its function's
    name, so each stage is a task of its own that task workers can serve one by one (`videorefer worker
    --stages`), and process pools and Ray send it by reference."""

    def run(root: str, stage: str, shard_id: str, config: EngineConfig, force: bool = False) -> StageReport:
        return run_stage_task(root, stage, shard_id, config, force)

    run.__name__ = run.__qualname__ = f"stage_{stage}"
    globals()[run.__name__] = run
    return run


# One Prefect task per registry stage (task key `stage_<name>-...`).
STAGE_TASKS: dict[str, Any] = {
    stage: task(name=f"stage-{stage}", **_STAGE_TASK_OPTIONS)(_stage_function(stage)) for stage in SHARD_STAGES
}


def shard_log_line(report: StageReport) -> str:
    """The one log line of a (stage, shard): items in / out / rejected (by reason) and seconds."""
    reasons = ", ".join(f"{reason} {count}" for reason, count in sorted(report.rejects.items()))
    skipped = " (done before: skipped)" if report.skipped else ""
    return (f"{report.stage} {report.shard_id}: {report.items_in} in, {report.items_out} out, {report.rejected} "
            f"rejected{f' ({reasons})' if reasons else ''}, {report.seconds:.2f} s{skipped}")


def _shard_logger() -> Any:
    """The task run's logger (its lines reach the Prefect UI), or the module's outside a run."""
    try:
        from prefect.logging import get_run_logger

        return get_run_logger()
    except Exception:  # noqa: BLE001 - MissingContextError: called as a plain function
        return logging.getLogger(__name__)


@task(name="ingest", cache_policy=NO_CACHE, persist_result=False)
def ingest_task(root: str, manifest: str, config: EngineConfig) -> StageReport:
    """Probe the manifest's new rows and pin them into new shards."""
    report = ingest_manifest(root, manifest, config).report
    _shard_logger().info(shard_log_line(report))
    return report


def backend_tags(stage: str, config: EngineConfig) -> set[str]:
    """Tags of a stage task (the registry's: its stage and every backend it calls)."""
    return stage_tags(stage, config)


def default_runner() -> Any:
    """The task runner named by the environment (`VIDEOREFER_RUNNER`; default: a process per core)."""
    return make_task_runner(RunnerSettings.from_env())


@contextlib.contextmanager
def _placement(stage: str, config: EngineConfig) -> Iterator[None]:
    """On Ray, a GPU stage's task asks for the GPU resource and a CPU stage's spreads; elsewhere nothing."""
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    if context is None or not is_ray_runner(context.task_runner):
        yield
        return
    from prefect_ray.context import remote_options

    settings = RunnerSettings.from_env()
    with remote_options(**ray_options(is_gpu_stage(stage, needs_gpu(stage, config), settings), settings)):
        yield


def submit_stages(
    root: str,
    config: EngineConfig,
    shard_ids: Sequence[str],
    stages: Sequence[str],
    *,
    force: bool = False,
    only: set[tuple[str, str]] | None = None,
) -> list[tuple[str, str, PrefectFuture[StageReport]]]:
    """Submit one task per (stage, shard) (of `only`, when given), chained along the stage graph within each shard.

    Submission is stage-major (every shard's analyze, then every shard's annotate, ...): a task waiting for its
    upstream holds a runner slot, and this order keeps the first slots busy with work that can run now.
    """
    wanted = [stage for stage in SHARD_STAGES if stage in set(stages)]
    tasks = {stage: STAGE_TASKS[stage].with_options(tags=sorted(backend_tags(stage, config))) for stage in wanted}
    if _holds_slots_while_waiting():
        return _submit_when_ready(tasks, root, config, shard_ids, wanted, force)
    submitted: list[tuple[str, str, PrefectFuture[StageReport]]] = []
    futures: dict[tuple[str, str], PrefectFuture[StageReport]] = {}
    for stage in wanted:
        for shard in shard_ids:
            if only is not None and (stage, shard) not in only:
                continue  # done for this config: planned as skipped, no task run (flows.pipeline.planning)
            upstream = [futures[(parent, shard)] for parent in STAGE_PARENTS[stage] if (parent, shard) in futures]
            with _placement(stage, config):
                future = tasks[stage].submit(root, stage, shard, config, force, wait_for=upstream)
            futures[(stage, shard)] = future
            submitted.append((stage, shard, future))
    return submitted


def _holds_slots_while_waiting() -> bool:
    """Task workers (`PrefectTaskRunner`) take a run, then wait for its upstream runs in a slot: a run waiting for
    one that no worker has taken yet could hold every slot, so such runs are only submitted once ready."""
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    return context is not None and type(context.task_runner).__name__ == "PrefectTaskRunner"


def _submit_when_ready(tasks: dict[str, Any], root: str, config: EngineConfig, shard_ids: Sequence[str],
                       wanted: Sequence[str], force: bool) -> list[tuple[str, str, PrefectFuture[StageReport]]]:
    """Submit each (stage, shard) once its upstream tasks finished (a failed upstream: never submitted, so it is
    reported as blocked, as on the other runners); returns once every submitted task is final."""
    from prefect.futures import as_completed

    order = [(stage, shard) for stage in wanted for shard in shard_ids]
    futures: dict[tuple[str, str], PrefectFuture[StageReport]] = {}
    final: set[tuple[str, str]] = set()
    while True:
        for stage, shard in order:
            parents = [(parent, shard) for parent in STAGE_PARENTS[stage] if (parent, shard) in futures
                       or parent in wanted]
            if (stage, shard) in futures or not all(parent in final for parent in parents):
                continue
            if all(futures[parent].state.is_completed() for parent in parents):
                futures[(stage, shard)] = tasks[stage].submit(root, stage, shard, config, force)
        running = {id(future): key for key, future in futures.items() if key not in final}
        if not running:
            return [(stage, shard, future) for (stage, shard), future in futures.items()]
        done = next(as_completed([futures[key] for key in running.values()]))
        _settle(done)
        final.add(running[id(done)])


def _settle(future: Any) -> None:
    """Give a task worker's finished run its final state from the completion event Prefect's `TaskRunWaiter` saw
    (what `PrefectDistributedFuture.wait` does; its API read of the run can come before the run's state exists)."""
    from prefect.task_runs import TaskRunWaiter
    from prefect.utilities.asyncutils import run_coro_as_sync

    if getattr(future, "_final_state", None) is None:
        future._final_state = run_coro_as_sync(TaskRunWaiter.wait_for_task_run(future.task_run_id))  # noqa: SLF001


def collect(
    submitted: Sequence[tuple[str, str, PrefectFuture[StageReport]]],
) -> tuple[list[StageReport], list[tuple[str, str, BaseException]]]:
    """Wait for every task; split finished reports from failures (upstream-blocked tasks are not failures)."""
    wait([future for _, _, future in submitted])
    reports: list[StageReport] = []
    failures: list[tuple[str, str, BaseException]] = []
    for stage, shard, future in submitted:
        state = future.state
        if state.is_completed():
            reports.append(future.result())
        elif state.is_failed() or state.is_crashed():
            result = future.result(raise_on_failure=False)
            if isinstance(result, BaseException):
                failures.append((stage, shard, result))
            else:
                failures.append((stage, shard, RuntimeError(state.message or state.name)))
    return reports, failures


def finish_run(
    root: str,
    config: EngineConfig,
    reports: Sequence[StageReport],
    failures: Sequence[tuple[str, str, BaseException]],
    *,
    started: float,
    name: str,
) -> RunReport:
    """Write the run's figures (JSON under the root + artifact), then fail on errors or too many rejects."""
    run = RunReport.from_stage_reports(
        reports, run_id=f"{name}-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{_run_suffix()}",
        wall_seconds=time.perf_counter() - started,
    )
    droot = layout.open_root(root)
    data = run.to_json()
    data["failures"] = [{"stage": s, "shard_id": sh, "error": f"{type(e).__name__}: {e}"} for s, sh, e in failures]
    error = run_error(failures) or run.reject_fraction_error(config.max_reject_fraction)
    data["outcome"] = "ok" if error is None else "failed"
    data["failed_because"] = None if error is None else f"{type(error).__name__}: {bounded(error)}"
    idle = is_idle(reports, failures)  # nothing ran: the root stays as it is (figures in the artifact only)
    if not idle:
        droot.write_json(f"{layout.run_reports_dir()}/runs/{run.run_id}.json", data)
        droot.write_json(f"{layout.run_reports_dir()}/latest-run.json", data)
    report = None
    if name == "build" and not idle:  # the static data report (reports/index.html); a failure is logged, not raised
        from flows.reporting import write_report_safely

        report = write_report_safely(droot)
    _artifact(run, failures, name=name, report=report)
    if error is not None:
        error.run_report = data  # the CLI prints the stage table before its one error line
        raise error
    return run


def run_error(failures: Sequence[tuple[str, str, BaseException]]) -> BaseException | None:
    """What a run with failed stage tasks raises: a backend that stayed down as it is (its message says what to
    do), any other failure as one `StageFailedError` naming each (stage, shard)."""
    if not failures:
        return None
    unreachable = [f for f in failures if isinstance(f[2], BackendUnavailableError)]
    if unreachable:
        return unreachable[0][2]
    lines = "; ".join(f"{s}/{sh}: {type(e).__name__}: {e}" for s, sh, e in failures)
    error = StageFailedError(f"{len(failures)} stage task(s) failed: {lines}")
    error.__cause__ = failures[0][2]
    return error


def _run_suffix() -> str:
    try:
        from prefect.runtime import flow_run

        return str(flow_run.id or uuid.uuid4())[:8]
    except Exception:  # noqa: BLE001 - outside a flow run any unique suffix will do
        return uuid.uuid4().hex[:8]


def _artifact(
    run: RunReport, failures: Sequence[tuple[str, str, BaseException]], *, name: str, report: str | None = None
) -> None:
    try:
        from prefect.artifacts import create_markdown_artifact

        failed = "".join(f"\n- **failed** {s} / {sh}: {type(e).__name__}: {e}" for s, sh, e in failures)
        link = Path(report).as_uri() if report and Path(report).is_absolute() else report
        data_report = f"\nData report: [{report}]({link})\n" if report else ""
        create_markdown_artifact(
            markdown=f"## {name}: {run.run_id}\n\n{run.to_markdown()}\n{failed}\n{data_report}",
            key="engine-run-figures",
            description=f"Data engine figures of {run.run_id}",
        )
    except Exception:  # noqa: BLE001 - figures are also on disk; a missing API must not fail the run
        return


def _select_shards(root: str, shards: Sequence[str] | None) -> list[str]:
    available = layout.shards(layout.open_root(root))
    if not shards:
        return available
    unknown = sorted(set(shards) - set(available))
    if unknown:
        raise ConfigError(f"unknown shards {unknown}; the root has {len(available)} shards")
    return [shard for shard in available if shard in set(shards)]


def run_stages(
    root: str,
    stages: Sequence[str],
    config_path: str | None = None,
    shards: Sequence[str] | None = None,
    force: bool = False,
    *,
    name: str,
    manifest: str | None = None,
) -> RunReport:
    """Body of every engine flow: optional ingest, then the stages over the shards, then the figures."""
    started = time.perf_counter()
    root = str(root)
    for stage in stages:
        check_stage(stage)
    config = layout.resolve_config(root, config_path)
    check_run(config, stages, manifest=manifest)  # a backend that is down, a missing manifest: one line, at once
    with layout.open_root(root).lock(writer_command(name)):  # one writer per root; a second fails at once
        return _run_locked(root, config, stages, shards, force, name=name, manifest=manifest, started=started)


def writer_command(name: str) -> str:
    """What a root's lock says its holder is doing: the flow and the command line that started it."""
    import sys

    return f"{name} flow: {' '.join(sys.argv)}"[:500]


def _run_locked(root: str, config: EngineConfig, stages: Sequence[str], shards: Sequence[str] | None, force: bool,
                *, name: str, manifest: str | None, started: float) -> RunReport:
    layout.ensure_dataset(layout.open_root(root), config)
    reports: list[StageReport] = []
    if manifest:
        reports.append(ingest_task(root, str(manifest), config))
    shard_ids = _select_shards(root, shards)
    plan = plan_stages(root, config, shard_ids, stages, force=force)  # done pairs: no task, nothing written
    try:
        submitted = submit_stages(root, config, shard_ids, stages, force=force, only=set(plan.todo))
        stage_reports, failures = collect(submitted)
    finally:
        close_worker_pool()  # the warm models of this run (loaded once per worker process)
    if EXPORT in stages:  # the export's one 700K JSON, merged from its shards' parts once every task has finished
        from flows.pipeline.export import finalize_export

        finalize_export(root)  # writes nothing when no shard's export changed
    stage_reports = in_stage_order([*plan.done, *stage_reports])
    return finish_run(root, config, [*reports, *stage_reports], failures, started=started, name=name)


# ---------------------------------------------------------------- flows (parameters: identity only)


@flow(name="engine-ingest", task_runner=default_runner(), flow_run_name=run_name("ingest", "root"))
def ingest(root: str, manifest: str, config_path: str | None = None) -> dict[str, Any]:
    """Probe the manifest's new rows, write their clips, pin them into new shards."""
    return run_stages(root, [], config_path, name="ingest", manifest=manifest).to_json()


def _stage_flow(stage: Stage) -> Any:
    """The per-stage flow of a registry stage: that stage over all or the selected shards."""

    def run(root: str, config_path: str | None = None, shards: list[str] | None = None, force: bool = False) -> dict:
        return run_stages(root, [stage.name], config_path, shards, force, name=stage.name).to_json()

    run.__name__ = run.__qualname__ = stage.name
    run.__doc__ = f"{stage.summary[0].upper()}{stage.summary[1:]}, over the selected shards."
    named = run_name(f"stage-{stage.name}", "root")
    return flow(name=flow_name(stage.name), task_runner=default_runner(), flow_run_name=named)(run)


def flow_name(stage: str) -> str:
    """A per-stage flow's Prefect name: `engine-stage-<stage>` (dashes), beside `engine-build`, `engine-ingest`,
    `engine-import-700k`, `train-stage` and `evaluate-checkpoint`."""
    return f"engine-stage-{stage.replace('_', '-')}"


# One flow per registry stage; module-level names too, so prefect.yaml entrypoints (`flows/engine_flows.py:refine`)
# and callers find them.
STAGE_FLOWS: dict[str, Any] = {stage.name: _stage_flow(stage) for stage in STAGES if stage.per_shard}
analyze, annotate, segment = STAGE_FLOWS[ANALYZE], STAGE_FLOWS[ANNOTATE], STAGE_FLOWS[SEGMENT]
review, refine, short_captions = STAGE_FLOWS[REVIEW], STAGE_FLOWS[REFINE], STAGE_FLOWS[SHORT_CAPTIONS]
generate_qa, export = STAGE_FLOWS[GENERATE_QA], STAGE_FLOWS[EXPORT]


@flow(name="engine-build", task_runner=default_runner(), flow_run_name=run_name("build", "root"))
def build(
    root: str,
    manifest: str | None = None,
    config_path: str | None = None,
    shards: list[str] | None = None,
    force: bool = False,
) -> dict:
    """The full engine: ingest the manifest's new rows, then every stage chained per shard (only what is
    not already done for this config runs, so a scheduled run processes just the new shards)."""
    return run_stages(root, list(SHARD_STAGES), config_path, shards, force, name="build", manifest=manifest).to_json()


def _path_or_url(value: str) -> str:
    """A local path normalised (`Path`), a URL as it is (`Path` would fold its `//`)."""
    return str(value) if "://" in str(value) else str(Path(value))


@task(name="import_700k", task_run_name="import-{shard_id}", cache_policy=NO_CACHE, persist_result=False)
def import_700k_task(root: str, json_path: str, video_root: str, shard_id: str, config: EngineConfig) -> StageReport:
    from flows.pipeline.importing import import_700k_shard

    report = import_700k_shard(root, json_path, video_root, shard_id, config)
    _shard_logger().info(shard_log_line(report))
    return report


@flow(name="engine-import-700k", task_runner=default_runner(), flow_run_name=run_name("import-700k", "root"))
def import_700k(root: str, json_path: str, video_root: str, config_path: str | None = None) -> dict:
    """Shard the released VideoRefer-700K JSON (no engine run): validate, read frames, write WebDataset tars."""
    from flows.pipeline.importing import plan_import

    started = time.perf_counter()
    root = str(root)
    config = layout.resolve_config(root, config_path)
    with layout.open_root(root).lock(writer_command("import_700k")):
        layout.ensure_dataset(layout.open_root(root), config)
        shard_ids = plan_import(root, json_path, config)
        futures = [
            (
                "import_700k",
                shard,
                import_700k_task.submit(root, _path_or_url(json_path), _path_or_url(video_root), shard, config),
            )
            for shard in shard_ids
        ]
        reports, failures = collect(futures)
        return finish_run(root, config, reports, failures, started=started, name="import_700k").to_json()
