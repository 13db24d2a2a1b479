"""`videorefer` engine commands: demo, ingest, build, stage, worker, export, import-700k, validate, status,
doctor.

Every command runs the Prefect flows of `flows.engine_flows` on Prefect's local ephemeral API unless
`PREFECT_API_URL` points at a server; prefect and the pipeline are imported inside the commands so that
`videorefer --help` stays fast. Errors of the engine's taxonomy print one clear line and exit with code 1.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer

from flows import cli_cluster

DEFAULT_DEMO_ROOT = Path("demo_out")

_ROOT = typer.Option(..., "--root", help="Dataset root (a folder or an fsspec URL).")
_CONFIG = typer.Option(None, "--config", help="Engine config YAML (default: the root's snapshot, else offline).")
_SHARDS = typer.Option(None, "--shard", help="Only these shards (repeatable; default: all).")
_RUNNER = typer.Option(None, "--runner", help="Task runner: process (default: a worker process per core), thread, "
                       "ray (a Ray cluster, see --ray-address) or prefect (`videorefer worker` processes).")


def register(app: typer.Typer) -> None:
    """Add the engine commands to the main app."""

    @app.command()
    def demo(
        root: Path = typer.Option(DEFAULT_DEMO_ROOT, "--root", help="Where the demo dataset goes."),
        clips: int = typer.Option(8, "--clips", min=1, help="Synthetic clips for the detailed/short paths."),
        videos: Path | None = typer.Option(None, "--videos", help="Also ingest every video of this folder."),
        runner: str | None = _RUNNER,
        config: Path | None = typer.Option(
            None, "--config", help="Engine config YAML (default configs/demo.yaml; configs/demo-sam2.yaml, "
            "demo-sam3.yaml: the SAM segmenters with random weights)."
        ),
    ) -> None:
        """Run the whole data engine offline (fake backends) on synthetic clips and export WebDataset shards."""
        _quiet()
        with _engine_errors(), _writer_lock(root):
            from flows.demo import prepare_demo

            root.mkdir(parents=True, exist_ok=True)
            with _spinner(f"making {clips} synthetic clips in {root}/videos"):
                manifest = prepare_demo(root, clips=clips, videos=videos)
            if config is None:
                config = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
            elif not config.is_file():
                from engine.errors import ConfigError

                raise ConfigError(f"config file not found: {config}")
            config_path = str(config) if config.is_file() else None
            if videos is not None:  # the folder named on the command line is allowed explicitly (`paths`)
                config_path = _config_allowing(root, config_path, videos)
            report = _run_build(str(root), manifest=str(manifest), config=config_path, runner=runner)
            _print_report(report)
            _print_outputs(root)
            index = root / "reports" / "index.html"
            typer.echo(f"data report: {index.resolve()}" if index.is_file() else
                       "data report: not written (see the warning above; `videorefer report --root` retries)")

    @app.command()
    def ingest(
        manifest: str = typer.Option(..., "--manifest", help="CSV, Parquet, JSONL or JSON list of videos (or a URL)."),
        root: str = _ROOT,
        config: Path | None = _CONFIG,
    ) -> None:
        """Probe the manifest's new rows and pin them into new shards."""
        _quiet()
        with _says_what_ingest_rejected(root), _engine_errors(), _writer_lock(root):
            from flows import engine_flows
            from flows.runtime import run_flow

            report = run_flow(engine_flows.ingest, root=root, manifest=str(manifest), config_path=_opt(config))
            _print_report(report)

    @app.command()
    def build(
        root: str = _ROOT,
        manifest: str | None = typer.Option(None, "--manifest", help="Ingest this manifest's new rows first."),
        config: Path | None = _CONFIG,
        runner: str | None = _RUNNER,
        shard: list[str] | None = _SHARDS,
        ray_address: str | None = cli_cluster.RAY_ADDRESS,
        gpu_resource: str | None = cli_cluster.GPU_RESOURCE,
        gpu_stages: str | None = cli_cluster.GPU_STAGES,
    ) -> None:
        """Run every stage on every shard (only what is not done for this config), then export."""
        _quiet()
        with (_says_what_ingest_rejected(root) if manifest else contextlib.nullcontext()), _engine_errors(), \
                _writer_lock(root):
            report = _run_build(root, manifest=_opt(manifest), config=_opt(config), runner=runner, shards=shard)
            _print_report(report)

    @app.command()
    def stage(
        name: str = typer.Argument(..., help="analyze, annotate, segment, review, refine, short_captions, "
                                             "generate_qa or export"),
        root: str = _ROOT,
        config: Path | None = _CONFIG,
        shard: list[str] | None = _SHARDS,
        force: bool = typer.Option(False, "--force", help="Re-run even where the stage is done."),
        runner: str | None = _RUNNER,
        ray_address: str | None = cli_cluster.RAY_ADDRESS,
        gpu_resource: str | None = cli_cluster.GPU_RESOURCE,
        gpu_stages: str | None = cli_cluster.GPU_STAGES,
    ) -> None:
        """Run one stage over all (or the selected) shards."""
        _quiet()
        with _engine_errors(), _writer_lock(root):
            from flows import engine_flows
            from flows.pipeline.stages import check_stage
            from flows.runtime import run_flow

            flow_obj = engine_flows.STAGE_FLOWS[check_stage(name.replace("-", "_"))]
            report = run_flow(flow_obj, runner=runner, root=root, config_path=_opt(config), shards=shard or None,
                              force=force)
            _print_report(report)

    @app.command()
    def worker(
        stages: str = typer.Option("all", "--stages", help="Comma-separated stages this worker runs, or all."),
        limit: int = typer.Option(1, "--limit", min=1, help="Stage tasks this worker runs at once."),
    ) -> None:
        """Serve stage tasks to builds run with `--runner prefect` (needs PREFECT_API_URL of a Prefect server)."""
        _quiet()
        with _engine_errors():
            cli_cluster.serve_stages(stages, limit)

    @app.command()
    def export(
        root: str = _ROOT,
        config: Path | None = _CONFIG,
        force: bool = typer.Option(False, "--force", help="Re-export shards already exported."),
    ) -> None:
        """Write WebDataset shards and the 700K-style JSON from the finished stages."""
        _quiet()
        with _engine_errors(), _writer_lock(root):
            from flows import engine_flows
            from flows.runtime import run_flow

            report = run_flow(engine_flows.export, root=root, config_path=_opt(config), force=force)
            _print_report(report)
            _print_outputs(root)

    @app.command("import-700k")
    def import_700k(
        json_file: str = typer.Option(..., "--json", help="A released VideoRefer-700K JSON file (or a URL)."),
        videos: str = typer.Option(..., "--videos", help="Folder (or URL) the items' `video` paths are relative to."),
        root: str = _ROOT,
        config: Path | None = _CONFIG,
    ) -> None:
        """Validate and shard released 700K samples into WebDataset tars (no engine run)."""
        _quiet()
        with _engine_errors(), _writer_lock(root):
            from flows import engine_flows
            from flows.pipeline.importing import canonical_video_root
            from flows.runtime import run_flow

            # One spelling before any worker sees it (a worker's working folder may differ from this one's).
            # (URLs stay as given; local paths absolute, `..` and symlinks resolved)
            report = run_flow(engine_flows.import_700k, root=root, json_path=canonical_video_root(json_file),
                              video_root=canonical_video_root(videos), config_path=_opt(config))
            _print_report(report)

    @app.command()
    def validate(root: str = _ROOT, config: Path | None = _CONFIG) -> None:
        """Re-read every exported shard and check each sample (masks, <region> count, frames, texts), and the
        700K JSON's video paths: the same checks of exported data as `doctor`, with the root's limits."""
        from rich.progress import track

        from engine.parsing import text_limit
        from flows.pipeline import layout
        from flows.pipeline.checks import validate_tar
        from flows.pipeline.doctor import json_findings
        from flows.pipeline.export import exported_tars

        with _engine_errors():
            limits = layout.resolve_config(root, _opt(config)).limits
            tars = exported_tars(root)
        if not tars:
            typer.echo(f"no exported tars under {root}/export/wds")
            raise typer.Exit(1)
        samples = problems = 0
        with text_limit(limits.max_text_chars):
            for path in track(tars, description="validating shards", transient=True):
                result = validate_tar(path)
                samples += result.samples
                problems += len(result.problems)
                for problem in result.problems[:20]:
                    typer.echo(f"{Path(path).name}: {problem}")
        for finding in json_findings(layout.open_root(root)):
            problems += finding.severity == "error"
            typer.echo(f"{finding.where}: {finding.message}")
        typer.echo(f"{len(tars)} tars, {samples} samples, {problems} problems")
        if problems:
            raise typer.Exit(1)

    @app.command()
    def status(root: str = _ROOT, config: Path | None = _CONFIG) -> None:
        """Per-stage progress: shards done for the current config, stale, missing; items and rejects."""
        from rich.console import Console
        from rich.table import Table

        from flows.pipeline.checks import stage_status

        with _engine_errors():
            rows = stage_status(root, _opt(config))
        table = Table(title=f"engine status of {root}")
        for column in ("stage", "done", "stale", "todo", "items in", "items out", "rejected"):
            table.add_column(column)
        for row in rows:
            table.add_row(*(str(row[key]) for key in ("stage", "done", "stale", "todo", "items_in", "items_out",
                                                       "rejected")))
        Console().print(table)


    @app.command()
    def doctor(root: str = _ROOT, config: Path | None = _CONFIG,
               as_json: bool = typer.Option(False, "--json", help="JSON: each finding, then a summary")) -> None:
        """Deep re-check of a root: lock, temp files, videos, texts, masks, counts, shards and 700K JSON paths."""
        import dataclasses
        import json

        from flows.pipeline.doctor import diagnose

        with _engine_errors():
            findings = diagnose(root, _opt(config))
        for finding in findings:
            if as_json:
                typer.echo(json.dumps(dataclasses.asdict(finding)))
            else:
                typer.echo(f"{finding.severity:7} {finding.kind:9} {finding.where}: {finding.message}")
        counts = {severity: sum(f.severity == severity for f in findings) for severity in ("error", "warning", "info")}
        errors, warnings = counts["error"], counts["warning"]
        if as_json:  # always last, also on a clean root: a script tells "clean" from "did not run"
            typer.echo(json.dumps({"summary": {"root": str(root), "errors": errors, "warnings": warnings,
                                               "infos": counts["info"], "clean": errors == 0}}))
        else:
            typer.echo(f"doctor {root}: {errors} errors, {warnings} warnings")
        if errors:
            raise typer.Exit(1)


