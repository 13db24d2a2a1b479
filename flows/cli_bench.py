"""`videorefer bench q|d`: run a model or a VLM server on VideoRefer-Bench-Q / -D, score it, write the report.

`run_bench` is the one job behind both commands and the `evaluate_checkpoint` flow: read the benchmark file
(bad entries are reported, not fatal), run our model (`--model DIR`, in process) or any VLM behind an
OpenAI-compatible URL (`--server URL --server-model NAME`, set-of-marks frames), score (Bench-Q: answer letters;
Bench-D: the LLM judge at `--judge-url`, if given), and write into `--out`:
`<kind>-<mode>.predictions.jsonl`, `.judge-<judge model>.jsonl` (D), `.rejects.jsonl`, `.report.md` and
`.report.json`.
Re-running the same command resumes: finished predictions and judgements are not redone.
Heavy imports (torch, openai, the model) happen inside the functions, so `videorefer --help` stays fast.
"""

from __future__ import annotations

import asyncio
import functools
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer

bench_app = typer.Typer(
    name="bench", help="VideoRefer-Bench: -Q (multiple choice) and -D (LLM-judged descriptions).",
    no_args_is_help=True, add_completion=False,
)


@dataclass(frozen=True, slots=True, kw_only=True)
class BenchJob:
    """One benchmark run: which file, which runner, where results go."""

    kind: str  # "q" or "d"
    data: Path
    out: Path
    data_root: Path | None = None
    mode: str = "single"
    limit: int | None = None
    model_dir: Path | None = None
    server_url: str | None = None
    server_model: str | None = None
    judge_url: str | None = None
    judge_model: str = "gpt-4o"
    concurrency: int = 8
    api_key_env: str = "OPENAI_API_KEY"
    num_frames: int = 16
    max_new_tokens: int | None = None  # None: 512 for descriptions, 16 for answer letters
    device: str | None = None  # our model's device; None: cuda when available, else cpu

    @property
    def stem(self) -> str:
        return f"{self.kind}-{self.mode}"

    @property
    def runner_name(self) -> str:
        if self.model_dir is not None:
            return self.model_dir.resolve().name
        return str(self.server_model)


@dataclass(frozen=True, slots=True, kw_only=True)
class BenchResult:
    report_md: Path
    report_json: Path
    predicted: int
    skipped: int
    rejected: int
    headline: str


def run_bench(job: BenchJob) -> BenchResult:
    """Run, score and report one benchmark job (see the module docstring). Errors: ConfigError, backend errors."""
    from agents.bench.report import d_report, q_report, write_report
    from engine.errors import ConfigError
    from storage.bench_files import read_bench_d, read_bench_q, write_rejects

    if job.kind not in ("q", "d"):
        raise ConfigError(f"unknown benchmark kind {job.kind!r}")
    if job.mode not in ("single", "multi"):
        raise ConfigError(f"--mode must be single or multi, got {job.mode!r}")
    if (job.model_dir is None) == (job.server_url is None):
        raise ConfigError("give exactly one of --model DIR or --server URL (with --server-model NAME)")
    if job.server_url is not None and not job.server_model:
        raise ConfigError("--server needs --server-model NAME (the model name the server serves)")
    if job.model_dir is not None and not job.model_dir.is_dir():
        raise ConfigError(f"--model is not a directory: {job.model_dir}")
    if job.limit is not None and job.limit < 0:
        raise ConfigError("--limit must be zero or more")
    started = time.perf_counter()
    bench = (read_bench_q if job.kind == "q" else read_bench_d)(job.data, job.data_root)
    selected = bench.items[: job.limit] if job.limit is not None else bench.items
    wanted = {item.item_id for item in selected}
    job.out.mkdir(parents=True, exist_ok=True)
    summary, prompt_version = _predict(job, bench)
    rejects = [*bench.rejects, *summary.rejects]
    write_rejects(job.out / f"{job.stem}.rejects.jsonl", rejects)

    from storage.bench_files import PredictionStore

    with PredictionStore(job.out / f"{job.stem}.predictions.jsonl") as store:
        predictions = [record for record in store if record["id"] in wanted]
    run: dict[str, Any] = {
        "data": str(job.data), "data_root": str(bench.data_root), "runner": "model" if job.model_dir else "vlm",
        "prompt": prompt_version, "frames": job.num_frames, "predicted_now": summary.predicted,
        "resumed": summary.skipped,
    }
    if job.server_url is not None:  # what the VLM cost, over the predictions reported
        run["vlm_prompt_tokens"] = sum(int(r.get("prompt_tokens") or 0) for r in predictions)
        run["vlm_completion_tokens"] = sum(int(r.get("completion_tokens") or 0) for r in predictions)
    if job.kind == "q":
        from agents.bench.q_scoring import score_q

        score = score_q(predictions)
        run["seconds"] = round(time.perf_counter() - started, 2)
        markdown, data = q_report(score, model=job.runner_name, mode=job.mode, items=len(selected),
                                  rejects=rejects, run=run)
        headline = f"Bench-Q {job.mode}: {100 * score.overall.accuracy:.1f}% over {score.overall.total} questions"
    else:
        d_score = _judge(job, predictions, wanted, run) if job.judge_url else None
        run["seconds"] = round(time.perf_counter() - started, 2)
        markdown, data = d_report(d_score, model=job.runner_name, mode=job.mode, items=len(selected),
                                  predicted=len(predictions), rejects=rejects, run=run)
        headline = (f"Bench-D {job.mode}: avg {d_score.average:.2f} over {d_score.judged} judged"
                    if d_score else f"Bench-D {job.mode}: {len(predictions)} descriptions (not judged)")
    md_path, json_path = write_report(job.out, f"{job.stem}.report", markdown, data)
    return BenchResult(report_md=md_path, report_json=json_path, predicted=summary.predicted,
                       skipped=summary.skipped, rejected=len(rejects), headline=headline)


