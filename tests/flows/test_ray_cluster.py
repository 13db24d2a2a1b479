"""`--runner ray` on a real 2-node Ray cluster started and stopped by this module, on loopback addresses.

The head (127.0.0.2, 2 CPUs) and a worker node (127.0.0.3, 1 CPU and the custom resource `accel`, standing in for a
GPU) are `ray start --block` processes in their own process groups, on free ports, with their own `--temp-dir` and the
session's token (`RAY_AUTH_MODE=token`, see ENVIRONMENT.md, tests/conftest.py); they are stopped by killing those
groups (never `ray stop`, which would stop every Ray of the machine). The build joins the cluster through
`RAY_ADDRESS`.
One build checks placement (every GPU-stage task ran on the node holding `accel`) and the export against the
default build's; another has its worker node killed with SIGKILL as soon as a GPU-stage task started there: a
replacement node joins, Ray re-runs the lost work there and the export is byte-identical again.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flows import engine_flows
from flows.runtime import run_flow
from tests.flows.conftest import make_inputs, write_config
from tests.flows.test_task_runners import export_digest

pytestmark = pytest.mark.timeout(900)

HEAD_IP, WORKER_IP, REPLACEMENT_IP = "127.0.0.2", "127.0.0.3", "127.0.0.4"
RAY = str(Path(sys.executable).with_name("ray"))
GPU_STAGES = "segment,short_captions"
START_TIMEOUT_S = 240


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class Cluster:
    """`ray start --block` processes this test owns, each in its own process group."""

    def __init__(self, temp_dir: Path, env: dict[str, str]) -> None:
        self.temp_dir, self.env = temp_dir, env
        self.port = _free_port(HEAD_IP)
        self.address = f"{HEAD_IP}:{self.port}"
        self.nodes: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, ip: str, *, head: bool = False, cpus: int = 1, resources: dict[str, int] | None = None) -> None:
        command = [RAY, "start", "--block", "--node-ip-address", ip, "--num-cpus", str(cpus), "--temp-dir",
                   str(self.temp_dir), "--disable-usage-stats", "--dashboard-agent-listen-port", str(_free_port(ip))]
        if head:
            command += ["--head", "--port", str(self.port), "--include-dashboard", "false", "--dashboard-port",
                        str(_free_port(ip)), "--ray-client-server-port", str(_free_port(ip))]
        else:
            command += ["--address", self.address]
        if resources:
            command += ["--resources", json.dumps(resources)]
        log = (self.temp_dir / f"node-{ip}.log").open("wb")
        self.nodes[ip] = subprocess.Popen(command, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                          start_new_session=True)

    def kill(self, ip: str) -> None:
        """SIGKILL the node's whole process group (its raylet, workers and `ray start`)."""
        process = self.nodes.pop(ip)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)

    def stop(self) -> None:
        for ip in list(self.nodes):
            self.kill(ip)

    def wait_for_nodes(self, ips: set[str]) -> None:
        """Until exactly `ips` are the cluster's alive nodes (seen from a short-lived driver)."""
        code = (
            "import json, sys, ray\n"
            f"ray.init(address={self.address!r}, _node_ip_address={HEAD_IP!r}, logging_level='ERROR')\n"
            "print(json.dumps(sorted(n['NodeManagerAddress'] for n in ray.nodes() if n['Alive'])))\n"
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            for ip, process in self.nodes.items():
                log = (self.temp_dir / f"node-{ip}.log").read_text()
                assert process.poll() is None, f"ray node {ip} exited: {log[-2000:]}"
            done = subprocess.run([sys.executable, "-c", code], env=self.env, capture_output=True, text=True,
                                  timeout=120, check=False)
            if done.returncode == 0 and set(json.loads(done.stdout.strip().splitlines()[-1])) == ips:
                return
            time.sleep(1)
        raise AssertionError(f"the Ray nodes {sorted(ips)} did not come up in {START_TIMEOUT_S} s")


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[Cluster]:
    temp_dir = Path(tempfile.mkdtemp(prefix="vr-ray-"))  # short: Ray's socket paths live under it
    # tests/conftest.py sets these before anything imports ray (it reads the auth mode once, at import)
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": os.environ.get("RAY_AUTH_TOKEN") or secrets.token_hex(32),
            "RAY_USAGE_STATS_ENABLED": "0"}
    cluster = Cluster(temp_dir, {**os.environ, **auth})
    saved = {name: os.environ.get(name) for name in (*auth, "RAY_ADDRESS", "VIDEOREFER_RAY_NODE_IP",
                                                     "VIDEOREFER_RAY_GPU_RESOURCE", "VIDEOREFER_GPU_STAGES")}
    try:
        cluster.start(HEAD_IP, head=True, cpus=2)
        cluster.start(WORKER_IP, cpus=1, resources={"accel": 1})
        cluster.wait_for_nodes({HEAD_IP, WORKER_IP})
        # The driver (this process) joins as Ray's convention says, with the settings the CLI options write.
        os.environ.update({**auth, "RAY_ADDRESS": cluster.address, "VIDEOREFER_RAY_NODE_IP": HEAD_IP,
                           "VIDEOREFER_RAY_GPU_RESOURCE": "accel", "VIDEOREFER_GPU_STAGES": GPU_STAGES})
        yield cluster
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        cluster.stop()
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def reference(prefect_server: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """The corpus (several shards), and the export of the default build of it (threads here, see conftest)."""
    template = tmp_path_factory.mktemp("ray-corpus")
    make_inputs(template, clips=6, qa_clips=1)
    write_config(template / "ray.yaml", shard_size=2)
    root = tmp_path_factory.mktemp("ray-reference") / "root"
    shutil.copytree(template, root)
    run_flow(engine_flows.build, root=str(root), manifest=str(root / "manifest.jsonl"),
             config_path=str(root / "ray.yaml"))
    return template, export_digest(root)


def _copy(template: Path, tmp_path: Path) -> Path:
    root = tmp_path / "root"
    shutil.copytree(template, root)
    return root


def _build_on_ray(root: Path) -> dict[str, Any]:
    return run_flow(engine_flows.build, runner="ray", root=str(root), manifest=str(root / "manifest.jsonl"),
                    config_path=str(root / "ray.yaml"))


def test_gpu_stage_tasks_run_only_on_the_node_with_the_resource_and_the_export_matches(
    ray_cluster: Cluster, reference: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    template, expected = reference
    root = _copy(template, tmp_path)
    report = _build_on_ray(root)
    tasks = [row for row in report["tasks"] if row["stage"] != "ingest"]
    gpu = [row for row in tasks if row["stage"] in GPU_STAGES.split(",")]
    shards = sum(row["stage"] == "export" for row in tasks)
    assert shards >= 3 and len(gpu) == 2 * shards and {row["node"] for row in gpu} == {WORKER_IP}
    assert {row["node"] for row in tasks} <= {HEAD_IP, WORKER_IP} and all(row["pid"] for row in tasks)
    assert export_digest(root) == expected


def test_a_worker_node_killed_mid_build_is_replaced_and_the_export_is_byte_identical(
    ray_cluster: Cluster, reference: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    template, expected = reference
    root = _copy(template, tmp_path)
    outcome: dict[str, Any] = {}

    def build() -> None:
        try:
            outcome["report"] = _build_on_ray(root)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            outcome["error"] = exc

    thread = threading.Thread(target=build, daemon=True)
    thread.start()
    started = root / "reports" / "tasks"
    deadline = time.monotonic() + 300
    while not any(json.loads(path.read_text())["node"] == WORKER_IP
                  for stage in GPU_STAGES.split(",") for path in (started / stage).glob("*.json")):
        assert thread.is_alive() and time.monotonic() < deadline, outcome.get("error", "no GPU task started")
        time.sleep(0.05)
    ray_cluster.kill(WORKER_IP)  # SIGKILL mid-build: its running task and its worker processes are lost
    ray_cluster.start(REPLACEMENT_IP, cpus=1, resources={"accel": 1})
    thread.join(timeout=400)
    assert not thread.is_alive(), "the build did not finish after the replacement node joined"
    assert "error" not in outcome, outcome.get("error")
    gpu = [row for row in outcome["report"]["tasks"] if row["stage"] in GPU_STAGES.split(",")]
    assert REPLACEMENT_IP in {row["node"] for row in gpu}  # the lost and the waiting GPU work ran on the new node
    assert {row["node"] for row in gpu} <= {WORKER_IP, REPLACEMENT_IP}
    assert export_digest(root) == expected
