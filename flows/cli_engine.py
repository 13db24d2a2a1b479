"""`videorefer` engine commands: demo, ingest, build, stage, worker, export, import-700k, validate, status,
doctor.

Every command runs the Prefect flows of `flows.engine_flows` on Prefect's local ephemeral API unless
`PREFECT_API_URL` points at a server; prefect and the pipeline are imported inside the commands so that
`videorefer --help` stays fast. Errors of the engine's taxonomy print one clear line and exit with code 1.
"""

from __future__ import annotations

import contextlib
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
    ) -> None:
        """Run the whole data engine offline (fake backends) on synthetic clips and export WebDataset shards."""
        _quiet()
        with _engine_errors(), _writer_lock(root):
            from flows.demo import prepare_demo

            root.mkdir(parents=True, exist_ok=True)
            with _spinner(f"making {clips} synthetic clips in {root}/videos"):
                manifest = prepare_demo(root, clips=clips, videos=videos)
            config = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
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
        manifest: Path = typer.Option(..., "--manifest", help="CSV, Parquet, JSONL or JSON list of videos."),
        root: str = _ROOT,
        config: Path | None = _CONFIG,
    ) -> None:
        """Probe the manifest's new rows and pin them into new shards."""
        _quiet()
        with _engine_errors(), _writer_lock(root):
            from flows import engine_flows
            from flows.runtime import run_flow

            report = run_flow(engine_flows.ingest, root=root, manifest=str(manifest), config_path=_opt(config))
            _print_report(report)

    @app.command()
    def build(
        root: str = _ROOT,
        manifest: Path | None = typer.Option(None, "--manifest", help="Ingest this manifest's new rows first."),
        config: Path | None = _CONFIG,
        runner: str | None = _RUNNER,
        shard: list[str] | None = _SHARDS,
        ray_address: str | None = cli_cluster.RAY_ADDRESS,
        gpu_resource: str | None = cli_cluster.GPU_RESOURCE,
        gpu_stages: str | None = cli_cluster.GPU_STAGES,
    ) -> None:
        """Run every stage on every shard (only what is not done for this config), then export."""
        _quiet()
        with _engine_errors(), _writer_lock(root):
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
            _print_outputs(Path(root))

    @app.command("import-700k")
    def import_700k(
        json_file: Path = typer.Option(..., "--json", help="A released VideoRefer-700K JSON file."),
        videos: Path = typer.Option(..., "--videos", help="Folder the items' `video` paths are relative to."),
        root: str = _ROOT,
        config: Path | None = _CONFIG,
    ) -> None:
        """Validate and shard released 700K samples into WebDataset tars (no engine run)."""
        _quiet()
        with _engine_errors(), _writer_lock(root):
            from flows import engine_flows
            from flows.runtime import run_flow

            report = run_flow(engine_flows.import_700k, root=root, json_path=str(json_file),
                              video_root=str(videos), config_path=_opt(config))
            _print_report(report)

    @app.command()
    def validate(root: str = _ROOT) -> None:
        """Re-read every exported shard and check each sample (masks, <region> count, frames)."""
        from rich.progress import track

        from flows.pipeline.checks import validate_tar
        from flows.pipeline.export import exported_tars

        tars = exported_tars(root)
        if not tars:
            typer.echo(f"no exported tars under {root}/export/wds")
            raise typer.Exit(1)
        samples = problems = 0
        for path in track(tars, description="validating shards", transient=True):
            result = validate_tar(path)
            samples += result.samples
            problems += len(result.problems)
            for problem in result.problems[:20]:
                typer.echo(f"{Path(path).name}: {problem}")
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
               as_json: bool = typer.Option(False, "--json", help="one JSON object per finding")) -> None:
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
        errors = sum(f.severity == "error" for f in findings)
        warnings = sum(f.severity == "warning" for f in findings)
        if not as_json:
            typer.echo(f"doctor {root}: {errors} errors, {warnings} warnings")
        if errors:
            raise typer.Exit(1)


def _quiet() -> None:
    """Quiet offline Prefect defaults; must run before prefect is imported (its logging is set up then)."""
    from flows.runtime import quiet_prefect_env

    quiet_prefect_env()


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

    try:
        yield
    except Exception as exc:
        # StageFailedError only exists once the flows are imported (importing them loads prefect: not for this).
        engine_flows = sys.modules.get("flows.engine_flows")
        failed = engine_flows is not None and isinstance(exc, engine_flows.StageFailedError)
        if not (isinstance(exc, VideoReferError) or failed):
            raise
        typer.secho(f"error: {type(exc).__name__}: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from exc


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


def _print_outputs(root: Path) -> None:
    from flows.pipeline.export import exported_tars

    tars = exported_tars(str(root))
    json_dir = root / "export" / "json"
    typer.echo(f"WebDataset shards: {len(tars)} tars in {root / 'export' / 'wds'}")
    typer.echo(f"VideoRefer-700K-style JSON: {json_dir}")
    typer.echo(f"figures: {root / 'reports' / 'latest-run.json'}")
