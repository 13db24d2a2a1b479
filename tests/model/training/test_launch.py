"""The torchrun command of a stage, the streaming runner's exit code, and `videorefer train` in front of them."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from engine.errors import ConfigError
from flows.cli import app
from model.training.launch import run_streaming, torchrun_command
from model.training.loop import parse_args, recipe_from_args


def test_torchrun_command_runs_the_loop_module() -> None:
    command = torchrun_command(recipe="tiny_stage2", data=["a/*.tar", "b/*.tar::2"], out="runs/s2", nproc=2,
                               max_steps=5, resume=True, init_from="runs/s1", overrides={"micro_batch": "1"})
    assert command[:6] == [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone"]
    loop_args = command[command.index("model.training.loop") + 1 :]
    recipe = recipe_from_args(parse_args(loop_args))
    assert recipe.name == "tiny_stage2" and recipe.max_steps == 5 and recipe.micro_batch == 1
    assert recipe.init_from == "runs/s1"
    assert [(s.shards, s.weight) for s in recipe.data.sources] == [("a/*.tar", 1.0), ("b/*.tar", 2.0)]
    assert parse_args(loop_args).resume


def test_multi_node_needs_a_rendezvous_endpoint() -> None:
    with pytest.raises(ConfigError):
        torchrun_command(recipe="stage3", data=["x"], out="o", nnodes=2)
    command = torchrun_command(recipe="stage3", data=["x"], out="o", nnodes=2, rdzv_endpoint="head:29500")
    assert "--rdzv-endpoint" in command and "--standalone" not in command


def test_run_streaming_hands_over_lines_and_the_exit_code() -> None:
    lines: list[str] = []
    code = run_streaming([sys.executable, "-c", "print('a'); print('b'); raise SystemExit(3)"], on_line=lines.append)
    assert code == 3 and [line.strip() for line in lines] == ["a", "b"]


def test_cli_dry_run_prints_the_command(tmp_path: Path) -> None:
    (tmp_path / "a.tar").touch()
    result = CliRunner().invoke(app, ["train", "--recipe", "tiny_stage1", "--data", str(tmp_path / "*.tar"),
                                      "--out", "o", "--nproc", "2", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "torch.distributed.run --nproc-per-node 2" in result.output and "--recipe tiny_stage1" in result.output


@pytest.mark.parametrize(
    "arguments",
    [
        ["--recipe", "stage9", "--data", "{shards}"],  # unknown recipe
        ["--recipe", "tiny_stage1", "--data", "{missing}"],  # no shard matches
        ["--recipe", "stage2", "--data", "{shards}"],  # a full-size stage needs --init-from
    ],
)
def test_cli_config_errors_fail_before_torchrun(tmp_path: Path, arguments: list[str]) -> None:
    (tmp_path / "a.tar").touch()
    filled = [a.format(shards=tmp_path / "*.tar", missing=tmp_path / "none-*.tar") for a in arguments]
    result = CliRunner().invoke(app, ["train", *filled, "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "config error" in result.output
