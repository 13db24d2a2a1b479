"""Engine overhead per clip with instant fake backends: the full build flow over N and then 4N synthetic clips.

A pool of tiny synthetic videos (64x48, 8 frames) is generated once; the manifest reuses them under distinct
`source_id`s, so N clips cost N rows, not N encodes. Each size runs the whole Prefect build (ingest, every
stage per shard, export) in a fresh subprocess, so its peak RSS is its own. A third phase (no Prefect) runs the
analyze stage against a stub OpenAI server with 100 ms latency and `concurrency` 32 and measures the in-flight
average the server saw (its summed serving time / the stage's wall time; target >= 0.9 x 32), the model loads of the
vision backends over every shard of segment + short_captions (target: one per backend per worker) and the
decodes per clip of each stage task (target: 1). The baseline, in the same run: the same N-clip build driven
directly (ingest, then `flows.pipeline.runner.run_stage` per stage and shard, no Prefect) in a fresh subprocess;
`prefect_share` is the part of the flow's wall time the direct build does not need. The peer, in the same run and
at both sizes: a plain `multiprocessing` spawn pool (one process per core, like the default runner) running the
same `run_stage` chain per shard over the same shards; `peer_ratio` is our clips/s over the peer's (goal >= 0.9)
and `cpu_ratio_to_direct` our whole process tree's CPU per clip (the flow process, its task worker processes and
its local Prefect API child) over the direct build's (goal <= 1.3); `peer_ratio_before_report` leaves out the data
report the build draws after its stages (the peer draws none). Prints ONE JSON line: clips/s,
CPU ms per clip, Prefect task runs (= 1 ingest + stages x shards), peak RSS per size and its growth from N to 4N,
the direct baseline, and those figures. Targets: >= 50 clips/s, task runs = stages x shards (+ ingest), RSS
growth < 10%. Every child gets the offline Prefect settings of `flows.runtime.QUIET_ENV` (the ephemeral API's
start-up timeout among them; values already in the environment win) and `--phase-timeout` seconds to finish.

    python benchmarks/engine_overhead.py [--clips 2000] [--shard-size 500] [--pool 32] [--window-clips 2048]
    python benchmarks/engine_overhead.py --clips 100 --shard-size 50 --window-clips 128   # quick
    VIDEOREFER_RUNNER=thread python benchmarks/engine_overhead.py ...                       # another runner
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLIP = {"width": 64, "height": 48, "num_frames": 8, "fps": 8.0}


def make_manifest(directory: Path, clips: int, pool: int) -> Path:
    """A manifest of `clips` rows over a pool of `pool` generated videos (distinct source ids)."""
    from engine.synthetic import make_corpus

    videos = make_corpus(directory / "pool", pool, seed=0, num_objects=1, **CLIP)
    manifest = directory / f"manifest-{clips}.jsonl"
    with manifest.open("w") as handle:
        for index in range(clips):
            video = videos[index % pool]
            row = {"video": str(video.path), "caption": video.ground_truth.caption, "source_id": f"bench-{index}"}
            handle.write(json.dumps(row) + "\n")
    return manifest


def run_phase(root: str, manifest: str, config: str) -> dict:
    """One build in this process: warm the Prefect API first, then time the flow alone."""
    sys.path.insert(0, str(REPO))
    from flows.runtime import fast_prefect, quiet_prefect_env, run_flow

    quiet_prefect_env()  # before prefect is imported: its settings (the API start-up timeout) are read then
    from prefect import flow

    from flows import engine_flows

    @flow(name="warm-up")
    def warm_up() -> int:
        return 1

    with fast_prefect():
        warm_up()
    cpu_before = _tree_cpu_s()
    started = time.perf_counter()
    report = run_flow(engine_flows.build, root=root, manifest=manifest, config_path=config)
    wall = time.perf_counter() - started
    cpu = _tree_cpu_s() - cpu_before
    usage = resource.getrusage(resource.RUSAGE_SELF)
    stages = {row["stage"]: row for row in report["stages"]}
    return {
        "wall_s": wall,
        "run_wall_s": report["wall_seconds"],  # the flow's own timing: ends before the data report is drawn
        "cpu_s": cpu,
        "peak_rss_mb": usage.ru_maxrss / 1024,
        "task_runs": sum(row["shards"] for row in report["stages"]),
        "shards": stages["export"]["shards"],
        "clips_ingested": stages["ingest"]["items_out"],
        "samples": stages["export"]["items_out"],
        "stage_seconds": {name: round(row["seconds"], 2) for name, row in stages.items()},
    }


def _tree_cpu_s() -> float:
    """CPU seconds of this process, its finished children (task worker processes) and its live local API child."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime
    from flows import runtime

    api = runtime._LOCAL.get("api")  # noqa: SLF001 - the benchmark counts the API child's CPU too
    if api is not None and api.process is not None:
        with open(f"/proc/{api.process.pid}/stat") as handle:
            fields = handle.read().rpartition(")")[2].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
    return total


