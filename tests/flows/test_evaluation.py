"""The `evaluate_checkpoint` flow end to end (Prefect test harness): tiny model, stub judge, synthetic files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agents.backends.stub_server import StubOpenAIServer
from agents.bench.synthetic import make_synthetic_bench
from engine.errors import ConfigError
from flows.evaluation import evaluate_checkpoint, find_checkpoints


def test_find_checkpoints(tmp_path: Path) -> None:
    for name in ("step-200", "step-100"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text("{}")
    (tmp_path / "logs").mkdir()
    assert [p.name for p in find_checkpoints(tmp_path)] == ["step-100", "step-200"]
    assert find_checkpoints(tmp_path / "step-100") == [tmp_path / "step-100"]
    with pytest.raises(ConfigError):
        find_checkpoints(tmp_path / "absent")
    runs = tmp_path / "runs"
    for run in ("s25", "s3"):  # what train-stage writes: <out>/model/
        (runs / run / "model").mkdir(parents=True)
        (runs / run / "model" / "config.json").write_text("{}")
    assert find_checkpoints(runs) == [runs / "s25" / "model", runs / "s3" / "model"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no model to evaluate"):
        find_checkpoints(tmp_path / "empty")


def test_flow_evaluates_each_checkpoint_and_resumes(tmp_path: Path, prefect_server: str) -> None:
    from model.inference import save_tiny_model

    save_tiny_model(tmp_path / "checkpoints" / "step-1", seed=0)
    data = tmp_path / "bench"
    bench_q = make_synthetic_bench(data, kind="q", num_items=1, seed=7, num_frames=12)
    bench_d = make_synthetic_bench(data, kind="d", num_items=1, seed=8, num_frames=12)
    reply = ("1. Subject Correspondence: 2\n2. Appearance Description: 2\n3. Temporal Description: 1\n"
             "4. Hallucination Detection: 3")
    prompt = tmp_path / "system.txt"
    prompt.write_text("A judge prompt the test wrote.\n")
    params = {"model_dir": str(tmp_path / "checkpoints"), "out": str(tmp_path / "eval"), "bench_q": str(bench_q),
              "bench_d": str(bench_d), "judge_model": "judge-stub", "modes": ["single"],
              "max_new_tokens": 3, "judge_prompt": str(prompt), "protocol": "paper"}
    with StubOpenAIServer(responder=lambda r: reply) as judge:
        first = evaluate_checkpoint(**params, judge_url=judge.base_url)
        second = evaluate_checkpoint(**params, judge_url=judge.base_url)
        assert judge.request_count == 1  # the second run judged nothing again
    assert [(r["bench"], r["mode"], r["predicted"]) for r in first] == [("q", "single", 1), ("d", "single", 1)]
    assert [(r["predicted"], r["resumed"]) for r in second] == [(0, 1), (0, 1)]
    report = json.loads((tmp_path / "eval" / "step-1" / "d-single.report.json").read_text())
    assert report["score"]["average"] == pytest.approx(2.0)
    assert (tmp_path / "eval" / "step-1" / "q-single.report.md").is_file()
    assert first[1]["score"] == pytest.approx(2.0) and first[0]["score"] is not None


def test_the_flow_publishes_a_scores_table(tmp_path: Path, prefect_server: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from model.inference import save_tiny_model

    save_tiny_model(tmp_path / "runs" / "s25" / "model", seed=0)  # what train-stage writes
    bench_q = make_synthetic_bench(tmp_path / "bench", kind="q", num_items=1, seed=7, num_frames=12)
    results = evaluate_checkpoint(model_dir=str(tmp_path / "runs"), out=str(tmp_path / "eval"), bench_q=str(bench_q),
                                  modes=["single"], max_new_tokens=2)
    with get_client(sync_client=True) as client:
        (artifact,) = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["evaluate-runs-scores"])))
    assert artifact.type == "markdown" and f"Evaluation of {tmp_path / 'runs'}" in artifact.data
    assert f"| s25 | Bench-Q | single | {results[0]['score']:.2f} % | 1 | 0 |" in artifact.data
