"""`videorefer worker` (a Prefect task worker serving chosen stages) and the cluster options of `build` / `stage`.

The options write the environment that `flows.task_runners.RunnerSettings.from_env` reads (`RAY_ADDRESS`,
`VIDEOREFER_RAY_GPU_RESOURCE`, `VIDEOREFER_GPU_STAGES`), so the flow process and every worker it starts see the same
settings. `worker` serves the per-stage tasks of `flows.engine_flows.STAGE_TASKS` with Prefect's task worker
(`prefect.task_worker.serve`, what `prefect task serve` runs) against the server of `PREFECT_API_URL`; a build
started with `--runner prefect` against that server hands each stage task to a worker serving its stage. The
`worker` command itself is registered by `flows.cli_engine`.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import typer


def _to_env(name: str) -> Callable[[str | None], str | None]:
    def store(value: str | None) -> str | None:
        if value:
            os.environ[name] = value
        return value

    return store


RAY_ADDRESS = typer.Option(None, "--ray-address", callback=_to_env("RAY_ADDRESS"),
                           help="Join this Ray cluster (default: RAY_ADDRESS; unset: a one-node local Ray).")
GPU_RESOURCE = typer.Option(None, "--gpu-resource", callback=_to_env("VIDEOREFER_RAY_GPU_RESOURCE"),
                            help="The Ray resource a GPU stage asks for (default GPU).")
GPU_STAGES = typer.Option(None, "--gpu-stages", callback=_to_env("VIDEOREFER_GPU_STAGES"),
                          help="Comma-separated stages that run only on GPU nodes, besides those whose backends "
                               "run on CUDA.")


def stage_names(text: str) -> list[str]:
    """`segment,short_captions` (or `all`) -> the per-shard stage names, each checked against the registry."""
    from flows.pipeline.stages import SHARD_STAGES, check_stage

    parts = [part.strip().replace("-", "_") for part in text.split(",") if part.strip()]
    if parts == ["all"]:
        return list(SHARD_STAGES)
    if not parts:
        from engine.errors import ConfigError

        raise ConfigError("--stages names no stage; expected e.g. segment,short_captions or all")
    return [check_stage(part) for part in parts]


def serve_stages(stages: str, limit: int) -> None:
    """Run a Prefect task worker for `stages` until it is stopped (`videorefer worker`)."""
    names = stage_names(stages)
    if not os.environ.get("PREFECT_API_URL"):
        from engine.errors import ConfigError

        raise ConfigError("videorefer worker needs a Prefect server that the build uses too: start "
                          "`prefect server start` and set PREFECT_API_URL (e.g. http://HEAD:4200/api)")
    from prefect.task_worker import serve

    from flows.engine_flows import STAGE_TASKS

    typer.echo(f"worker {os.getpid()}: serving {', '.join(names)} (at most {limit} at once)", err=True)
    serve(*(STAGE_TASKS[name] for name in names), limit=limit)