def _predict(job: BenchJob, bench: Any) -> tuple[Any, str]:
    from storage.bench_files import PredictionStore

    path = job.out / f"{job.stem}.predictions.jsonl"
    if job.model_dir is not None:
        from model.bench_runner import ModelBenchSettings, run_identity, run_model_bench

        tokens = {} if job.max_new_tokens is None else {"max_new_tokens_d": job.max_new_tokens,
                                                        "max_new_tokens_q": job.max_new_tokens}
        settings = ModelBenchSettings(mode=job.mode, **tokens)  # type: ignore[arg-type]
        identity = run_identity(job.runner_name, settings)
        with PredictionStore(path, expect=identity) as store:
            pending = any(item.item_id not in store for item in bench.items[: job.limit])
            pipeline = load_pipeline(str(job.model_dir.resolve()), job.device) if pending else None
            return run_model_bench(pipeline, bench, store, settings, limit=job.limit), identity["prompt"]

    from agents.backends.openai_chat import OpenAIChatBackend
    from agents.bench.vlm_runner import VlmSettings, run_identity, run_vlm_bench
    from engine.config import OpenAIChatConfig

    tokens = {} if job.max_new_tokens is None else {"max_tokens": job.max_new_tokens}
    settings = VlmSettings(mode=job.mode, num_frames=job.num_frames, concurrency=job.concurrency,  # type: ignore[arg-type]
                           **tokens)
    identity = run_identity(str(job.server_model), job.kind, settings)
    backend = OpenAIChatBackend(OpenAIChatConfig(
        base_url=str(job.server_url), model=str(job.server_model), api_key_env=job.api_key_env,
        max_in_flight=job.concurrency, temperature=0.0, structured_output="none",
    ))

    async def go() -> Any:
        try:
            return await run_vlm_bench(backend, bench, store, settings, limit=job.limit)
        finally:
            await backend.aclose()

    with PredictionStore(path, expect=identity) as store:
        return asyncio.run(go()), identity["prompt"]


def _judge(job: BenchJob, predictions: list[dict[str, Any]], wanted: set[str], run: dict[str, Any]) -> Any:
    from agents.backends.openai_chat import OpenAIChatBackend
    from agents.bench.judge import JudgeSettings, judge_predictions, judge_prompt_version, score_d
    from engine.config import OpenAIChatConfig
    from storage.bench_files import PredictionStore

    settings = JudgeSettings(model=job.judge_model, concurrency=job.concurrency)
    backend = OpenAIChatBackend(OpenAIChatConfig(
        base_url=str(job.judge_url), model=job.judge_model, api_key_env=job.api_key_env,
        max_in_flight=job.concurrency, temperature=settings.temperature,
    ))
    identity = {"judge_model": job.judge_model, "judge_prompt": judge_prompt_version()}

    async def go() -> Any:
        try:
            return await judge_predictions(backend, predictions, store, settings)
        finally:
            await backend.aclose()

    # One judge file per judge model: judging again with another judge keeps both audit logs.
    judge_file = job.out / f"{job.stem}.judge-{re.sub(r'[^A-Za-z0-9._-]+', '_', job.judge_model)}.jsonl"
    with PredictionStore(judge_file, expect=identity) as store:
        summary = asyncio.run(go())
        records = [record for record in store if record["id"] in wanted]
    run.update({"judge": job.judge_model, "judge_prompt": identity["judge_prompt"],
                "judge_failed": len(summary.failed)})
    return score_d(records)


