"""Crash and fault campaign of the data engine: kill -9 at random points, and 20% injected backend faults.

Kills: a reference build (every stage over every shard, in a subprocess, no Prefect: `flows.pipeline` directly)
is timed; then the same build is started again on fresh copies of the corpus and killed with SIGKILL at
`--kills` random moments within that time, resumed, and its export (tars and JSON) compared byte for byte with
the reference. Faults: the refiner talks to a stub OpenAI-compatible server that fails 20% of requests (429,
500, timeouts); the build is re-run until it finishes (a backend that stays down fails a run, the next run
resumes), and every reviewed object must end as a refined record or a non-transient reject (0 lost). The
baseline, in the same run, is that uninterrupted reference build (its time and export). Every build subprocess
gets the offline Prefect settings of `flows.runtime.QUIET_ENV` (values in the environment win), writes its stderr
to a file (a pipe nobody reads stalls a chatty child) and `--child-timeout` seconds to finish. Prints ONE JSON
line: kills survived with identical exports, runs needed, retries, items lost.

    python benchmarks/reliability.py [--clips 12] [--kills 5] [--fault-rate 0.2] [--seed 1]

A fault campaign that injected no fault proves nothing, so it is a target of its own (`faults_exercised`): with
seed 0 the stub's first 20 draws were all above 0.2 and the default run of 20 requests saw no fault at all.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def build(root: str, manifest: str, config_path: str) -> None:
    """Ingest and every stage over every shard, in this process (what `--drive` runs in the subprocess)."""
    from engine.config import load_config
    from flows.pipeline import layout
    from flows.pipeline.ingest import ingest
    from flows.pipeline.runner import run_stage
    from flows.pipeline.stages import SHARD_STAGES

    config = load_config(config_path)
    layout.ensure_dataset(layout.open_root(root), config)
    ingest(root, manifest, config)
    for stage in SHARD_STAGES:
        for shard in layout.shards(layout.open_root(root)):
            run_stage(root, stage, shard, config)


def export_digest(root: Path) -> dict[str, str]:
    files = sorted((root / "export").rglob("*.tar")) + sorted((root / "export" / "json").glob("*.json"))
    return {f.relative_to(root).as_posix(): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


def _drive(root: Path, manifest: Path, config: Path) -> tuple[subprocess.Popen, Path]:
    """Start a build of `root` in a subprocess; its stderr goes to `<root>.stderr` beside it."""
    from flows.runtime import QUIET_ENV

    command = [sys.executable, __file__, "--drive", str(root), str(manifest), str(config)]
    log = root.parent / f"{root.name}.stderr"
    with log.open("ab") as handle:  # the child keeps its own descriptor
        process = subprocess.Popen(command, cwd=REPO, env={**QUIET_ENV, **os.environ}, stdout=subprocess.DEVNULL,
                                   stderr=handle)
    return process, log


def _finish(started: tuple[subprocess.Popen, Path], what: str, timeout_s: float) -> None:
    """Wait for a build subprocess; a failure, or one still running after `timeout_s`, ends the benchmark."""
    process, log = started
    try:
        code: int | None = process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        code = None
    if code != 0:
        why = f"did not finish in {timeout_s:.0f} s" if code is None else f"failed ({code})"
        raise SystemExit(f"{what} {why}: {log.read_text(errors='replace')[-2000:]}")


def kill_campaign(work: Path, clips: int, kills: int, seed: int, timeout_s: float) -> dict:
    from flows.demo import prepare_demo

    template = work / "template"
    prepare_demo(template, clips=clips, qa_clips=2, clip_kwargs={"width": 96, "height": 72, "num_frames": 12,
                                                                  "fps": 12.0})
    config = work / "engine.yaml"
    config.write_text("base_profile: offline\nshard_size: 3\nconcurrency: 4\n"
                      "sampling: {num_frames: 4, mask_frames: 4, image_size: 48, patch_size: 8}\n"
                      "agents: {refiner: {kind: fake, latency_s: 0.05}, annotator: {kind: fake, latency_s: 0.02}}\n")
    reference = work / "reference"
    shutil.copytree(template, reference)
    started = time.perf_counter()
    _finish(_drive(reference, reference / "manifest.jsonl", config), "reference build", timeout_s)
    duration = time.perf_counter() - started
    expected = export_digest(reference)
    rng = random.Random(seed)
    identical = 0
    points = []
    for number in range(kills):
        root = work / f"killed-{number}"
        shutil.copytree(template, root)
        delay = rng.uniform(0.05, 0.95) * duration
        points.append(round(delay, 2))
        process, _ = _drive(root, root / "manifest.jsonl", config)
        time.sleep(delay)
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
        process.wait()
        _finish(_drive(root, root / "manifest.jsonl", config), f"resume {number}", timeout_s)
        identical += export_digest(root) == expected
    return {"reference_s": round(duration, 2), "kills": kills, "kill_points_s": points,
            "identical_exports": identical, "export_files": len(expected)}


def fault_campaign(work: Path, clips: int, fault_rate: float, seed: int) -> dict:
    from agents.backends.stub_server import StubOpenAIServer
    from engine.errors import BackendError
    from flows.demo import prepare_demo
    from flows.pipeline import layout

    root = work / "faults"
    prepare_demo(root, clips=clips, qa_clips=0, clip_kwargs={"width": 96, "height": 72, "num_frames": 12,
                                                              "fps": 12.0})
    reply = json.dumps({"caption": "A refined caption of the object."})
    runs = 0
    with StubOpenAIServer(responder=lambda request: reply, fault_rate=fault_rate, seed=seed, hang_s=0.5,
                          fault_kinds=("rate_limit", "server_error", "timeout"), retry_after_s=0.0) as server:
        config = work / "faults.yaml"
        config.write_text(
            "base_profile: offline\nshard_size: 3\nconcurrency: 8\n"
            "sampling: {num_frames: 4, mask_frames: 4, image_size: 48, patch_size: 8}\n"
            f"agents: {{refiner: {{kind: openai, base_url: '{server.base_url}', model: stub, max_retries: 2,"
            " backoff_base_s: 0.01, backoff_max_s: 0.05, timeout_s: 0.3, structured_output: none}}\n"
        )
        while True:
            runs += 1
            try:
                build(str(root), str(root / "manifest.jsonl"), str(config))
                break
            except BackendError:
                if runs >= 20:
                    raise
        requests, faults = server.request_count, len(server.faults_injected)
    droot = layout.open_root(root)
    reviewed = refined = rejected = transient = 0
    for shard in layout.shards(droot):
        reviewed += len(layout.read_stage(droot, "review", shard))
        refined += len(layout.read_stage(droot, "refine", shard))
        rejects = layout.read_stage_rejects(droot, "refine", shard)
        rejected += len(rejects)
        transient += sum(str(r.reason) == "backend_transient" for r in rejects)
    return {"fault_rate": fault_rate, "requests": requests, "faults_injected": faults, "runs_needed": runs,
            "reviewed": reviewed, "refined": refined, "rejected": rejected, "transient_rejects": transient,
            "lost": reviewed - refined - rejected}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=12)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--fault-rate", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--child-timeout", type=float, default=1800.0, help="seconds per build subprocess")
    parser.add_argument("--drive", nargs=3, metavar=("ROOT", "MANIFEST", "CONFIG"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.drive:
        build(*args.drive)
        return
    with tempfile.TemporaryDirectory(prefix="reliability-") as tmp:
        work = Path(tmp)
        kills = kill_campaign(work, args.clips, args.kills, args.seed, args.child_timeout)
        faults = fault_campaign(work, args.clips, args.fault_rate, args.seed)
    print(json.dumps({"benchmark": "reliability", **kills, **faults,
                      "targets_met": {"identical_after_every_kill": kills["identical_exports"] == kills["kills"],
                                      "faults_exercised": faults["faults_injected"] > 0,
                                      "zero_lost": faults["lost"] == 0 and faults["transient_rejects"] == 0}}))


if __name__ == "__main__":
    main()
