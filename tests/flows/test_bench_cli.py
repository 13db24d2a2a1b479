"""`videorefer bench q|d|score` end to end: synthetic benchmark files, the stub server as VLM and as judge, our tiny
model, reports, and the release-format files scored by the release's scorers (transcribed in
tests/agents/bench/release_reference.py) giving our numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from agents.backends.stub_server import StubOpenAIServer
from agents.bench.synthetic import make_synthetic_bench
from flows import cli_bench
from tests.agents.bench import release_reference as release

JUDGE_REPLY = ("1. Subject Correspondence: 4\n2. Appearance Description: 3\n3. Temporal Description: 2\n"
               "4. Hallucination Detection: 5\n")


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
    return JUDGE_REPLY


def _release_scores(path: Path) -> tuple[dict, dict]:
    return release.eval_bench_q([json.loads(line) for line in path.read_text().splitlines()])


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
    all_sum, right_num = _release_scores(out / "q-single.release.jsonl")  # the release's scorer on our file
    assert sum(all_sum.values()) == 4 and sum(right_num.values()) == report["score"]["overall"]["correct"]
    assert report["run"]["protocol"] == "release" and report["run"]["frames"] == 16  # set-of-marks frames


def test_bench_d_with_vlm_and_judge_servers(app: typer.Typer, bench_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    prompt = tmp_path / "system.txt"
    prompt.write_text("A judge prompt the test wrote.\n")  # never the release's prose
    args = ["bench", "d", "--data", str(bench_dir / "VideoRefer-Bench-D.json"), "--data-root", str(bench_dir),
            "--server", "", "--server-model", "vlm-stub", "--out", str(out), "--mode", "multi", "--judge-url", "",
            "--judge-model", "judge-stub", "--judge-prompt", str(prompt)]
    with StubOpenAIServer(responder=lambda r: "A small ball moving right.") as vlm, StubOpenAIServer(
        responder=judge_responder
    ) as judge:
        args[args.index("--server") + 1], args[args.index("--judge-url") + 1] = vlm.base_url, judge.base_url
        refused = CliRunner().invoke(app, args)  # release protocol: only the release's system.txt
        assert refused.exit_code == 2 and "sha256" in refused.output and vlm.request_count == 0
        result = CliRunner().invoke(app, [*args, "--protocol", "paper"])
        assert result.exit_code == 0, result.output
        assert judge.request_count == 2
        assert all((r["temperature"], r["top_p"], r["max_tokens"]) == (0.7, 0.95, 800) for r in judge.requests)
        assert judge.requests[0]["messages"][0]["content"] == prompt.read_text()
    report = json.loads((out / "d-multi.report.json").read_text())
    assert report["score"]["means"] == {"SC": 4.0, "AD": 3.0, "TD": 2.0, "HD": 5.0}
    assert report["score"]["average"] == pytest.approx(3.5)
    assert report["run"]["protocol"] == "paper" and report["run"]["judge_prompt_is_release"] is False
    markdown = (out / "d-multi.report.md").read_text()
    assert "| **vlm-stub (ours)** | multi | 4.00 | 3.00 | 2.00 | 5.00 | 3.50 |" in markdown
    judged = [json.loads(line) for line in (out / "d-multi.judge-judge-stub.jsonl").read_text().splitlines()]
    assert len(judged) == 2 and all(j["replies"] and j["judge_model"] == "judge-stub" for j in judged)
    # The release's 2.extract_re.py + 3.analyze_score.py on our release-format file give our numbers.
    extracted, errors = release.extract_re(json.loads((out / "d-multi.release-judged.json").read_text()))
    means, overall = release.analyze_score(extracted)
    assert errors == 0 and overall == pytest.approx(report["score"]["average"])
    assert means["Subject Correspondence"] == report["score"]["means"]["SC"]
    judged_file = str(out / "d-multi.release-judged.json")
    rescored = CliRunner().invoke(app, ["bench", "score", "d", "--predictions", judged_file])
    assert rescored.exit_code == 0 and "release format" in rescored.output and "all....\n3.5" in rescored.output


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


def test_bench_q_with_our_tiny_model_counts_every_entry(app: typer.Typer, bench_dir: Path, tmp_path: Path) -> None:
    """Release protocol on a file with null masks, a multi-object question, a missing video and a bad answer."""
    from model.inference import save_tiny_model

    entries = json.loads((bench_dir / "VideoRefer-Bench-Q.json").read_text())
    first_frame = sorted(entries[0]["annotation"][0], key=int)[0]
    entries[0]["annotation"][0][first_frame]["segmentation"] = None  # a null mask: a zero mask, as released
    entries[2]["video"] = "videos/missing.mp4"  # cannot be run: scored wrong, listed
    entries[3]["Answer"] = "(Z) not an option"  # unreadable entry: scored wrong, listed
    data = tmp_path / "bench-q.json"
    data.write_text(json.dumps(entries))
    model_dir = save_tiny_model(tmp_path / "tiny-ckpt", seed=1)
    out = tmp_path / "out"
    args = ["bench", "q", "--data", str(data), "--data-root", str(bench_dir), "--model", str(model_dir), "--out",
            str(out), "--mode", "multi", "--max-new-tokens", "2"]
    first = CliRunner().invoke(app, [*args, "--limit", "2"])  # an interrupted run: the first two entries
    assert first.exit_code == 0, first.output
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "resumed 2" in result.output and "could not run 2" in result.output
    report = json.loads((out / "q-multi.report.json").read_text())
    assert report["model"].startswith("tiny-ckpt@") and report["run"]["runner"] == "model"
    assert report["run"]["model_dir"] == str(model_dir.resolve())
    assert report["run"]["protocol"] == "release" and report["run"]["frames"] == 8
    assert report["score"]["overall"]["total"] == len(entries)  # every entry is in the denominator
    assert sorted(f["id"] for f in report["score"]["failed"]) == ["2", "3"]
    all_sum, right_num = _release_scores(out / "q-multi.release.jsonl")
    assert sum(all_sum.values()) == len(entries)
    assert sum(right_num.values()) == report["score"]["overall"]["correct"]
    assert {k: v["total"] for k, v in report["score"]["per_published_type"].items()} == all_sum
    ours = [json.loads(line) for line in (out / "q-multi.predictions.jsonl").read_text().splitlines()]
    assert all(r["protocol"] == "release" and r["num_frames"] == 8 for r in ours)
    rescored = CliRunner().invoke(app, ["bench", "score", "q", "--predictions", str(out / "q-multi.predictions.jsonl"),
                                        "--data", str(data), "--data-root", str(bench_dir)])
    assert rescored.exit_code == 0, rescored.output
    assert f"all num: {len(entries)}\nright num: {report['score']['overall']['correct']}" in rescored.output


def test_two_models_in_folders_of_the_same_name_never_share_predictions(app: typer.Typer, bench_dir: Path,
                                                                        tmp_path: Path) -> None:
    """Every training run's folder is called `model`: the predictions key on the weights, not the folder name."""
    from model.inference import save_tiny_model

    first = save_tiny_model(tmp_path / "run-a" / "model", seed=1)
    second = save_tiny_model(tmp_path / "run-b" / "model", seed=2)
    out = tmp_path / "out"
    base = ["bench", "q", "--data", str(bench_dir / "VideoRefer-Bench-Q.json"), "--out", str(out), "--limit", "1",
            "--max-new-tokens", "2"]
    assert CliRunner().invoke(app, [*base, "--model", str(first)]).exit_code == 0
    mixed = CliRunner().invoke(app, [*base, "--model", str(second)])
    assert mixed.exit_code == 2 and "another run" in mixed.output  # refused, not "resumed 1"
    again = CliRunner().invoke(app, [*base, "--model", str(first)])
    assert again.exit_code == 0 and "resumed 1" in again.output


@pytest.mark.gpu
def test_bench_d_with_our_tiny_model_on_cuda(app: typer.Typer, bench_dir: Path, tmp_path: Path) -> None:
    from model.inference import save_tiny_model

    model_dir = save_tiny_model(tmp_path / "tiny-ckpt", seed=1)
    result = CliRunner().invoke(app, ["bench", "d", "--data", str(bench_dir / "VideoRefer-Bench-D.json"), "--model",
                                      str(model_dir), "--out", str(tmp_path / "out"), "--device", "cuda",
                                      "--max-new-tokens", "4"])
    assert result.exit_code == 0, result.output
    assert "2 descriptions (not judged)" in result.output