def _quiet() -> None:
    """Quiet offline Prefect defaults; must run before prefect is imported (its logging is set up then)."""
    from flows.runtime import quiet_prefect_env

    quiet_prefect_env()
    _typed_errors_without_traceback()


DEBUG_ENV = "VIDEOREFER_DEBUG"  # `videorefer --debug`: Prefect's error logs reach the terminal too


class _NoTracebackForTypedErrors:
    """A logging filter on Prefect's flow- and task-run loggers: a run that fails with an error of the engine's
    taxonomy (or a file system fault) is logged by Prefect with its traceback. The command prints its own one
    `error:` line for it, so the record is marked and the terminal's handler drops it (`_SkipMarked`), while the
    Prefect log (the API handler) keeps it whole, traceback included. `--debug` keeps it on the terminal too."""

    def filter(self, record: Any) -> bool:
        from engine.errors import VideoReferError

        error = record.exc_info[1] if record.exc_info else None
        engine_flows = sys.modules.get("flows.engine_flows")
        failed = engine_flows is not None and isinstance(error, engine_flows.StageFailedError)
        storage = error is not None and _storage_fault(error) is not None
        typed = isinstance(error, VideoReferError) or failed or storage
        if typed and os.environ.get(DEBUG_ENV) != "1":
            record.videorefer_printed_by_cli = True
            _terminal_skips_marked_records()
        return True


