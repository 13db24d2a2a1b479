"""The `evaluate_checkpoint` Prefect flow: VideoRefer-Bench-Q and -D for a model checkpoint (or each new one).

`model_dir` is either one checkpoint (a folder with `config.json`, as `save_pretrained` writes) or a folder of
checkpoints; each is evaluated into `out/<checkpoint name>/`. One Prefect task per (checkpoint, benchmark, mode),
never per item: the items stream through `agents.bench.job.run_bench` (what `videorefer bench` runs), which
resumes from its prediction and
judge files, so a scheduled deployment re-run every hour only does the work of checkpoints (and items) that
are new. Tasks run one after another, since they share the one model in memory (and the one GPU). The flow
publishes a scores table (markdown artifact `evaluate-<model_dir name>-scores`: one row per checkpoint, benchmark
and mode; `flows.artifacts.scores_table`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, task

from agents.bench.job import BenchJob, run_bench
from flows.artifacts import publish_evaluation, report_score
from flows.runtime import run_name


def find_checkpoints(model_dir: str | Path) -> list[Path]:
    """The checkpoints to evaluate under `model_dir`, in name order: `model_dir` itself when it is one (a folder
    with `config.json`), else its sub-folders that are, else the `<run>/model` folders `train-stage` writes
    (a runs folder). Nothing to evaluate is a `ConfigError`, never a run that "completes" having done nothing."""
    from engine.errors import ConfigError

    root = Path(model_dir)
    if (root / "config.json").is_file():
        return [root]
    if not root.is_dir():
        raise ConfigError(f"model_dir is not a directory: {root}")
    found = sorted(child for child in root.iterdir() if (child / "config.json").is_file())
    if not found:
        found = sorted(child / "model" for child in root.iterdir() if (child / "model" / "config.json").is_file())
    if not found:
        raise ConfigError(f"no model to evaluate under {root}: no config.json in it, in its sub-folders, or in "
                          "their model/ folders (what train-stage writes)")
    return found


@task(name="bench", task_run_name="{kind}-{mode}-{checkpoint_name}")
def bench_task(
    *, kind: str, mode: str, checkpoint_name: str, checkpoint: str, data: str, data_root: str | None, out: str,
    judge_url: str | None, judge_model: str, judge_prompt: str | None, protocol: str, limit: int | None,
    max_new_tokens: int | None,
) -> dict[str, Any]:
    from model.inference import cached_pipeline

    job = BenchJob(
        kind=kind, mode=mode, data=Path(data), data_root=Path(data_root) if data_root else None,
        model_dir=Path(checkpoint), out=Path(out), judge_url=judge_url, judge_model=judge_model,
        judge_prompt=Path(judge_prompt) if judge_prompt else None, protocol=protocol, limit=limit,
        max_new_tokens=max_new_tokens,
    )
    result = run_bench(job, load_model=cached_pipeline)
    return {"checkpoint": checkpoint_name, "bench": kind, "mode": mode, "headline": result.headline,
            "score": report_score(result.report_json),
            "report": str(result.report_json), "predicted": result.predicted, "resumed": result.skipped,
            "rejected": result.rejected}


@flow(name="evaluate-checkpoint", log_prints=True, flow_run_name=run_name("evaluate", "model_dir"))
def evaluate_checkpoint(
    model_dir: str,
    out: str,
    bench_q: str | None = None,
    bench_d: str | None = None,
    data_root_q: str | None = None,
    data_root_d: str | None = None,
    judge_url: str | None = None,
    judge_model: str = "gpt-4o",
    judge_prompt: str | None = None,
    protocol: str = "release",
    modes: list[str] | None = None,
    limit: int | None = None,
    max_new_tokens: int | None = None,
) -> list[dict[str, Any]]:
    """Evaluate every checkpoint under `model_dir` on the given benchmark files, in each mode (default both)."""
    from engine.errors import ConfigError

    if not bench_q and not bench_d:
        raise ConfigError("evaluate_checkpoint needs bench_q and/or bench_d")
    benches = [(kind, path, root) for kind, path, root in (("q", bench_q, data_root_q), ("d", bench_d, data_root_d))
               if path]
    results = []
    for checkpoint in find_checkpoints(model_dir):
        for kind, path, root in benches:
            for mode in modes or ["single", "multi"]:
                name = checkpoint.parent.name if checkpoint.name == "model" else checkpoint.name
                results.append(bench_task(
                    kind=kind, mode=mode, checkpoint_name=name, checkpoint=str(checkpoint), data=path,
                    data_root=root, out=str(Path(out) / name), judge_url=judge_url,
                    judge_model=judge_model, judge_prompt=judge_prompt, protocol=protocol, limit=limit,
                    max_new_tokens=max_new_tokens,
                ))
                print(f"{name}: {results[-1]['headline']}")
    try:
        publish_evaluation(results, key=f"evaluate-{Path(model_dir).name}", title=f"Evaluation of {model_dir}")
    except Exception as error:  # noqa: BLE001 - the reports are on disk; the artifact is a view of them
        print(f"could not publish the scores artifact: {error}")
    return results


if __name__ == "__main__":
    evaluate_checkpoint.serve(name="evaluate-checkpoint")