@functools.lru_cache(maxsize=1)
def load_pipeline(model_dir: str, device: str | None = None) -> Any:
    """Our model, loaded once per process (a flow evaluating several benchmarks reuses it)."""
    import torch

    from model.inference import VideoReferPipeline

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return VideoReferPipeline.from_pretrained(model_dir, device=device)


# ---------------------------------------------------------------- commands

_DATA = typer.Option(..., "--data", help="Benchmark JSON file as published (VideoRefer-Bench-Q.json / -D.json).")
_DATA_ROOT = typer.Option(None, "--data-root", help="Folder the entries' `video` paths are relative to "
                                                    "(default: the JSON file's folder).")
_MODEL = typer.Option(None, "--model", help="Our model: a directory saved by save_pretrained.")
_SERVER = typer.Option(None, "--server", help="OpenAI-compatible base URL of a VLM, e.g. http://127.0.0.1:8000/v1.")
_SERVER_MODEL = typer.Option(None, "--server-model", help="Model name the server serves.")
_OUT = typer.Option(..., "--out", help="Output folder (predictions, judge log, rejects, report).")
_MODE = typer.Option("single", "--mode", help="single: mask on one frame; multi: masks on all annotated frames.")
_LIMIT = typer.Option(None, "--limit", help="Only the first N entries.")
_CONCURRENCY = typer.Option(8, "--concurrency", help="Requests in flight to the VLM server / judge.")
_KEY_ENV = typer.Option("OPENAI_API_KEY", "--api-key-env", help="Environment variable holding the API key.")
_DEVICE = typer.Option(None, "--device", help="Device of --model (default: cuda when available, else cpu).")
_MAX_NEW = typer.Option(None, "--max-new-tokens", help="Reply length limit (default: 512 for -D, 16 for -Q).")


@bench_app.command("q")
def bench_q(
    data: Path = _DATA, data_root: Path | None = _DATA_ROOT, model: Path | None = _MODEL,
    server: str | None = _SERVER, server_model: str | None = _SERVER_MODEL, out: Path = _OUT,
    mode: str = _MODE, limit: int | None = _LIMIT, concurrency: int = _CONCURRENCY, api_key_env: str = _KEY_ENV,
    max_new_tokens: int | None = _MAX_NEW, device: str | None = _DEVICE,
) -> None:
    """VideoRefer-Bench-Q: multiple-choice accuracy per question type and overall."""
    _run_command(BenchJob(kind="q", data=data, data_root=data_root, model_dir=model, server_url=server,
                          server_model=server_model, out=out, mode=mode, limit=limit, concurrency=concurrency,
                          api_key_env=api_key_env, max_new_tokens=max_new_tokens, device=device))


@bench_app.command("d")
def bench_d(
    data: Path = _DATA, data_root: Path | None = _DATA_ROOT, model: Path | None = _MODEL,
    server: str | None = _SERVER, server_model: str | None = _SERVER_MODEL, out: Path = _OUT,
    mode: str = _MODE, limit: int | None = _LIMIT,
    judge_url: str | None = typer.Option(None, "--judge-url", help="OpenAI-compatible base URL of the judge LLM; "
                                                                   "without it descriptions are not scored."),
    judge_model: str = typer.Option("gpt-4o", "--judge-model", help="Judge model name."),
    concurrency: int = _CONCURRENCY, api_key_env: str = _KEY_ENV, max_new_tokens: int | None = _MAX_NEW,
    device: str | None = _DEVICE,
) -> None:
    """VideoRefer-Bench-D: descriptions scored by an LLM judge (SC, AD, TD, HD, average)."""
    _run_command(BenchJob(kind="d", data=data, data_root=data_root, model_dir=model, server_url=server,
                          server_model=server_model, out=out, mode=mode, limit=limit, judge_url=judge_url,
                          judge_model=judge_model, concurrency=concurrency, api_key_env=api_key_env,
                          max_new_tokens=max_new_tokens, device=device))


def _run_command(job: BenchJob) -> None:
    from engine.errors import BackendUnavailableError, ConfigError

    try:
        result = run_bench(job)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from None
    except BackendUnavailableError as exc:
        typer.echo(f"error: {exc}\nfinished items are kept in {job.out}; run the same command again to resume",
                   err=True)
        raise typer.Exit(code=1) from None
    typer.echo(result.headline)
    typer.echo(f"predicted {result.predicted}, resumed {result.skipped}, not evaluated {result.rejected}")
    typer.echo(f"report: {result.report_md}")


def register(app: typer.Typer) -> None:
    """Add `videorefer bench q|d` to the main app."""
    app.add_typer(bench_app, name="bench")