class _SkipMarked:
    """A filter for the terminal's log handler: records the command reports itself (`_NoTracebackForTypedErrors`)."""

    def filter(self, record: Any) -> bool:
        return not getattr(record, "videorefer_printed_by_cli", False)


def _terminal_skips_marked_records() -> None:
    """Put `_SkipMarked` on the handlers that write to the terminal (Prefect's console handler on the root logger,
    set up when prefect was imported; the API handler is not among them)."""
    import logging

    for logger in (logging.getLogger(), logging.getLogger("prefect")):
        for handler in logger.handlers:
            if isinstance(handler, logging.StreamHandler) and not any(
                    isinstance(f, _SkipMarked) for f in handler.filters):
                handler.addFilter(_SkipMarked())


def _typed_errors_without_traceback() -> None:
    import logging

    for name in ("prefect.task_runs", "prefect.flow_runs"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _NoTracebackForTypedErrors) for f in logger.filters):
            logger.addFilter(_NoTracebackForTypedErrors())


def _config_allowing(root: Path, config: str | None, folder: Path) -> str:
    """`<root>/demo-config.yaml`: the demo's config with `folder` added to `paths.allowed_roots`."""
    import yaml

    data = (yaml.safe_load(Path(config).read_text()) or {}) if config else {"base_profile": "offline"}
    paths = dict(data.get("paths") or {})
    paths["allowed_roots"] = [*paths.get("allowed_roots", []), str(folder.resolve())]
    data["paths"] = paths
    target = root / "demo-config.yaml"
    target.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(target)