def _chain(args: tuple[str, str, str]) -> int:
    """The peer's work item: every stage over one shard, in pipeline order (runs in a pool process)."""
    root, shard, config_path = args
    from engine.config import load_config
    from flows.pipeline.runner import run_stage
    from flows.pipeline.stages import SHARD_STAGES

    config = load_config(config_path)
    samples = 0
    for stage in SHARD_STAGES:
        report = run_stage(root, stage, shard, config)
        samples += report.items_out if stage == "export" else 0
    return samples


def peer_phase(root: str, manifest: str, config_path: str) -> dict:
    """The peer: ingest, then a `multiprocessing` spawn pool (one process per core) running every stage per shard,
    then the export's JSON; CPU of the whole process tree."""
    sys.path.insert(0, str(REPO))
    import multiprocessing

    from engine.config import load_config
    from flows.pipeline import layout
    from flows.pipeline.export import finalize_export
    from flows.pipeline.ingest import ingest
    from flows.task_runners import default_workers

    started = time.perf_counter()
    config = load_config(config_path)
    layout.ensure_dataset(layout.open_root(root), config)
    ingest(root, manifest, config)
    shards = layout.shards(layout.open_root(root))
    with multiprocessing.get_context("spawn").Pool(default_workers()) as pool:
        samples = sum(pool.map(_chain, [(root, shard, config_path) for shard in shards], chunksize=1))
    finalize_export(root)
    wall = time.perf_counter() - started
    usage, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = usage.ru_utime + usage.ru_stime + children.ru_utime + children.ru_stime
    return {"wall_s": wall, "cpu_s": cpu, "samples": samples, "workers": default_workers()}


def direct_phase(root: str, manifest: str, config_path: str) -> dict:
    """The baseline: the same build without Prefect (ingest, then every stage over every shard), timed."""
    sys.path.insert(0, str(REPO))
    from engine.config import load_config
    from flows.pipeline import layout
    from flows.pipeline.export import finalize_export
    from flows.pipeline.ingest import ingest
    from flows.pipeline.runner import run_stage
    from flows.pipeline.stages import SHARD_STAGES

    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu_before = usage.ru_utime + usage.ru_stime
    started = time.perf_counter()
    config = load_config(config_path)
    layout.ensure_dataset(layout.open_root(root), config)
    ingest(root, manifest, config)
    samples = 0
    for stage in SHARD_STAGES:
        for shard in layout.shards(layout.open_root(root)):
            report = run_stage(root, stage, shard, config)
            samples += report.items_out if stage == "export" else 0
    finalize_export(root)
    wall = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime - cpu_before,
            "peak_rss_mb": usage.ru_maxrss / 1024, "samples": samples}


