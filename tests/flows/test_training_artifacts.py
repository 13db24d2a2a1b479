"""Artifacts of training and evaluation runs: the content (plain functions, no Prefect) and the flow publishing it."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from flows.artifacts import (
    artifact_key,
    loss_curve_png,
    png_data_uri,
    read_log,
    report_score,
    scores_table,
    training_summary,
    write_loss_curve,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _write_run(out: Path, steps: int = 30) -> None:
    out.mkdir(parents=True, exist_ok=True)
    records = [{"step": s, "loss": 6.0 - 0.1 * s, "lr": 1e-3 * (1 - s / (steps + 1)), "grad_norm": 1.0 / s,
                "tokens_per_s": 100.0 + s, "bad_samples": 2 if s > 10 else 0} for s in range(1, steps + 1)]
    (out / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + "{broken\n")
    (out / "recipe.json").write_text(json.dumps({"name": "tiny_stage2", "trainable": ["object_encoder"],
                                                 "max_steps": steps}))


def test_the_loss_curve_is_a_png_of_the_log(tmp_path: Path) -> None:
    _write_run(tmp_path / "run")
    records = read_log(tmp_path / "run")
    assert [r["step"] for r in records] == list(range(1, 31))  # the broken line is skipped
    path = write_loss_curve(tmp_path / "run")
    assert path == tmp_path / "run" / "loss.png" and path.read_bytes().startswith(PNG_SIGNATURE)
    assert write_loss_curve(tmp_path / "run").read_bytes() == path.read_bytes()  # same log, same bytes
    assert loss_curve_png(records[:3]) != loss_curve_png(records)
    assert loss_curve_png([]) is None and loss_curve_png([{"step": 1, "loss": float("nan")}]) is None
    assert write_loss_curve(tmp_path / "empty") is None and not (tmp_path / "empty" / "loss.png").exists()
    uri = png_data_uri(path.read_bytes())
    assert uri.startswith("data:image/png;base64,")
    assert base64.b64decode(uri.split(",", 1)[1]) == path.read_bytes()


def test_the_training_summary_says_what_ran_and_how_it_went(tmp_path: Path) -> None:
    _write_run(tmp_path / "run")
    page = training_summary(tmp_path / "run")
    assert "| recipe | tiny_stage2 (trains object_encoder) |" in page
    assert "| steps | 30 of 30 |" in page
    assert "| last loss | 3.0000 |" in page and "| lowest loss | 3.0000 at step 30 |" in page
    assert "| bad samples | 2 |" in page and "loss.png" in page and str(tmp_path / "run" / "model") in page
    table = [line for line in page.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert len(table) == 20 and table[0].startswith("| 1 |") and table[-1].startswith("| 30 |")
    assert "no step logged" in training_summary(tmp_path / "nothing")


def test_the_scores_table_has_a_row_per_checkpoint_benchmark_and_mode(tmp_path: Path) -> None:
    (tmp_path / "q.json").write_text(json.dumps({"bench": "q", "accuracy_percent": {"overall": 61.25}}))
    (tmp_path / "d.json").write_text(json.dumps({"bench": "d", "score": {"average": 2.5}}))
    (tmp_path / "d0.json").write_text(json.dumps({"bench": "d", "score": None}))
    assert report_score(tmp_path / "q.json") == 61.25 and report_score(tmp_path / "d.json") == 2.5
    assert report_score(tmp_path / "d0.json") is None and report_score(tmp_path / "absent.json") is None
    results = [
        {"checkpoint": "s25", "bench": "q", "mode": "single", "score": 61.25, "predicted": 3, "resumed": 1,
         "rejected": 0, "report": "eval/s25/q-single.report.json"},
        {"checkpoint": "s3", "bench": "d", "mode": "multi", "score": None, "predicted": 2, "resumed": 0,
         "rejected": 1, "report": "eval/s3/d-multi.report.json"},
    ]
    table = scores_table(results, title="Evaluation of runs")
    assert table.startswith("# Evaluation of runs")
    assert "| s25 | Bench-Q | single | 61.25 % | 3 | 1 | 0 | `eval/s25/q-single.report.json` |" in table
    assert "| s3 | Bench-D | multi | n/a | 2 | 0 | 1 |" in table
    assert "Nothing was evaluated" in scores_table([])


def test_artifact_keys_are_what_prefect_accepts() -> None:
    assert artifact_key("train", "tiny_stage2", "S3 run.v2") == "train-tiny-stage2-s3-run-v2"
    assert artifact_key("evaluate", "/data/Runs/") == "evaluate-data-runs"
    assert len(artifact_key("x" * 300)) == 100 and artifact_key("???") == "run"


def _artifacts(key: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        return client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))


@pytest.mark.parametrize("exit_code", [0, 3])
def test_train_stage_publishes_the_summary_and_the_loss_curve(tmp_path: Path, prefect_server: str,
                                                              monkeypatch: pytest.MonkeyPatch, exit_code: int) -> None:
    import flows.training as training

    out = tmp_path / f"run{exit_code}"

    def fake_trainer(command, on_line=print, **_):  # stands in for torchrun: writes what the loop writes
        _write_run(out, steps=5)
        on_line('{"step": 5}\n')
        return exit_code

    monkeypatch.setattr(training, "run_streaming", fake_trainer)
    if exit_code:
        with pytest.raises(training.TrainingFailed):
            training.train_stage(recipe="tiny_stage2", data=["x/*.tar"], out=str(out))
    else:
        assert training.train_stage(recipe="tiny_stage2", data=["x/*.tar"], out=str(out))["steps"] == 5
    key = f"train-tiny-stage2-run{exit_code}"
    (summary,) = _artifacts(f"{key}-summary")
    assert summary.type == "markdown" and "| steps | 5 of 5 |" in summary.data
    (curve,) = _artifacts(f"{key}-loss")
    assert curve.type == "image"
    assert base64.b64decode(curve.data.split(",", 1)[1]) == (out / "loss.png").read_bytes()
