"""Prefect start-up per engine command: the ephemeral local API (no PREFECT_API_URL) vs a running server.

Each measurement runs a trivial flow in a fresh subprocess, as `videorefer stage ...` does: first with no
`PREFECT_API_URL` and a fresh `PREFECT_HOME` (the API starts in-process, SQLite created), then with an existing
home, then against a `prefect server start` kept running on 127.0.0.1 (its own start time is reported apart).
Prints ONE JSON line: seconds per case and the ratio of the server case to the ephemeral one (same run).

    python benchmarks/prefect_startup.py
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FLOW = (
    "import time; t=time.perf_counter()\n"
    "from prefect import flow\n"
    "from flows.runtime import fast_prefect\n"
    "@flow(name='startup-probe')\n"
    "def probe():\n    return 1\n"
    "with fast_prefect():\n    probe()\n"
    "print(time.perf_counter()-t)\n"
)


def _run(env: dict[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", FLOW], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600, check=False)
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    return time.perf_counter() - started


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> None:
    base = {key: value for key, value in os.environ.items() if key != "PREFECT_API_URL"}
    base.update({"PREFECT_LOGGING_LEVEL": "WARNING", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"})
    with tempfile.TemporaryDirectory(prefix="prefect-startup-") as tmp:
        fresh = _run({**base, "PREFECT_HOME": f"{tmp}/fresh"})
        existing = _run({**base, "PREFECT_HOME": f"{tmp}/fresh"})
        port = _free_port()
        server_env = {**base, "PREFECT_HOME": f"{tmp}/server"}
        started = time.perf_counter()
        server = subprocess.Popen([str(Path(sys.executable).with_name("prefect")), "server", "start", "--host",
                                   "127.0.0.1", "--port", str(port)], env=server_env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, start_new_session=True)
        api = f"http://127.0.0.1:{port}/api"
        try:
            deadline = time.monotonic() + 300
            while True:
                try:
                    with urllib.request.urlopen(f"{api}/health", timeout=2):
                        break
                except OSError:
                    if time.monotonic() > deadline:
                        raise SystemExit("prefect server did not start") from None
                    time.sleep(0.5)
            server_start = time.perf_counter() - started
            with_server = _run({**server_env, "PREFECT_API_URL": api})
        finally:
            os.killpg(server.pid, 15)
            server.wait(timeout=30)
    print(json.dumps({"benchmark": "prefect_startup", "ephemeral_fresh_home_s": round(fresh, 2),
                      "ephemeral_existing_home_s": round(existing, 2), "server_start_s": round(server_start, 2),
                      "with_running_server_s": round(with_server, 2),
                      "server_vs_ephemeral": round(with_server / existing, 3)}))


if __name__ == "__main__":
    main()