def run_child(command: list[str], env: dict[str, str], timeout_s: float, label: str) -> dict:
    """A phase in a fresh subprocess; its last stdout line is its JSON. A failure or a hang ends the benchmark."""
    try:
        done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, check=False,
                              timeout=timeout_s)
    except subprocess.TimeoutExpired as expired:
        stderr = expired.stderr.decode(errors="replace") if isinstance(expired.stderr, bytes) else expired.stderr
        raise SystemExit(f"phase {label} did not finish in {timeout_s:.0f} s:\n{(stderr or '')[-4000:]}") from None
    if done.returncode != 0:
        raise SystemExit(f"phase {label} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def window_phase(work: Path, clips: int, pool: int) -> dict:
    """The streaming window, warm models and frame cache, measured without Prefect (see the module docstring)."""
    sys.path.insert(0, str(REPO))
    import openai  # noqa: F401 - imported before timing: the window is what is measured, not the SDK import

    from agents.backends.stub_server import StubOpenAIServer
    from engine.config import parse_config
    from flows.pipeline import layout
    from flows.pipeline.backends import BackendPool
    from flows.pipeline.ingest import ingest
    from flows.pipeline.runner import run_stage

    root = work / "root-window"
    manifest = make_manifest(work, clips, pool)
    base = {"base_profile": "offline", "shard_size": max(1, clips // 2), "concurrency": 32,
            "sampling": {"num_frames": 8, "mask_frames": 8, "image_size": 64}}
    ingest(root, manifest, parse_config(base))
    shards = layout.shards(layout.open_root(root))
    latency = 0.1
    with StubOpenAIServer(latency_s=latency) as server:
        analyzer = {"kind": "openai", "base_url": server.base_url, "model": "stub", "max_in_flight": 64}
        config = parse_config({**base, "agents": {"analyzer": analyzer}})
        started = time.perf_counter()
        run_stage(root, "analyze", shards[0], config)
        wall = time.perf_counter() - started
        requests, busy = server.request_count, server.busy_seconds
    offline = parse_config(base)
    backends = BackendPool()
    decodes, clips_run = 0, 0
    for shard in shards:
        for stage in ("analyze", "annotate", "segment", "review", "short_captions"):
            report = run_stage(root, stage, shard, offline, pool=backends, force=stage == "analyze")
            decodes += report.decodes
            clips_run += report.clips if report.decodes else 0
    return {
        "window_requests": requests,
        "in_flight_avg": round(busy / wall, 2),
        "in_flight_target": 0.9 * 32,
        "model_loads": dict(backends.loads),
        "shards": len(shards),
        "decodes_per_clip_per_task": round(decodes / max(clips_run, 1), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=2000)
    parser.add_argument("--shard-size", type=int, default=500)
    parser.add_argument("--pool", type=int, default=32)
    parser.add_argument("--window-clips", type=int, default=2048)
    parser.add_argument("--phase-timeout", type=float, default=3600.0, help="seconds each build subprocess gets")
    parser.add_argument("--phase", nargs=3, metavar=("ROOT", "MANIFEST", "CONFIG"), help=argparse.SUPPRESS)
    parser.add_argument("--direct", nargs=3, metavar=("ROOT", "MANIFEST", "CONFIG"), help=argparse.SUPPRESS)
    parser.add_argument("--peer", nargs=3, metavar=("ROOT", "MANIFEST", "CONFIG"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        print(json.dumps(run_phase(*args.phase)))
        return
    if args.direct:
        print(json.dumps(direct_phase(*args.direct)))
        return
    if args.peer:
        print(json.dumps(peer_phase(*args.peer)))
        return

    sys.path.insert(0, str(REPO))
    from flows.pipeline.stages import SHARD_STAGES
    from flows.runtime import QUIET_ENV

    env = {**QUIET_ENV, **os.environ, "PREFECT_LOGGING_LEVEL": "WARNING"}
    env.pop("PREFECT_API_URL", None)
    results = {}
    with tempfile.TemporaryDirectory(prefix="engine-overhead-") as tmp:
        work = Path(tmp)
        env["PREFECT_HOME"] = str(work / "prefect-home")
        config = work / "bench.yaml"
        config.write_text(
            "base_profile: offline\n"
            f"shard_size: {args.shard_size}\n"
            "concurrency: 64\n"
            "sampling: {num_frames: 8, mask_frames: 8, image_size: 64}\n"
        )
        for label, clips in (("n", args.clips), ("4n", 4 * args.clips)):
            manifest = make_manifest(work, clips, args.pool)
            command = [sys.executable, __file__, "--phase", str(work / f"root-{label}"), str(manifest), str(config)]
            phase = run_child(command, env, args.phase_timeout, label)
            phase["clips"] = clips
            phase["clips_per_s"] = clips / phase["wall_s"]
            phase["cpu_ms_per_clip"] = 1000 * phase["cpu_s"] / clips
            phase["expected_task_runs"] = 1 + len(SHARD_STAGES) * phase["shards"]
            results[label] = phase
            for kind in ("direct", "peer"):  # the baselines right after the flow they are compared with
                command = [sys.executable, __file__, f"--{kind}", str(work / f"root-{kind}-{label}"), str(manifest),
                           str(config)]
                results[f"{kind}-{label}"] = run_child(command, env, args.phase_timeout, f"{kind}-{label}")
        window = window_phase(work, args.window_clips, args.pool)
    n, big, direct = results["n"], results["4n"], results["direct-n"]
    growth = (big["peak_rss_mb"] - n["peak_rss_mb"]) / n["peak_rss_mb"]
    summary = {
        "benchmark": "engine_overhead",
        "clips": args.clips,
        "shard_size": args.shard_size,
        "clips_per_s": round(n["clips_per_s"], 1),
        "clips_per_s_4n": round(big["clips_per_s"], 1),
        "cpu_ms_per_clip": round(n["cpu_ms_per_clip"], 2),
        "cpu_ms_per_clip_4n": round(big["cpu_ms_per_clip"], 2),
        "task_runs": n["task_runs"],
        "task_runs_4n": big["task_runs"],
        "task_runs_expected": [n["expected_task_runs"], big["expected_task_runs"]],
        "samples": [n["samples"], big["samples"]],
        "peak_rss_mb": round(n["peak_rss_mb"], 1),
        "peak_rss_mb_4n": round(big["peak_rss_mb"], 1),
        "rss_growth": round(growth, 4),
        "stage_seconds": n["stage_seconds"],
        "stage_seconds_4n": big["stage_seconds"],
        "direct_clips_per_s": round(args.clips / direct["wall_s"], 1),
        "direct_cpu_ms_per_clip": round(1000 * direct["cpu_s"] / args.clips, 2),
        "direct_samples": direct["samples"],
        "prefect_share": round(1 - direct["wall_s"] / n["wall_s"], 3),
        "runner": os.environ.get("VIDEOREFER_RUNNER") or "process",
        "peer_workers": results["peer-n"]["workers"],
        "peer_clips_per_s": round(args.clips / results["peer-n"]["wall_s"], 1),
        "peer_clips_per_s_4n": round(4 * args.clips / results["peer-4n"]["wall_s"], 1),
        "peer_cpu_ms_per_clip": round(1000 * results["peer-n"]["cpu_s"] / args.clips, 2),
        "peer_samples": [results["peer-n"]["samples"], results["peer-4n"]["samples"]],
        "peer_ratio": round(results["peer-n"]["wall_s"] / n["wall_s"], 3),
        "peer_ratio_4n": round(results["peer-4n"]["wall_s"] / big["wall_s"], 3),
        # the same ratio without the data report (reports/index.html) the build draws after its stages
        "peer_ratio_before_report": [round(results["peer-n"]["wall_s"] / n["run_wall_s"], 3),
                                     round(results["peer-4n"]["wall_s"] / big["run_wall_s"], 3)],
        "cpu_ratio_to_direct": round(n["cpu_s"] / direct["cpu_s"], 3),
        "cpu_ratio_to_direct_4n": round(big["cpu_s"] / results["direct-4n"]["cpu_s"], 3),
        "load_avg": [round(value, 2) for value in os.getloadavg()],
        **window,
        "targets_met": {
            "in_flight_avg>=0.9x32": window["in_flight_avg"] >= window["in_flight_target"],
            "one_load_per_backend": all(count == 1 for count in window["model_loads"].values()),
            "decodes_per_clip==1": window["decodes_per_clip_per_task"] <= 1.0,
            "clips_per_s>=50": n["clips_per_s"] >= 50,
            "task_runs==1+stages*shards": n["task_runs"] == n["expected_task_runs"]
            and big["task_runs"] == big["expected_task_runs"],
            "rss_growth<0.10": growth < 0.10,
            "peer_ratio>=0.9": min(results["peer-n"]["wall_s"] / n["wall_s"],
                                   results["peer-4n"]["wall_s"] / big["wall_s"]) >= 0.9,
            "cpu_ratio_to_direct<=1.3": max(n["cpu_s"] / direct["cpu_s"],
                                            big["cpu_s"] / results["direct-4n"]["cpu_s"]) <= 1.3,
        },
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
