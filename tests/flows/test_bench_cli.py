"""`videorefer bench q|d` end to end: synthetic benchmark files, the stub server as VLM and as judge, reports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from agents.backends.stub_server import StubOpenAIServer
from agents.bench.synthetic import make_synthetic_bench
from flows import cli_bench


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    main = typer.Typer()
    main.command("noop")(lambda: None)  # a second command keeps `bench` a sub-command, as in the real app
    cli_bench.register(main)
    return main


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bench")
    make_synthetic_bench(root, kind="q", num_items=5, seed=3)
    make_synthetic_bench(root, kind="d", num_items=2, seed=4)
    return root


def judge_responder(request: dict) -> str:
    return json.dumps({"subject_correspondence": 4, "appearance_description": 3, "temporal_description": 2,
                       "hallucination_detection": 5})


def test_bench_q_with_a_vlm_server_writes_report(app: typer.Typer, bench_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["bench", "q", "--data", str(bench_dir / "VideoRefer-Bench-Q.json"), "--server", "", "--server-model",
            "vlm-stub", "--out", str(out), "--limit", "4"]
    with StubOpenAIServer(responder=lambda r: "(B)") as server:
        args[args.index("--server") + 1] = server.base_url
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
        assert server.request_count == 4
        rerun = CliRunner().invoke(app, args)  # resume: nothing left to ask
        assert rerun.exit_code == 0 and server.request_count == 4 and "resumed 4" in rerun.output
    report = json.loads((out / "q-single.report.json").read_text())
    answers = [e["Answer"] for e in json.loads((bench_dir / "VideoRefer-Bench-Q.json").read_text())[:4]]
    assert report["score"]["overall"]["correct"] == sum(a.startswith("(B)") for a in answers)
    assert report["items"] == 4 and report["model"] == "vlm-stub"
    assert report["run"]["vlm_prompt_tokens"] > 0 and report["run"]["vlm_completion_tokens"] == 4
    markdown = (out / "q-single.report.md").read_text()
    assert "| VideoRefer-7B (paper) | single |" in markdown and "| **vlm-stub (ours)** | single |" in markdown
    assert len((out / "q-single.predictions.jsonl").read_text().splitlines()) == 4


def test_bench_d_with_vlm_and_judge_servers(app: typer.Typer, bench_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with StubOpenAIServer(responder=lambda r: "A small ball moving right.") as vlm, StubOpenAIServer(
        responder=judge_responder
    ) as judge:
        result = CliRunner().invoke(app, [
            "bench", "d", "--data", str(bench_dir / "VideoRefer-Bench-D.json"), "--data-root", str(bench_dir),
            "--server", vlm.base_url, "--server-model", "vlm-stub", "--out", str(out), "--mode", "multi",
            "--judge-url", judge.base_url, "--judge-model", "judge-stub",
        ])
        assert result.exit_code == 0, result.output
        assert judge.request_count == 2 and all(r["temperature"] == 0.0 for r in judge.requests)
    report = json.loads((out / "d-multi.report.json").read_text())
    assert report["score"]["means"] == {"SC": 4.0, "AD": 3.0, "TD": 2.0, "HD": 5.0}
    assert report["score"]["average"] == pytest.approx(3.5)
    assert report["score"]["prompt_tokens"] > 0
    markdown = (out / "d-multi.report.md").read_text()
    assert "| **vlm-stub (ours)** | multi | 4.00 | 3.00 | 2.00 | 5.00 | 3.50 |" in markdown
    judged = [json.loads(line) for line in (out / "d-multi.judge-judge-stub.jsonl").read_text().splitlines()]
    assert len(judged) == 2 and all(j["replies"] and j["judge_model"] == "judge-stub" for j in judged)


def test_config_errors_exit_2_with_a_message(app: typer.Typer, bench_dir: Path, tmp_path: Path) -> None:
    data = str(bench_dir / "VideoRefer-Bench-Q.json")
    both = CliRunner().invoke(app, ["bench", "q", "--data", data, "--model", str(tmp_path), "--server", "http://x",
                                    "--server-model", "m", "--out", str(tmp_path / "o")])
    assert both.exit_code == 2 and "exactly one of --model" in both.output
    missing = CliRunner().invoke(app, ["bench", "q", "--data", str(tmp_path / "nope.json"), "--server", "http://x",
                                       "--server-model", "m", "--out", str(tmp_path / "o")])
    assert missing.exit_code == 2 and "not found" in missing.output
    no_name = CliRunner().invoke(app, ["bench", "d", "--data", data, "--server", "http://x", "--out",
                                       str(tmp_path / "o")])
    assert no_name.exit_code == 2 and "--server-model" in no_name.output


def test_server_down_exits_1_and_says_how_to_resume(app: typer.Typer, bench_dir: Path, tmp_path: Path) -> None:
    with StubOpenAIServer(fault_script=["unavailable"] * 50, retry_after_s=0.0) as server:
        result = CliRunner().invoke(app, ["bench", "q", "--data", str(bench_dir / "VideoRefer-Bench-Q.json"),
                                          "--server", server.base_url, "--server-model", "m", "--out",
                                          str(tmp_path / "o"), "--limit", "1", "--concurrency", "1"],
                                    env={"OPENAI_API_KEY": "unused"})
    assert result.exit_code == 1 and "resume" in result.output


def test_bench_q_with_our_tiny_model(app: typer.Typer, bench_dir: Path, tmp_path: Path) -> None:
    from model.inference import save_tiny_model

    model_dir = save_tiny_model(tmp_path / "tiny-ckpt", seed=1)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["bench", "q", "--data", str(bench_dir / "VideoRefer-Bench-Q.json"), "--model",
                                      str(model_dir), "--out", str(out), "--mode", "multi", "--limit", "1",
                                      "--max-new-tokens", "2"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "q-multi.report.json").read_text())
    assert report["model"] == "tiny-ckpt" and report["score"]["overall"]["total"] == 1
    assert report["run"]["runner"] == "model"


@pytest.mark.gpu
def test_bench_d_with_our_tiny_model_on_cuda(app: typer.Typer, bench_dir: Path, tmp_path: Path) -> None:
    from model.inference import save_tiny_model

    model_dir = save_tiny_model(tmp_path / "tiny-ckpt", seed=1)
    result = CliRunner().invoke(app, ["bench", "d", "--data", str(bench_dir / "VideoRefer-Bench-D.json"), "--model",
                                      str(model_dir), "--out", str(tmp_path / "out"), "--device", "cuda",
                                      "--max-new-tokens", "4"])
    assert result.exit_code == 0, result.output
    assert "2 descriptions (not judged)" in result.output
