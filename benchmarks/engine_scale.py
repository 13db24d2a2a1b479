"""Engine scale with instant fake backends: the whole build at growing clip counts, and the no-op build after it.

For each size (default 10,000 and 100,000 clips; `--sizes`), a manifest of that many rows over a small pool of
tiny synthetic videos (distinct `source_id`s: N clips cost N rows, not N encodes; `engine_overhead.make_manifest`)
is built by the full Prefect build flow (ingest, every stage per shard, export, the merged 700K JSON, the report)
in a fresh subprocess with its own `PREFECT_HOME`. The parent samples the RSS of that subprocess's whole process
tree (the build and every process it starts, the Prefect API included) every 0.2 s, and takes its CPU from the
kernel's accounting of reaped children. The child then runs the same build again with nothing left to do and
measures its own CPU beyond Prefect's (the no-op build minus an empty flow run on the same warm API; issue 21
goal: under 1 s at 10K clips). Measured in the root: files, bytes and Parquet rows per clip; in `PREFECT_HOME`:
the database's size. Prints ONE JSON line with each size's figures, the growth of peak memory and of time per clip
from the smallest to the largest size (goals: memory at most +10%, time per clip flat), and an extrapolation to
700K clips: CPU seconds per clip x 700K spread over 16 cores (one node) and 128 cores (8 nodes), which assumes a
runner that keeps every core busy (the process and cluster runners of the scale-out issue; the default thread
runner is bound to about one core by the GIL), and the root's bytes, files and Prefect database at 700K.

    python benchmarks/engine_scale.py [--sizes 10000,100000] [--shard-size 500] [--pool 32]
    python benchmarks/engine_scale.py --sizes 500,2000 --shard-size 100        # quick
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET_CLIPS = 700_000


def _overhead_module():
    """benchmarks/engine_overhead.py (the manifest maker and the child runner live there)."""
    spec = importlib.util.spec_from_file_location("engine_overhead", Path(__file__).with_name("engine_overhead.py"))
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def build_phase(root: str, manifest: str, config: str) -> dict:
    """In the child: warm the Prefect API, time the build, then the no-op build and an empty flow's CPU."""
    sys.path.insert(0, str(REPO))
    from flows.runtime import fast_prefect, quiet_prefect_env, run_flow

    quiet_prefect_env()
    from prefect import flow

    from flows import engine_flows

    @flow(name="empty")
    def empty() -> int:
        return 1

    with fast_prefect():
        empty()
    started = time.perf_counter()
    report = run_flow(engine_flows.build, root=root, manifest=manifest, config_path=config)
    wall = time.perf_counter() - started
    stages = {row["stage"]: row for row in report["stages"]}

    def cpu_of(call) -> tuple[float, float]:
        cpu, clock = time.process_time(), time.perf_counter()
        call()
        return time.process_time() - cpu, time.perf_counter() - clock

    with fast_prefect():
        empty_cpu, _ = cpu_of(empty)
    noop_cpu, noop_wall = cpu_of(lambda: run_flow(engine_flows.build, root=root, config_path=config))
    with fast_prefect():
        empty_cpu = min(empty_cpu, cpu_of(empty)[0])
    return {
        "wall_s": wall,
        "task_runs": sum(row["shards"] for row in report["stages"]),
        "shards": stages["export"]["shards"],
        "clips_ingested": stages["ingest"]["items_out"],
        "samples": stages["export"]["items_out"],
        "noop_wall_s": noop_wall,
        "noop_cpu_s": noop_cpu,
        "empty_flow_cpu_s": empty_cpu,
    }


def _tree(pid: int) -> list[int]:
    """`pid` and every descendant (from /proc's children lists)."""
    found, stack = [], [pid]
    while stack:
        current = stack.pop()
        found.append(current)
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                stack.extend(int(c) for c in Path(f"/proc/{current}/task/{task}/children").read_text().split())
        except OSError:
            continue
    return found


def _rss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


