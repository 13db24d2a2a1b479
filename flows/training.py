"""The `train_stage` Prefect flow: one training stage as a torchrun subprocess, so deployments can train.

Prefect is the control plane only: the flow builds the same torchrun command as `videorefer train`, streams
the trainer's output into the flow-run log, publishes the run's summary (markdown) and loss curve (image, also
written as `<out>/loss.png`) as artifacts keyed `train-<recipe>-<out name>-summary` / `-loss` (`flows.artifacts`),
fails when the trainer fails, and returns the run's summary (last log line, the saved model directory). Retries
of the flow resume from the last checkpoint (`--resume` is implied on a retry; give the deployment or
`train_stage.with_options(retries=N)` retries), so a preempted GPU job loses at most `checkpoint_every` steps.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from flows.runtime import run_name
from model.training.launch import run_streaming, torchrun_command


class TrainingFailed(RuntimeError):
    """The torchrun subprocess exited with a non-zero code."""


@flow(name="train-stage", retries=0, log_prints=False, flow_run_name=run_name("train", "recipe", "out"))
def train_stage(
    recipe: str,
    data: list[str],
    out: str,
    max_steps: int | None = None,
    nproc: int = 1,
    init_from: str | None = None,
    resume: bool = False,
    overrides: dict[str, str] | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train one stage (`recipe`) from the shard globs `data` into `out`; returns the last logged step.

    An `out` that already holds a run needs `resume` (continue it) or `overwrite` (start over).
    """
    logger = get_run_logger()
    retrying = (flow_run.get_run_count() or 1) > 1
    command = torchrun_command(recipe=recipe, data=data, out=out, nproc=nproc, max_steps=max_steps,
                               resume=resume or retrying, init_from=init_from, overrides=overrides,
                               overwrite=overwrite and not retrying)
    logger.info("launching: %s", " ".join(command))
    code = run_streaming(command, on_line=lambda line: logger.info(line.rstrip()))
    _publish(Path(out), key=f"train-{recipe}-{Path(out).name}")  # a failed run's curve says where it went wrong
    if code != 0:
        raise TrainingFailed(f"{recipe}: torchrun exited with code {code}")
    return summarize(Path(out))


def _publish(out: Path, *, key: str) -> None:
    """The run's summary and loss curve as Prefect artifacts; a failure to publish never fails the training."""
    from flows.artifacts import publish_training

    try:
        publish_training(out, key=key)
    except Exception as error:  # noqa: BLE001 - artifacts are a report: the trained model is what counts
        get_run_logger().warning("could not publish the training artifacts of %s: %s", out, error)


def summarize(out: Path) -> dict[str, Any]:
    """The last step record of `<out>/log.jsonl` (a torn last line skipped) and where the trained model was saved."""
    from flows.artifacts import read_log

    records = read_log(out)
    last = records[-1] if records else {}
    return {"steps": last.get("step", 0), "loss": last.get("loss"), "model_dir": str(out / "model")}
