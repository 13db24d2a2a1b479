"""Prefect start-up per engine command, and where it goes: Prefect's own ephemeral API (before), the CLI's local
API child started before the heavy imports (after), and a `prefect server start` kept running (the fast path).

Each case runs a trivial flow in a fresh subprocess, as `videorefer stage ...` does, with a fresh `PREFECT_HOME`
(SQLite created and migrated) and again with the existing one; the cases alternate so load on the machine hits
them alike. The probe reports its phases (imports done, API ready, flow done), and one more subprocess times the
server's own start-up steps in-process (importing the server app, migrations, block registration) on a fresh and
an existing database. Prints ONE JSON line: per case the median and [min, max] over `--runs`, and the ratios of
the after and the running-server cases to the before case (same run).

    python benchmarks/prefect_startup.py [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROBE = """
import json, sys, time
t0 = time.perf_counter()
mode = sys.argv[1]
if mode == "after":
    from flows.runtime import start_local_api
    api = start_local_api()
from prefect import flow
import flows.engine_flows  # the CLI imports the pipeline before its flow runs
from flows.runtime import fast_prefect, run_flow
imported = time.perf_counter() - t0
@flow(name="startup-probe")
def probe():
    return 1
ready = None
if mode == "before":  # Prefect starts its in-process ephemeral server on the first API call
    with fast_prefect():
        probe()
else:
    if mode == "after":
        api.wait_ready()
        ready = time.perf_counter() - t0
    run_flow(probe)
print(json.dumps({"imports_s": imported, "api_ready_s": ready, "flow_done_s": time.perf_counter() - t0}))
"""
SERVER_PHASES = """
import asyncio, json, time
t0 = time.perf_counter()
from prefect.server.api.server import create_app
t1 = time.perf_counter()
from prefect.server.database import provide_database_interface
db = provide_database_interface()
asyncio.run(db.create_db())
t2 = time.perf_counter()
from prefect.server.models.block_registration import run_block_auto_registration
async def blocks():
    async with await db.session() as session:
        await run_block_auto_registration(session=session)
asyncio.run(blocks())
t3 = time.perf_counter()
print(json.dumps({"import_server_app_s": t1 - t0, "migrations_s": t2 - t1, "block_registration_s": t3 - t2}))
"""


def _run(code: str, env: dict[str, str], *args: str) -> dict[str, float]:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=900, check=False)
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    figures["wall_s"] = time.perf_counter() - started  # with interpreter start and exit (server stop)
    return figures


def _running_server(env: dict[str, str]) -> tuple[subprocess.Popen, str, float]:
    from flows.runtime import _free_port

    port = _free_port()
    started = time.perf_counter()
    server = subprocess.Popen([str(Path(sys.executable).with_name("prefect")), "server", "start", "--host",
                               "127.0.0.1", "--port", str(port)], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    api = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + 600
    while True:
        try:
            with urllib.request.urlopen(f"{api}/health", timeout=2):
                return server, api, time.perf_counter() - started
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit("prefect server did not start") from None
            time.sleep(0.5)


def _spread(values: list[float]) -> dict[str, object]:
    return {"median": round(statistics.median(values), 2), "range": [round(min(values), 2), round(max(values), 2)]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=1)
    runs = parser.parse_args().runs
    sys.path.insert(0, str(REPO))
    base = {key: value for key, value in os.environ.items() if key != "PREFECT_API_URL"}
    base.update({"PREFECT_LOGGING_LEVEL": "WARNING", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                 "PYTHONPATH": str(REPO)})
    cases: dict[str, list[float]] = {}
    phases: dict[str, list[float]] = {}

    def record(name: str, figures: dict[str, float]) -> None:
        cases.setdefault(name, []).append(figures["wall_s"])
        for key, value in figures.items():
            if value is not None and key != "wall_s":
                phases.setdefault(f"{name}.{key}", []).append(value)

    with tempfile.TemporaryDirectory(prefix="prefect-startup-") as tmp:
        for run in range(runs):
            for home in ("fresh", "existing"):
                for mode in ("before", "after"):
                    env = {**base, "PREFECT_HOME": f"{tmp}/{mode}-{run}"}
                    record(f"{mode}_{home}_home", _run(PROBE, env, mode))
            for home in ("fresh", "existing"):
                env = {**base, "PREFECT_HOME": f"{tmp}/phases-{run}"}
                record(f"server_steps_{home}_db", {**_run(SERVER_PHASES, env), "wall_s": 0.0})
            server_env = {**base, "PREFECT_HOME": f"{tmp}/server-{run}"}
            server, api, server_start = _running_server(server_env)
            try:
                cases.setdefault("server_start_once", []).append(server_start)
                record("with_running_server", _run(PROBE, {**server_env, "PREFECT_API_URL": api}, "server"))
            finally:
                os.killpg(server.pid, 15)
                server.wait(timeout=60)
    out: dict[str, object] = {"benchmark": "prefect_startup", "runs": runs}
    out.update({name: _spread(values) for name, values in cases.items() if not name.startswith("server_steps")})
    out["phases"] = {name: _spread(values) for name, values in sorted(phases.items())}
    before = statistics.median(cases["before_existing_home"])
    out["after_vs_before_existing"] = round(statistics.median(cases["after_existing_home"]) / before, 3)
    out["after_vs_before_fresh"] = round(
        statistics.median(cases["after_fresh_home"]) / statistics.median(cases["before_fresh_home"]), 3)
    out["running_server_vs_before_existing"] = round(statistics.median(cases["with_running_server"]) / before, 3)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