def _opt(value: Path | str | None) -> str | None:
    return None if value is None else str(value)


def _run_build(root: str, *, manifest: str | None, config: str | None, runner: str | None,
               shards: list[str] | None = None) -> dict[str, Any]:
    from flows import engine_flows
    from flows.runtime import run_flow

    with _progress(root, config):
        return run_flow(engine_flows.build, runner=runner, root=root, manifest=manifest, config_path=config,
                        shards=shards or None)


@contextlib.contextmanager
def _engine_errors() -> Iterator[None]:
    """Engine errors (config, backend down, too many rejects, failed stages) -> one line and exit code 1."""
    from engine.errors import VideoReferError
    from engine.parsing import bounded

    try:
        yield
    except Exception as exc:
        # StageFailedError only exists once the flows are imported (importing them loads prefect: not for this).
        engine_flows = sys.modules.get("flows.engine_flows")
        failed = engine_flows is not None and isinstance(exc, engine_flows.StageFailedError)
        storage = None if isinstance(exc, VideoReferError) else _storage_fault(exc) or _api_fault(exc)
        if storage is not None:
            typer.secho(f"error: {bounded(storage)}", fg=typer.colors.RED, err=True)
            raise typer.Exit(1) from exc
        if not (isinstance(exc, VideoReferError) or failed):
            raise
        typer.secho(f"error: {type(exc).__name__}: {bounded(exc)}", fg=typer.colors.RED, err=True)
        report = getattr(exc, "run_report", None)  # a run that failed still says what it did (finish_run)
        if isinstance(report, dict) and report.get("stages"):
            _print_report(report)
        raise typer.Exit(1) from exc


# File system faults that no retry fixes: the message names the path and what to do.
_STORAGE_HINTS = {
    errno.ENOSPC: "the disk is full: free space there (or choose a root on another disk) and run again",
    errno.EDQUOT: "the disk quota is used up: free space there and run again",
    errno.EFBIG: "the file grew past the size this process may write (ulimit -f) or the file system allows",
    errno.EROFS: "the file system is read-only: choose a writable root (or PREFECT_HOME)",
    errno.EACCES: "permission denied: make it writable for this user or choose another folder",
    errno.EPERM: "operation not permitted: make it writable for this user or choose another folder",
    errno.ENOTDIR: "a part of the path is a file, not a folder: choose another root",
    errno.EEXIST: "a file is in the way of a folder there: choose another root",
}


