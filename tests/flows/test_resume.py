"""Kill -9 a build mid-run, start it again: it finishes the missing work and exports the same dataset."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from flows import engine_flows
from flows.pipeline.export import exported_tars
from flows.runtime import run_flow
from tests.flows.conftest import write_config

REPO = Path(__file__).resolve().parents[2]


def _export(root: Path) -> dict[str, str]:
    files = [Path(t) for t in exported_tars(root)] + sorted((root / "export" / "json").glob("*.json"))
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


def test_a_killed_build_resumes_to_the_same_export_as_an_uninterrupted_one(prefect_server, corpus, tmp_path) -> None:
    root, manifest = corpus
    reference = tmp_path / "reference"
    shutil.copytree(root, reference)
    # A slow refiner keeps the run busy after the first stage, so the kill lands mid-run.
    config = write_config(tmp_path / "slow.yaml", agents={"refiner": {"kind": "fake", "latency_s": 0.5}})
    run_flow(engine_flows.build, root=str(reference), manifest=str(reference / manifest.name), config_path=str(config))

    command = [sys.executable, "-c", "from flows.cli import main; main()", "build", "--root", str(root),
               "--manifest", str(manifest), "--config", str(config)]
    env = {**os.environ, "PREFECT_API_URL": prefect_server}
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 180
        while not list((root / "stages" / "analyze").glob("*.done.json")):
            assert process.poll() is None, "the build ended before its first stage was done"
            assert time.monotonic() < deadline, "no stage finished in time"
            time.sleep(0.05)
        process.kill()
        assert process.wait(timeout=30) == -9
    finally:
        if process.poll() is None:
            process.kill()
    done_exports = list((root / "stages" / "export").glob("*.done.json"))
    assert len(done_exports) < 2, "the build had already finished: nothing was interrupted"

    report = run_flow(engine_flows.build, root=str(root), manifest=str(manifest), config_path=str(config))
    skipped = {row["stage"]: row["shards_skipped"] for row in report["stages"]}
    assert skipped["analyze"] >= 1  # work done before the kill is not redone
    assert _export(root) == _export(reference) != {}
