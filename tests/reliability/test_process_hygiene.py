"""Process hygiene: the local Prefect API a command starts dies with it, and a start-up that fails is one line.

A `kill -9` of the CLI must not leave its API server running (an orphan holding a port and the SQLite database);
a server that does not come up in time, or exits, gives one clear line naming what to do and a non-zero exit.
Processes are found by a marker in their environment (children inherit it), never by name.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from flows import runtime
from flows.runtime import STARTUP_TIMEOUT_ENV, LocalApi, PrefectStartupError

REPO = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-c", "from flows.cli import main; main()"]
SLEEPER = [sys.executable, "-c", "import time; time.sleep(600)"]
HEALTHY = (
    "import http.server, sys\n"
    "class H(http.server.BaseHTTPRequestHandler):\n"
    "    def do_GET(self):\n"
    "        self.send_response(200 if self.path == '/api/health' else 404); self.end_headers()\n"
    "    def log_message(self, *a): pass\n"
    "http.server.HTTPServer(('127.0.0.1', int(sys.argv[1])), H).serve_forever()\n"
)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _marked(marker: str) -> list[int]:
    """Live processes whose environment carries `marker`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and entry.name != str(os.getpid()):
            try:
                if marker.encode() in (entry / "environ").read_bytes() and _alive(int(entry.name)):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def _wait_until(condition, timeout_s: float = 120.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return condition()


def _env(tmp_path: Path, marker: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    return {**env, "PREFECT_HOME": str(tmp_path / "prefect-home"), "VIDEOREFER_TEST_MARK": marker,
            "PYTHONPATH": str(REPO), **extra}


def test_a_server_that_does_not_come_up_in_time_is_one_line_and_is_stopped() -> None:
    api = LocalApi(command=lambda port: SLEEPER)
    pid = api.process.pid
    with pytest.raises(PrefectStartupError) as caught:
        api.wait_ready(timeout_s=0.5)
    message = str(caught.value)
    assert "\n" not in message and "did not start within 0.5 s" in message
    assert "PREFECT_API_URL" in message and STARTUP_TIMEOUT_ENV in message
    assert api.process is None and not _alive(pid)


def test_a_server_that_exits_while_starting_says_why_in_one_line() -> None:
    api = LocalApi(command=lambda port: [sys.executable, "-c", "import sys; sys.exit('address in use: boom')"])
    with pytest.raises(PrefectStartupError, match=r"exited with code 1 while starting \(address in use: boom\)"):
        api.wait_ready(timeout_s=60)


def test_the_api_url_is_returned_once_the_server_answers_health() -> None:
    api = LocalApi(command=lambda port: [sys.executable, "-c", HEALTHY, str(port)])
    try:
        assert api.wait_ready(timeout_s=120) == f"http://127.0.0.1:{api.port}/api"
    finally:
        pid = api.process.pid
        api.stop()
    assert not _alive(pid)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_the_server_child_dies_when_its_parent_is_killed_with_minus_nine(tmp_path: Path) -> None:
    marker = uuid.uuid4().hex
    parent_code = (
        "import sys, time\n"
        "from flows.runtime import LocalApi\n"
        f"api = LocalApi(command=lambda port: {SLEEPER!r})\n"
        "print(api.process.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", parent_code], cwd=REPO, env=_env(tmp_path, marker),
                              stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    assert _alive(child)
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait(timeout=60)
    assert _wait_until(lambda: not _alive(child)), "the server child outlived its killed parent"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_kill_minus_nine_of_the_cli_during_a_run_leaves_no_prefect_server(tmp_path: Path) -> None:
    marker = uuid.uuid4().hex
    cli = subprocess.Popen([*CLI, "demo", "--root", str(tmp_path / "root"), "--clips", "2"], cwd=REPO,
                           env=_env(tmp_path, marker), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert _wait_until(lambda: any(pid != cli.pid for pid in _marked(marker))), "no server child started"
        os.kill(cli.pid, signal.SIGKILL)
        cli.wait(timeout=60)
        assert _wait_until(lambda: not _marked(marker)), f"orphans left: {_marked(marker)}"
    finally:
        for pid in _marked(marker):  # never leave one behind, whatever happened above
            os.kill(pid, signal.SIGKILL)


def test_a_start_up_timeout_of_the_cli_is_one_line_and_a_non_zero_exit(tmp_path: Path) -> None:
    marker = uuid.uuid4().hex
    done = subprocess.run([*CLI, "stage", "analyze", "--root", str(tmp_path / "root")], cwd=REPO,
                          env=_env(tmp_path, marker, **{STARTUP_TIMEOUT_ENV: "1"}), capture_output=True,
                          text=True, timeout=600, check=False)
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if line.strip() and runtime.EPHEMERAL_NOTICE not in line]
    assert len(errors) == 1, done.stderr
    assert "PrefectStartupError" in errors[0] and "PREFECT_API_URL" in errors[0] and STARTUP_TIMEOUT_ENV in errors[0]
    assert _wait_until(lambda: not _marked(marker)), "the server was left running after the failed start"
