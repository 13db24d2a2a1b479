"""Launching a training stage: the torchrun command line for `model.training.loop`, and running it.

`torchrun_command` builds `python -m torch.distributed.run --nproc-per-node N -m model.training.loop ...` (the
same interpreter as the caller, so the virtual environment carries over); `run_streaming` runs a command,
streams its output line by line to a callback (the CLI prints it, the Prefect flow logs it) and returns its
exit code. Both the `videorefer train` command and the `train_stage` flow go through here.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from engine.errors import ConfigError


def loop_arguments(
    *,
    recipe: str,
    data: Sequence[str],
    out: str | Path,
    max_steps: int | None = None,
    resume: bool = False,
    init_from: str | Path | None = None,
    overrides: Mapping[str, str] | None = None,
    overwrite: bool = False,
) -> list[str]:
    """The command-line arguments of `python -m model.training.loop` for these settings."""
    if not data:
        raise ConfigError("give at least one --data shard glob")
    arguments = ["--recipe", recipe, "--out", str(out), "--data", *data]
    if max_steps is not None:
        arguments += ["--max-steps", str(int(max_steps))]
    if init_from is not None:
        arguments += ["--init-from", str(init_from)]
    if resume:
        arguments.append("--resume")
    if overwrite:
        arguments.append("--overwrite")
    for key, value in (overrides or {}).items():
        arguments += ["--set", f"{key}={value}"]
    return arguments


def torchrun_command(
    *,
    recipe: str,
    data: Sequence[str],
    out: str | Path,
    nproc: int = 1,
    max_steps: int | None = None,
    resume: bool = False,
    init_from: str | Path | None = None,
    overrides: Mapping[str, str] | None = None,
    nnodes: int = 1,
    rdzv_endpoint: str | None = None,
    python: str | None = None,
    overwrite: bool = False,
) -> list[str]:
    """`python -m torch.distributed.run ... -m model.training.loop ...` for one node (or `nnodes` with rendezvous)."""
    if nproc < 1:
        raise ConfigError("--nproc must be >= 1")
    command = [python or sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc)]
    if nnodes > 1:
        if not rdzv_endpoint:
            raise ConfigError("a multi-node run needs a rendezvous endpoint (host:port)")
        command += ["--nnodes", str(nnodes), "--rdzv-backend", "c10d", "--rdzv-endpoint", rdzv_endpoint]
    else:
        # A free port per run, so that parallel single-node runs (tests, several stages) do not collide.
        command += ["--standalone"]
    command += ["-m", "model.training.loop"]
    command += loop_arguments(
        recipe=recipe, data=data, out=out, max_steps=max_steps, resume=resume, init_from=init_from,
        overrides=overrides, overwrite=overwrite,
    )
    return command


def run_streaming(
    command: Sequence[str],
    *,
    on_line: Callable[[str], None] = lambda line: print(line, end="", flush=True),
    cwd: str | Path | None = None,
    env: Mapping[str, str] | None = None,
) -> int:
    """Run `command`, hand each line of its merged stdout/stderr to `on_line` as it comes, return the exit code."""
    environment = {**os.environ, **(env or {})}
    # The loop imports `model` from the repository: keep it importable when launched from elsewhere.
    repo = str(Path(__file__).resolve().parents[2])
    environment["PYTHONPATH"] = os.pathsep.join(p for p in (repo, environment.get("PYTHONPATH", "")) if p)
    environment.setdefault("PYTHONUNBUFFERED", "1")
    with subprocess.Popen(
        list(command), cwd=cwd, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        bufsize=1,
    ) as process:
        assert process.stdout is not None
        for line in process.stdout:
            on_line(line)
        return process.wait()
