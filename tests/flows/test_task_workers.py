"""`--runner prefect`: stage tasks run by `videorefer worker` processes (Prefect task workers), each its stages.

A real Prefect server (the session's test server, a uvicorn process on 127.0.0.1) and two worker processes this test
starts and stops by their handles: a "GPU host" serving segment and short_captions, a "CPU host" serving the other
stages. Every stage task of the build must have run in a worker that serves its stage, and the export must equal the
default build's.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.errors import ConfigError
from flows import engine_flows
from flows.runtime import run_flow
from tests.flows.conftest import write_config
from tests.flows.test_task_runners import export_digest

REPO = Path(__file__).resolve().parents[2]
GPU_STAGES = ("segment", "short_captions")
CPU_STAGES = ("analyze", "annotate", "review", "refine", "generate_qa", "export")


def _worker(stages: tuple[str, ...], log: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-c", "from flows.cli import main; main()", "worker", "--stages", ",".join(stages),
               "--limit", "2"]
    return subprocess.Popen(command, cwd=REPO, env=dict(os.environ), stdout=subprocess.DEVNULL,
                            stderr=log.open("wb"))


@pytest.fixture
def workers(prefect_server: str, tmp_path: Path) -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    started = {"gpu": _worker(GPU_STAGES, tmp_path / "gpu.log"), "cpu": _worker(CPU_STAGES, tmp_path / "cpu.log")}
    try:
        yield started
    finally:
        for process in started.values():
            process.terminate()
        for process in started.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.mark.timeout(600)
def test_each_stage_task_runs_in_a_worker_serving_its_stage_and_the_export_matches(
    workers: dict[str, subprocess.Popen[bytes]], corpus, tmp_path: Path
) -> None:
    root, manifest = corpus
    reference = tmp_path / "reference"
    shutil.copytree(root, reference)
    config = write_config(tmp_path / "tiny.yaml")
    run_flow(engine_flows.build, root=str(reference), manifest=str(reference / manifest.name), config_path=str(config))

    report = run_flow(engine_flows.build, runner="prefect", root=str(root), manifest=str(manifest),
                      config_path=str(config))
    for name, process in workers.items():
        assert process.poll() is None, f"the {name} worker exited"
    pids = {"gpu": workers["gpu"].pid, "cpu": workers["cpu"].pid}
    tasks = [row for row in report["tasks"] if row["stage"] != "ingest"]
    assert {row["stage"] for row in tasks} == set(GPU_STAGES) | set(CPU_STAGES)
    for row in tasks:
        assert row["pid"] == pids["gpu" if row["stage"] in GPU_STAGES else "cpu"], row
    assert export_digest(root) == export_digest(reference)


def test_the_prefect_runner_and_the_worker_need_a_server(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    with pytest.raises(ConfigError, match="PREFECT_API_URL"):
        run_flow(engine_flows.build, runner="prefect", root=str(tmp_path))
    done = subprocess.run([sys.executable, "-c", "from flows.cli import main; main()", "worker", "--stages",
                           "segment"], cwd=REPO, env={k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"},
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 1 and done.stderr.strip().splitlines()[-1].startswith("error: ConfigError")
    bad = subprocess.run([sys.executable, "-c", "from flows.cli import main; main()", "worker", "--stages",
                          "segmnt"], cwd=REPO, env=dict(os.environ), capture_output=True, text=True, timeout=120,
                         check=False)
    assert bad.returncode == 1 and "unknown stage 'segmnt'" in bad.stderr
