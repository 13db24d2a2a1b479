"""`videorefer bench q|d|score`: run a model or a VLM server on VideoRefer-Bench, score it, write the report.

The commands are thin: `agents.bench.job.run_bench` does the work (the `evaluate_checkpoint` flow calls the same
function), with our model loaded by `model.inference.cached_pipeline`. `--protocol release` (default) reproduces
the release's evaluation (8 frames, its questions, its judge); `--protocol paper` uses 16 frames. `bench score`
re-scores an existing predictions file (ours or the release's) without running anything. Heavy imports happen
inside the commands, so `videorefer --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path

import typer

bench_app = typer.Typer(
    name="bench", help="VideoRefer-Bench: -Q (multiple choice) and -D (LLM-judged descriptions).",
    no_args_is_help=True, add_completion=False,
)

_DATA = typer.Option(..., "--data", help="Benchmark JSON file as published (VideoRefer-Bench-Q.json / -D.json).")
_DATA_ROOT = typer.Option(None, "--data-root", help="Folder the entries' `video` paths are relative to "
                                                    "(default: the JSON file's folder).")
_MODEL = typer.Option(None, "--model", help="Our model: a directory saved by save_pretrained.")
_SERVER = typer.Option(None, "--server", help="OpenAI-compatible base URL of a VLM, e.g. http://127.0.0.1:8000/v1.")
_SERVER_MODEL = typer.Option(None, "--server-model", help="Model name the server serves.")
_OUT = typer.Option(..., "--out", help="Output folder (predictions, release-format files, judge log, report).")
_MODE = typer.Option("single", "--mode", help="single: mask on frame_idx; multi: masks on all annotated frames.")
_PROTOCOL = typer.Option("release", "--protocol", help="release (8 frames, the release's scripts) or paper (16).")
_FRAMES = typer.Option(None, "--num-frames", help="Override the protocol's frame count.")
_LIMIT = typer.Option(None, "--limit", help="Only the first N entries.")
_CONCURRENCY = typer.Option(8, "--concurrency", help="Requests in flight to the VLM server / judge.")
_KEY_ENV = typer.Option("OPENAI_API_KEY", "--api-key-env", help="Environment variable holding the API key.")
_DEVICE = typer.Option(None, "--device", help="Device of --model (default: cuda when available, else cpu).")
_MAX_NEW = typer.Option(None, "--max-new-tokens", help="Reply length limit (default: 2048 as mm_infer; 128 VLM).")


@bench_app.command("q")
def bench_q(
    data: Path = _DATA, data_root: Path | None = _DATA_ROOT, model: Path | None = _MODEL,
    server: str | None = _SERVER, server_model: str | None = _SERVER_MODEL, out: Path = _OUT,
    mode: str = _MODE, protocol: str = _PROTOCOL, num_frames: int | None = _FRAMES, limit: int | None = _LIMIT,
    concurrency: int = _CONCURRENCY, api_key_env: str = _KEY_ENV, max_new_tokens: int | None = _MAX_NEW,
    device: str | None = _DEVICE,
) -> None:
    """VideoRefer-Bench-Q: multiple-choice accuracy per question type and overall, over every entry."""
    from agents.bench.job import BenchJob

    _run_command(BenchJob(kind="q", data=data, data_root=data_root, model_dir=model, server_url=server,
                          server_model=server_model, out=out, mode=mode, protocol=protocol, num_frames=num_frames,
                          limit=limit, concurrency=concurrency, api_key_env=api_key_env,
                          max_new_tokens=max_new_tokens, device=device))


@bench_app.command("d")
def bench_d(
    data: Path = _DATA, data_root: Path | None = _DATA_ROOT, model: Path | None = _MODEL,
    server: str | None = _SERVER, server_model: str | None = _SERVER_MODEL, out: Path = _OUT,
    mode: str = _MODE, protocol: str = _PROTOCOL, num_frames: int | None = _FRAMES, limit: int | None = _LIMIT,
    judge_url: str | None = typer.Option(None, "--judge-url", help="OpenAI-compatible base URL of the judge LLM; "
                                                                   "without it descriptions are not scored."),
    judge_model: str = typer.Option("gpt-4o", "--judge-model", help="Judge model name."),
    judge_prompt: Path | None = typer.Option(
        None, "--judge-prompt", help="The release's videorefer/eval/videorefer_bench_d/system.txt (default: "
                                     "downloaded once at the pinned commit into ~/.cache/videorefer)."),
    concurrency: int = _CONCURRENCY, api_key_env: str = _KEY_ENV, max_new_tokens: int | None = _MAX_NEW,
    device: str | None = _DEVICE,
) -> None:
    """VideoRefer-Bench-D: descriptions scored by an LLM judge (SC, AD, TD, HD, average)."""
    from agents.bench.job import BenchJob

    _run_command(BenchJob(kind="d", data=data, data_root=data_root, model_dir=model, server_url=server,
                          server_model=server_model, out=out, mode=mode, protocol=protocol, num_frames=num_frames,
                          limit=limit, judge_url=judge_url, judge_model=judge_model, judge_prompt=judge_prompt,
                          concurrency=concurrency, api_key_env=api_key_env, max_new_tokens=max_new_tokens,
                          device=device))


@bench_app.command("score")
def bench_score(
    kind: str = typer.Argument(..., help="q or d"),
    predictions: Path = typer.Option(..., "--predictions", help="Our predictions.jsonl / judge JSONL, or the "
                                                                "release's Bench-Q JSONL / judged Bench-D JSON."),
    data: Path | None = typer.Option(None, "--data", help="Bench-Q file: entries without a prediction count wrong."),
    data_root: Path | None = _DATA_ROOT,
) -> None:
    """Re-score an existing predictions file without running a model; prints the release's layout."""
    from agents.bench.files import read_bench_q
    from agents.bench.job import score_predictions
    from engine.errors import ConfigError

    try:
        bench = read_bench_q(data, data_root) if (data is not None and kind == "q") else None
        rescored = score_predictions(kind, predictions, bench=bench)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from None
    typer.echo(f"# {predictions} ({rescored.source_format} format)")
    typer.echo(rescored.text)


def _run_command(job) -> None:  # noqa: ANN001 - agents.bench.job.BenchJob, imported lazily
    from agents.bench.job import run_bench
    from engine.errors import BackendUnavailableError, ConfigError
    from model.inference import cached_pipeline

    try:
        result = run_bench(job, load_model=cached_pipeline)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from None
    except BackendUnavailableError as exc:
        typer.echo(f"error: {exc}\nfinished items are kept in {job.out}; run the same command again to resume",
                   err=True)
        raise typer.Exit(code=1) from None
    typer.echo(result.headline)
    typer.echo(f"predicted {result.predicted}, resumed {result.skipped}, could not run {result.rejected}")
    typer.echo(f"report: {result.report_md}")


def register(app: typer.Typer) -> None:
    """Add `videorefer bench q|d|score` to the main app."""
    app.add_typer(bench_app, name="bench")
