"""One benchmark job, end to end: read, run, score, report; and re-scoring of existing prediction files.

`run_bench(job, load_model=...)` is what `videorefer bench q|d` and the `evaluate_checkpoint` flow both call: read
the benchmark file (bad entries are reported, not fatal), run our model (`job.model_dir`, loaded by the
`load_model` callable the caller hands in, so this package never imports model code) or a VLM behind an
OpenAI-compatible URL (set-of-marks frames), score (Bench-Q: answer letters over EVERY entry of the file; Bench-D:
the LLM judge with the release's prompt, when a judge URL is given) under the chosen protocol
(`agents.bench.protocol`), and write into `job.out`:
- `<kind>-<mode>.predictions.jsonl`: our resumable store (protocol, model, frames, prompt in every record);
- `<kind>-<mode>.release.jsonl`: the same predictions in the release's format (Bench-Q: `video`, `Answer`,
  `pred`, `type`; Bench-D: `video`, `caption`, `pred`), which `eval_videorefer_bench_q.py` and
  `1.eval_gpt_new.py` read unchanged; entries without a usable reply carry `pred` "(no reply)" (the release's
  scorer would crash on an empty one) and a leading space is dropped, so its scorer prints our numbers;
- Bench-D with a judge: `<kind>-<mode>.judge-<judge>.jsonl` (every raw reply, resumable) and
  `<kind>-<mode>.release-judged.json` (the list `2.extract_re.py` and `3.analyze_score.py` read);
- `.rejects.jsonl`, `.report.md`, `.report.json` (protocol, model, frames, judge model and settings).
`score_predictions` re-scores a predictions file of ours or of the release's without re-running the model.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agents.bench.files import (
    BenchFile,
    PredictionStore,
    read_bench_d,
    read_bench_q,
    write_json_atomic,
    write_rejects,
    write_text_atomic,
)
from agents.bench.protocol import get_protocol
from engine.errors import ConfigError

NO_REPLY = "(no reply)"  # what the release-format file says for an entry without a usable reply


@dataclass(frozen=True, slots=True, kw_only=True)
class BenchJob:
    """One benchmark run: which file, which runner, which protocol, where results go."""

    kind: str  # "q" or "d"
    data: Path
    out: Path
    protocol: str = "release"
    data_root: Path | None = None
    mode: str = "single"
    limit: int | None = None
    model_dir: Path | None = None
    server_url: str | None = None
    server_model: str | None = None
    judge_url: str | None = None
    judge_model: str = "gpt-4o"
    judge_prompt: Path | None = None  # the release's system.txt; None: the cached download
    judge_prompt_sha256: str | None = None  # None: the release's digest (tests pin their own file)
    concurrency: int = 8
    api_key_env: str = "OPENAI_API_KEY"
    num_frames: int | None = None  # None: the protocol's (8 release, 16 paper; 16 set-of-marks frames)
    max_new_tokens: int | None = None  # None: the protocol's (mm_infer's 2048; 128 for a VLM)
    device: str | None = None  # our model's device; None: cuda when available, else cpu

    @property
    def stem(self) -> str:
        return f"{self.kind}-{self.mode}"

    @property
    def runner_name(self) -> str:
        """Our model: its folder name and a digest of its files (every training run's folder is called `model`,
        so the path alone cannot tell two models apart); a VLM: the served model name."""
        if self.model_dir is not None:
            return f"{self.model_dir.resolve().name}@{model_fingerprint(self.model_dir)[:16]}"
        return str(self.server_model)


@dataclass(frozen=True, slots=True, kw_only=True)
class BenchResult:
    report_md: Path
    report_json: Path
    predicted: int
    skipped: int
    rejected: int
    headline: str


def model_fingerprint(model_dir: str | Path, *, sample_bytes: int = 8 * 2**20) -> str:
    """A digest of a saved model folder: its configs in full, and each weight file's name, size, first and last
    `sample_bytes` (two folders of different weights differ there; hashing 16 GB of weights would take minutes)."""
    import hashlib

    folder = Path(model_dir)
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.iterdir() if p.is_file() and p.name != "README.md"):  # card: not weights
        digest.update(path.name.encode() + b"\0")
        size = path.stat().st_size
        digest.update(str(size).encode() + b"\0")
        with path.open("rb") as handle:
            if path.suffix in (".safetensors", ".bin", ".pt") and size > 2 * sample_bytes:
                digest.update(handle.read(sample_bytes))
                handle.seek(size - sample_bytes)
            digest.update(handle.read())
    return digest.hexdigest()


def check_job(job: BenchJob) -> None:
    """Config errors before any work: kinds, modes, one runner, paths."""
    if job.kind not in ("q", "d"):
        raise ConfigError(f"unknown benchmark kind {job.kind!r}")
    get_protocol(job.protocol)
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


def run_bench(job: BenchJob, *, load_model: Callable[[str, str | None], Any] | None = None) -> BenchResult:
    """Run, score and report one benchmark job (see the module docstring). Errors: ConfigError, backend errors.

    `load_model(model_dir, device)` returns the pipeline our model runs through (`model.inference`'s).
    """
    check_job(job)
    protocol = get_protocol(job.protocol)
    judge_prompt = _judge_prompt(job) if job.kind == "d" and job.judge_url else None  # fail before any model work
    started = time.perf_counter()
    bench = (read_bench_q if job.kind == "q" else read_bench_d)(job.data, job.data_root)
    entry_ids = bench.entry_ids(job.limit)
    wanted = set(entry_ids)
    job.out.mkdir(parents=True, exist_ok=True)
    summary, identity = _predict(job, bench, load_model)
    rejects = [r for r in (*bench.rejects, *summary.rejects) if r.item_id in wanted]
    write_rejects(job.out / f"{job.stem}.rejects.jsonl", rejects)
    with PredictionStore(job.out / f"{job.stem}.predictions.jsonl") as store:
        predictions = [record for record in store if record["id"] in wanted]
    run: dict[str, Any] = {
        "protocol": protocol.name, "data": str(job.data), "data_root": str(bench.data_root),
        "runner": identity["runner"], "model": job.runner_name, "mode": job.mode,
        "model_dir": str(job.model_dir.resolve()) if job.model_dir is not None else None,
        "frames": identity["num_frames"], "prompt": identity["prompt"], "max_new_tokens": identity.get(
            "max_new_tokens"), "predicted_now": summary.predicted, "resumed": summary.skipped,
        "entries": len(entry_ids),
    }
    if job.server_url is not None:  # what the VLM cost, over the predictions reported
        run["vlm_prompt_tokens"] = sum(int(r.get("prompt_tokens") or 0) for r in predictions)
        run["vlm_completion_tokens"] = sum(int(r.get("completion_tokens") or 0) for r in predictions)
    failed = _failed_entries(bench, rejects, {str(r["id"]) for r in predictions})
    write_release_predictions(job.out / f"{job.stem}.release.jsonl", bench.kind, predictions, failed)
    if job.kind == "q":
        from agents.bench.q_scoring import score_q
        from agents.bench.report import q_report

        score = score_q(predictions, failed)
        run["seconds"] = round(time.perf_counter() - started, 2)
        markdown, data = q_report(score, model=job.runner_name, mode=job.mode, items=len(entry_ids),
                                  rejects=rejects, run=run)
        headline = (f"Bench-Q {job.mode} ({protocol.name} protocol): {100 * score.overall.accuracy:.1f}% over "
                    f"{score.overall.total} questions")
    else:
        from agents.bench.report import d_report

        d_score = _judge(job, predictions, wanted, run, judge_prompt) if judge_prompt is not None else None
        run["seconds"] = round(time.perf_counter() - started, 2)
        markdown, data = d_report(d_score, model=job.runner_name, mode=job.mode, items=len(entry_ids),
                                  predicted=len(predictions), rejects=rejects, run=run)
        headline = (f"Bench-D {job.mode} ({protocol.name} protocol): avg {_fmt(d_score.average)} over "
                    f"{d_score.judged} judged" if d_score
                    else f"Bench-D {job.mode}: {len(predictions)} descriptions (not judged)")
    from agents.bench.report import write_report

    md_path, json_path = write_report(job.out, f"{job.stem}.report", markdown, data)
    return BenchResult(report_md=md_path, report_json=json_path, predicted=summary.predicted,
                       skipped=summary.skipped, rejected=len(rejects), headline=headline)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _failed_entries(bench: BenchFile, rejects: Sequence[Any], answered: set[str]) -> list[Any]:
    """Bench-Q entries without a prediction (unreadable or not runnable), each with its type and reason."""
    from agents.bench.q_scoring import Failed

    if bench.kind != "q":
        return []
    types = {item.item_id: item.qa_type for item in bench.items}
    out: dict[str, Failed] = {}
    for reject in rejects:
        if reject.item_id in answered or reject.item_id in out:
            continue
        qa_type = types.get(reject.item_id) or bench.reject_types.get(reject.item_id) or "unknown"
        out[reject.item_id] = Failed(item_id=reject.item_id, qa_type=qa_type, reason=str(reject.reason))
    return list(out.values())


def _predict(job: BenchJob, bench: BenchFile, load_model: Callable[[str, str | None], Any] | None) -> tuple[Any, dict]:
    protocol = get_protocol(job.protocol)
    path = job.out / f"{job.stem}.predictions.jsonl"
    if job.model_dir is not None:
        from agents.bench.model_runner import ModelBenchSettings, run_identity, run_model_bench

        if job.num_frames is not None:
            from dataclasses import replace

            protocol = replace(protocol, num_frames=job.num_frames)
        settings = ModelBenchSettings(mode=job.mode, protocol=protocol, max_new_tokens=job.max_new_tokens)  # type: ignore[arg-type]
        identity = run_identity(job.runner_name, settings)
        with PredictionStore(path, expect=identity) as store:
            pending = any(item.item_id not in store for item in bench.items[: job.limit])
            if pending and load_model is None:
                raise ConfigError("running our model needs a model loader")
            pipeline = load_model(str(job.model_dir.resolve()), job.device) if pending else None
            return run_model_bench(pipeline, bench, store, settings, limit=job.limit), identity

    from agents.backends.openai_chat import OpenAIChatBackend
    from agents.bench.vlm_runner import VlmSettings, run_identity, run_vlm_bench
    from engine.config import OpenAIChatConfig

    tokens = {} if job.max_new_tokens is None else {"max_tokens": job.max_new_tokens}
    settings = VlmSettings(mode=job.mode, protocol=protocol, num_frames=job.num_frames,  # type: ignore[arg-type]
                           concurrency=job.concurrency, **tokens)
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
        return asyncio.run(go()), identity


def _judge_prompt(job: BenchJob) -> Any:
    from agents.bench.protocol import JUDGE_PROMPT_SHA256, load_judge_prompt

    return load_judge_prompt(job.judge_prompt, get_protocol(job.protocol),
                             expected_sha256=job.judge_prompt_sha256 or JUDGE_PROMPT_SHA256)


def _judge(job: BenchJob, predictions: list[dict[str, Any]], wanted: set[str], run: dict[str, Any],
           prompt: Any) -> Any:
    from agents.backends.openai_chat import OpenAIChatBackend
    from agents.bench.judge import JudgeSettings, judge_predictions, judge_prompt_version, score_d
    from engine.config import OpenAIChatConfig

    protocol = get_protocol(job.protocol)
    settings = JudgeSettings(model=job.judge_model, prompt=prompt, temperature=protocol.judge_temperature,
                             top_p=protocol.judge_top_p, max_tokens=protocol.judge_max_tokens,
                             concurrency=job.concurrency)
    backend = OpenAIChatBackend(OpenAIChatConfig(
        base_url=str(job.judge_url), model=job.judge_model, api_key_env=job.api_key_env,
        max_in_flight=job.concurrency, temperature=settings.temperature, structured_output="none",
    ))
    identity = {"judge_model": job.judge_model, "judge_prompt": judge_prompt_version(prompt),
                "judge_sampling": f"t={settings.temperature},top_p={settings.top_p},max={settings.max_tokens}"}

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
    write_release_judged(job.out / f"{job.stem}.release-judged.json", predictions, records)
    run.update({"judge": job.judge_model, "judge_prompt": identity["judge_prompt"],
                "judge_prompt_sha256": prompt.sha256, "judge_prompt_is_release": prompt.is_release,
                "judge_prompt_source": prompt.source, "judge_sampling": identity["judge_sampling"],
                "judge_failed": len(summary.failed)})
    return score_d(records)


# ---------------------------------------------------------------- the release's file formats


def write_release_predictions(path: Path, kind: str, predictions: Iterable[Mapping[str, Any]],
                              failed: Iterable[Any] = ()) -> Path:
    """Predictions as the release's inference scripts write them (JSONL), in a form its scorers read unchanged."""
    lines = []
    for record in predictions:
        reply = str(record.get("pred") or "").lstrip() or NO_REPLY
        if kind == "q":
            lines.append({"id": record["id"], "video": record.get("video"), "Answer": record.get("answer"),
                          "pred": reply, "type": record.get("type")})
        else:
            lines.append({"id": record["id"], "video": record.get("video"), "caption": record.get("caption"),
                          "pred": reply})
    for failure in failed:
        lines.append({"id": failure.item_id, "video": None, "Answer": "", "pred": NO_REPLY, "type": failure.qa_type,
                      "reason": failure.reason})
    write_text_atomic(path, "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines))
    return path


def write_release_judged(path: Path, predictions: Sequence[Mapping[str, Any]],
                         judge_records: Sequence[Mapping[str, Any]]) -> Path:
    """The list `1.eval_gpt_new.py` writes (each prediction with its judge reply as `gpt`), for `2.extract_re.py`."""
    by_id = {str(record["id"]): record for record in judge_records}
    out = []
    for record in predictions:
        judged = by_id.get(str(record["id"]))
        entry = {"video": record.get("video"), "caption": record.get("caption"), "pred": record.get("pred")}
        if judged is not None and judged.get("replies"):
            entry["gpt"] = judged["replies"][-1]
        out.append(entry)
    write_json_atomic(path, out)
    return path


@dataclass(frozen=True, slots=True, kw_only=True)
class Rescored:
    kind: str
    source_format: str  # "ours" or "release"
    score: Any
    text: str  # the release's printout


def score_predictions(kind: str, path: str | Path, *, bench: BenchFile | None = None) -> Rescored:
    """Score an existing predictions file without running anything.

    Bench-Q: our `predictions.jsonl` or the release's JSONL (`Answer`, `pred`, `type`); with `bench`, entries of
    the benchmark file missing from the predictions are counted wrong. Bench-D: our judge JSONL, or the release's
    judged list (`gpt` replies, or the dimension keys `2.extract_re.py` added).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"predictions file not found: {path}")
    records = _read_records(path)
    if kind == "q":
        from agents.bench.q_scoring import Failed, score_q

        source = "release" if any("Answer" in r and "answer_letter" not in r for r in records) else "ours"
        failed: list[Failed] = []
        if bench is not None:
            seen = {str(r.get("id")) for r in records}
            types = {item.item_id: item.qa_type for item in bench.items} | dict(bench.reject_types)
            failed = [Failed(item_id=i, qa_type=types.get(i) or "unknown", reason="no prediction")
                      for i in bench.entry_ids() if i not in seen]
        score = score_q(records, failed)
        return Rescored(kind=kind, source_format=source, score=score, text=score.release_text())
    if kind == "d":
        from agents.bench.judge import DIMENSIONS, RELEASE_NAMES, parse_judge_scores, score_d
        from engine.errors import InvalidReplyError

        judge_records: list[dict[str, Any]] = []
        source = "ours"
        for number, record in enumerate(records):
            if "scores" in record:
                judge_records.append(record)
                continue
            source = "release"
            scores: dict[str, float] | None = {dim: float(record[RELEASE_NAMES[dim]]) for dim in DIMENSIONS
                                               if RELEASE_NAMES[dim] in record} or None
            if scores is None and isinstance(record.get("gpt"), str):
                try:
                    scores = parse_judge_scores(record["gpt"])
                except InvalidReplyError:
                    scores = None
            judge_records.append({"id": record.get("id", number), "scores": scores})
        d_score = score_d(judge_records)
        return Rescored(kind=kind, source_format=source, score=d_score, text=d_score.release_text())
    raise ConfigError(f"unknown benchmark kind {kind!r}")


def _read_records(path: Path) -> list[dict[str, Any]]:
    text = path.read_text(encoding="utf-8")
    stripped = text.lstrip()
    try:
        if stripped.startswith("["):
            data = json.loads(text)
            return [dict(r) for r in data if isinstance(r, Mapping)]
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is neither a JSON list nor JSONL: {exc}") from exc

