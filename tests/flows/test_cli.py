"""The main command line: `--version`, `-h` as well as `--help`, and every area's commands registered."""

from __future__ import annotations

from typer.testing import CliRunner

from flows.cli import app

runner = CliRunner()


def test_version_and_short_help() -> None:
    version = runner.invoke(app, ["--version"])
    assert version.exit_code == 0 and version.output.startswith("videorefer ")
    short = runner.invoke(app, ["-h"])
    assert short.exit_code == 0 and "Usage" in short.output
    for command in ("demo", "build", "infer", "train", "bench", "report", "audit"):
        assert command in short.output
    assert runner.invoke(app, ["bench", "-h"]).exit_code == 0