def run_monitored(command: list[str], env: dict[str, str], timeout_s: float) -> tuple[dict, int, float]:
    """Run a child phase; return its JSON, the peak RSS of its process tree and the CPU seconds it used."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    process = subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, _rss_bytes(_tree(process.pid)))
            stop.wait(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        out, err = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        raise SystemExit(f"build did not finish in {timeout_s:.0f} s:\n{err[-4000:]}") from None
    finally:
        stop.set()
        sampler.join()
    if process.returncode != 0:
        raise SystemExit(f"build failed:\n{err[-4000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return json.loads(out.strip().splitlines()[-1]), peak, cpu


def root_figures(root: Path) -> dict:
    """Files, bytes and Parquet rows in a dataset root."""
    import pyarrow.parquet as pq

    files = [p for p in root.rglob("*") if p.is_file()]
    rows = sum(pq.read_metadata(p).num_rows for p in files if p.suffix == ".parquet")
    return {"files": len(files), "bytes": sum(p.stat().st_size for p in files), "parquet_rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000", help="comma-separated clip counts, smallest first")
    parser.add_argument("--shard-size", type=int, default=500)
    parser.add_argument("--pool", type=int, default=32)
    parser.add_argument("--timeout", type=float, default=7200.0, help="seconds each build subprocess gets")
    parser.add_argument("--phase", nargs=3, metavar=("ROOT", "MANIFEST", "CONFIG"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        print(json.dumps(build_phase(*args.phase)))
        return

    sys.path.insert(0, str(REPO))
    from flows.runtime import QUIET_ENV

    overhead = _overhead_module()
    load_before = os.getloadavg()[0]
    sizes = [int(size) for size in args.sizes.split(",")]
    results = []
    with tempfile.TemporaryDirectory(prefix="engine-scale-") as tmp:
        work = Path(tmp)
        config = work / "bench.yaml"
        config.write_text(
            "base_profile: offline\n"
            f"shard_size: {args.shard_size}\n"
            "concurrency: 64\n"
            "sampling: {num_frames: 8, mask_frames: 8, image_size: 64}\n"
        )
        for clips in sizes:
            manifest = overhead.make_manifest(work, clips, args.pool)
            home = work / f"prefect-{clips}"
            env = {**QUIET_ENV, **os.environ, "PREFECT_LOGGING_LEVEL": "WARNING", "PREFECT_HOME": str(home)}
            env.pop("PREFECT_API_URL", None)
            root = work / f"root-{clips}"
            command = [sys.executable, __file__, "--phase", str(root), str(manifest), str(config)]
            phase, peak, cpu = run_monitored(command, env, args.timeout)
            figures = root_figures(root)
            database = sum(p.stat().st_size for p in home.rglob("*.db*") if p.is_file())
            results.append({
                "clips": clips,
                "shards": phase["shards"],
                "task_runs": phase["task_runs"],
                "samples": phase["samples"],
                "wall_s": round(phase["wall_s"], 1),
                "ms_per_clip": round(1000 * phase["wall_s"] / clips, 2),
                "tree_cpu_s": round(cpu, 1),
                "tree_cpu_ms_per_clip": round(1000 * cpu / clips, 2),
                "peak_tree_rss_mb": round(peak / 2**20, 1),
                "files_per_clip": round(figures["files"] / clips, 4),
                "bytes_per_clip": round(figures["bytes"] / clips, 1),
                "parquet_rows_per_clip": round(figures["parquet_rows"] / clips, 3),
                "prefect_db_mb": round(database / 2**20, 2),
                "noop_build_wall_s": round(phase["noop_wall_s"], 2),
                "noop_build_cpu_s": round(phase["noop_cpu_s"], 3),
                "empty_flow_cpu_s": round(phase["empty_flow_cpu_s"], 3),
                "noop_own_cpu_s": round(phase["noop_cpu_s"] - phase["empty_flow_cpu_s"], 3),
            })
            for path in (root, home):  # the next size gets the disk back
                subprocess.run(["rm", "-rf", str(path)], check=False)
    small, large = results[0], results[-1]
    cpu_per_clip = large["tree_cpu_s"] / large["clips"]
    tasks_700k = (large["task_runs"] - 1) / large["clips"] * TARGET_CLIPS + 1
    # The database's growth per task run between the sizes (its empty size is a constant).
    more_tasks = large["task_runs"] - small["task_runs"]
    db_per_task = (large["prefect_db_mb"] - small["prefect_db_mb"]) / more_tasks if more_tasks > 0 else 0.0
    summary = {
        "benchmark": "engine_scale",
        "shard_size": args.shard_size,
        "load_before": round(load_before, 2),
        "sizes": results,
        "peak_rss_growth": round(large["peak_tree_rss_mb"] / small["peak_tree_rss_mb"] - 1, 4),
        "ms_per_clip_ratio": round(large["ms_per_clip"] / small["ms_per_clip"], 3),
        "tree_cpu_per_clip_ratio": round(large["tree_cpu_ms_per_clip"] / small["tree_cpu_ms_per_clip"], 3),
        "extrapolation_700k": {
            "cpu_hours": round(cpu_per_clip * TARGET_CLIPS / 3600, 2),
            "one_node_16_cores_hours": round(cpu_per_clip * TARGET_CLIPS / 16 / 3600, 2),
            "eight_nodes_128_cores_hours": round(cpu_per_clip * TARGET_CLIPS / 128 / 3600, 3),
            "root_gb": round(large["bytes_per_clip"] * TARGET_CLIPS / 1e9, 2),
            "root_files": int(large["files_per_clip"] * TARGET_CLIPS),
            "task_runs": int(tasks_700k),
            # With the task-run recorder off (flows.runtime.QUIET_ENV), task runs barely grow the database.
            "prefect_db_mb": round(large["prefect_db_mb"] + db_per_task * (tasks_700k - large["task_runs"]), 1),
        },
        "targets_met": {
            "peak_rss_growth<=0.10": large["peak_tree_rss_mb"] <= 1.10 * small["peak_tree_rss_mb"],
            "ms_per_clip_flat(<=1.10x)": large["ms_per_clip"] <= 1.10 * small["ms_per_clip"],
            "noop_own_cpu_s<1": all(r["noop_own_cpu_s"] < 1.0 for r in results),
        },
        "load_after": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