def _storage_fault(exc: BaseException) -> str | None:
    """One line for a file system fault (disk full, read-only, permission denied) anywhere in `exc`'s chain."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _STORAGE_HINTS:
            where = current.filename or "the dataset root"
            return f"cannot write {where}: {current.strerror or current}; {_STORAGE_HINTS[current.errno]}"
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    return None


def _api_fault(exc: BaseException) -> str | None:
    """One line for the Prefect API failing on the server side (a 5xx): with the local API, its SQLite database
    lives in PREFECT_HOME, and a full or read-only disk there shows up only as such an error."""
    import os

    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", 0)
    if type(exc).__name__ != "PrefectHTTPStatusError" or not 500 <= int(status or 0) < 600:
        return None
    home = os.environ.get("PREFECT_HOME") or str(Path.home() / ".prefect")
    url = getattr(getattr(response, "request", None), "url", "")
    return (f"the Prefect API at {url} failed ({status}): check that the disk of its database (PREFECT_HOME {home} "
            "for the local API) has space and is writable, then run again")


def _check_prefect_home() -> None:
    """Without PREFECT_API_URL the local API keeps its SQLite database in PREFECT_HOME: it must be writable, or the
    command stops at once with one line (instead of waiting for a server that cannot start)."""
    import os
    import tempfile

    from engine.errors import ConfigError

    if os.environ.get("PREFECT_API_URL"):
        return
    home = Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect").expanduser()
    try:
        home.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=home):
            pass
    except OSError as exc:
        raise ConfigError(f"PREFECT_HOME {home} is not writable ({exc.strerror or exc}): set PREFECT_HOME to a "
                          "writable folder, or PREFECT_API_URL to a running Prefect server") from None


@contextlib.contextmanager
def _writer_lock(root: str | Path) -> Iterator[None]:
    """The root's writer lock for the whole command, taken before Prefect starts, so a second writer fails at once
    (the flow takes it again, re-entrantly; a deployment's flow run takes it by itself). Then, without
    PREFECT_API_URL, the local API starts, so it comes up while prefect and the pipeline import in the block."""
    from flows.runtime import start_local_api
    from storage.root import DatasetRoot

    if not str(root).strip():
        from flows.pipeline import layout

        layout.open_root(str(root))  # the empty-root ConfigError, with its hint
    _check_prefect_home()
    with DatasetRoot(str(root)).lock("videorefer " + " ".join(sys.argv[1:])):
        start_local_api()
        yield


@contextlib.contextmanager
def _spinner(text: str) -> Iterator[None]:
    from rich.console import Console

    with Console(stderr=True).status(text):
        yield


@contextlib.contextmanager
def _progress(root: str, config: str | None) -> Iterator[None]:
    """A progress bar of (stage, shard) tasks done, polled from the root's done markers while a flow runs."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from flows.pipeline.checks import count_done

    stop = threading.Event()
    progress = Progress(TextColumn("engine"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), transient=True)
    bar = progress.add_task("stages x shards", total=None)

    def poll() -> None:
        while not stop.wait(0.5):
            with contextlib.suppress(Exception):  # the root may be half-written; the next poll will see it
                done, total = count_done(root, config)
                progress.update(bar, completed=done, total=total or None)

    watcher = threading.Thread(target=poll, daemon=True)
    with progress:
        watcher.start()
        try:
            yield
        finally:
            stop.set()
            watcher.join(timeout=2)


@contextlib.contextmanager
def _says_what_ingest_rejected(root: str) -> Iterator[None]:
    """After the block (an ingest), the rows it rejected by reason, with examples and how to allow a folder: the
    reject batches that were not there before it (a row once rejected is never rejected again in a root)."""
    from engine.errors import VideoReferError
    from flows.pipeline import layout
    from flows.pipeline.ingest import ingest_reject_lines

    def batches() -> set[str]:
        return layout.ingest_reject_batches(layout.open_root(root))

    try:
        before = batches()
    except (OSError, ValueError, VideoReferError):  # no root yet (or none at all: the command says so itself)
        before = set()
    try:
        yield
    finally:
        with contextlib.suppress(OSError, ValueError, VideoReferError):  # said even when the run failed after it
            droot = layout.open_root(root)
            new = batches() - before
            for line in ingest_reject_lines(layout.ingest_rejects(droot, new)):
                typer.echo(line, err=True)


def _print_report(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"run {report.get('run_id', '')} ({report.get('wall_seconds', 0):.1f} s)")
    for column in ("stage", "shards (skipped)", "in", "out", "rejected", "reasons", "seconds"):
        table.add_column(column)
    for row in report.get("stages", []):
        reasons = ", ".join(f"{k} {v}" for k, v in row["rejects"].items()) or "-"
        table.add_row(row["stage"], f"{row['shards']} ({row['shards_skipped']})", str(row["items_in"]),
                      str(row["items_out"]), str(row["rejected"]), reasons, f"{row['seconds']:.2f}")
    Console().print(table)


def _print_outputs(root: Path | str) -> None:
    from flows.pipeline.export import exported_tars
    from storage.root import DatasetRoot

    droot = DatasetRoot(str(root))  # a folder or a URL (`s3://...`: Path would fold its `//`)
    tars = exported_tars(droot)
    typer.echo(f"WebDataset shards: {len(tars)} tars in {droot.url_of('export/wds')}")
    typer.echo(f"VideoRefer-700K-style JSON: {droot.url_of('export/json')}")
    typer.echo(f"figures: {droot.url_of('reports/latest-run.json')}")
