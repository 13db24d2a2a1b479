"""How the CLI and tests run engine flows: quiet offline Prefect settings, a local API that dies with its command.

Without `PREFECT_API_URL` (in the environment, a profile or a test harness) a flow needs a Prefect API: instead
of Prefect's in-process ephemeral server, `start_local_api` spawns the same server (`uvicorn` on
`prefect.server.api.server:create_app`, SQLite under `PREFECT_HOME`) as a child that dies with its parent
(`PR_SET_PDEATHSIG` on Linux, so a `kill -9` of the CLI leaves no orphan holding the port and the database; at exit
it is stopped), started before the heavy imports so that both run at once, with the server services a CLI run does
not need switched off and migrations skipped when this Prefect version already migrated the database. A start-up
that fails or passes `PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS` is one `PrefectStartupError` line saying
what to do. The environment defaults below must be set before prefect is first imported (`quiet_prefect_env`); the
heartbeat can only be switched off in code (`temporary_settings`), and that saves about a second per flow.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from engine.errors import ConfigError

STARTUP_TIMEOUT_ENV = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
QUIET_ENV = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_LOGGING_LEVEL": "WARNING",
    # The task-run recorder's SQLite writes cause random multi-second stalls on the ephemeral API.
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_ENABLED": "false",
    # A loaded 2-core machine took 60-80 s; Prefect's 90 s default failed 2 of ~12 starts there.
    STARTUP_TIMEOUT_ENV: "180",
}

# Only for the local API a command starts for itself: services that serve a UI, automations or event feeds.
LOCAL_API_ENV = {
    "PREFECT_UI_ENABLED": "0",
    "PREFECT__SERVER_EPHEMERAL": "1",
    "PREFECT__SERVER_FINAL": "1",
    "PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_ENABLED": "false",
    "PREFECT_SERVER_SERVICES_EVENT_LOGGER_ENABLED": "false",
    "PREFECT_SERVER_EVENTS_STREAM_OUT_ENABLED": "false",
    "PREFECT_SERVER_LOGS_STREAM_OUT_ENABLED": "false",
}
_DATABASE_URL_ENV = ("PREFECT_SERVER_DATABASE_CONNECTION_URL", "PREFECT_API_DATABASE_CONNECTION_URL")

EPHEMERAL_NOTICE = (
    "starting Prefect's local API for this command (tens of seconds on a busy machine); to skip it, keep "
    "`prefect server start` running and set PREFECT_API_URL=http://127.0.0.1:4200/api"
)


def quiet_prefect_env() -> None:
    """Default the offline/quiet settings (values already in the environment win)."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)


@contextlib.contextmanager
def fast_prefect() -> Iterator[None]:
    """Switch off the per-flow heartbeat thread for the flows run inside this block."""
    quiet_prefect_env()
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


# ---------------------------------------------------------------- the local API, a child that dies with its parent


class PrefectStartupError(ConfigError):
    """The local Prefect API did not come up; the message is one line saying what to do."""


def _prctl() -> Any:
    # Looked up in the parent: the child only calls it (no dynamic loading between fork and exec).
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def die_with_parent() -> Callable[[], None] | None:
    """A `preexec_fn` that makes the child get SIGKILL when the thread that spawned it dies (Linux), or None."""
    prctl = _prctl()
    if prctl is None:
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before prctl: nobody would signal us
            os._exit(1)

    return preexec


def server_command(port: int) -> list[str]:
    """How Prefect runs its ephemeral server (`SubprocessASGIServer`), on `port`."""
    import importlib.util

    spec = importlib.util.find_spec("prefect")
    app_dir = Path(spec.origin).resolve().parents[1] if spec and spec.origin else Path(sys.prefix)
    return [sys.executable, "-m", "uvicorn", "--app-dir", str(app_dir), "--factory",
            "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(port), "--log-level",
            "error", "--lifespan", "on"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _migrated_marker() -> Path | None:
    """A file saying this Prefect version migrated the default SQLite database (None: another database)."""
    if any(os.environ.get(name) for name in _DATABASE_URL_ENV):
        return None
    from importlib.metadata import version

    return _prefect_home() / f".videorefer-migrated-{version('prefect')}"


def _prefect_home() -> Path:
    return Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect").expanduser()


class LocalApi:
    """A Prefect API server child on a free local port; `wait_ready` blocks until it answers `/health`."""

    def __init__(self, command: Callable[[int], Sequence[str]] = server_command) -> None:
        self._command = command
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - the child's stderr (for the failure line), kept open
        self._marker = _migrated_marker()
        self._skip_migrations = bool(self._marker and self._marker.is_file() and self._db_exists())
        self.process: subprocess.Popen[bytes] | None = None
        self.ready = False
        self.started = time.perf_counter()
        self._spawn()
        atexit.register(self.stop)

    @staticmethod
    def _db_exists() -> bool:
        return (_prefect_home() / "prefect.db").is_file()

    def _spawn(self) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/api"
        env = {**os.environ, **LOCAL_API_ENV}
        env.pop("PREFECT_API_URL", None)
        if self._skip_migrations:
            env["PREFECT_SERVER_DATABASE_MIGRATE_ON_START"] = "false"
        self.process = subprocess.Popen(list(self._command(self.port)), env=env, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=self._log, preexec_fn=die_with_parent())

    def wait_ready(self, timeout_s: float | None = None) -> str:
        """The API URL once the server answers; `PrefectStartupError` (server stopped) when it does not in time."""
        if self.ready:
            return self.url
        if timeout_s is None:
            timeout_s = float(os.environ.get(STARTUP_TIMEOUT_ENV) or QUIET_ENV[STARTUP_TIMEOUT_ENV])
        deadline = self.started + timeout_s
        respawns = 0
        while True:
            assert self.process is not None
            code = self.process.poll()
            if code == 3 and respawns < 3:  # uvicorn: the port was taken between our probe and its bind
                respawns += 1
                self._spawn()
                continue
            if code is not None:
                self._fail(f"Prefect's local API exited with code {code} while starting ({self._last_error()})")
            if self._healthy():
                self.ready = True
                if self._marker is not None and not self._skip_migrations:
                    with contextlib.suppress(OSError):
                        self._marker.touch()
                return self.url
            if time.perf_counter() > deadline:
                self._fail(f"Prefect's local API did not start within {timeout_s:g} s")
            time.sleep(0.1)

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as reply:
                return reply.status == 200
        except OSError:
            return False

    def _last_error(self) -> str:
        self._log.seek(0)
        lines = [line.strip() for line in self._log.read().decode("utf-8", "replace").splitlines() if line.strip()]
        return lines[-1][:300] if lines else "no output"

    def _fail(self, what: str) -> None:
        self.stop()
        raise PrefectStartupError(
            f"{what}: point PREFECT_API_URL at a running server (`prefect server start`, then "
            f"PREFECT_API_URL=http://127.0.0.1:4200/api) or raise {STARTUP_TIMEOUT_ENV} "
            f"(now {os.environ.get(STARTUP_TIMEOUT_ENV) or QUIET_ENV[STARTUP_TIMEOUT_ENV]})"
        )

    def stop(self) -> None:
        process, self.process = self.process, None
        self.ready = False
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


_LOCAL: dict[str, LocalApi] = {}
_LOCAL_GUARD = threading.Lock()


def start_local_api(*, force: bool = False) -> LocalApi | None:
    """Start (once per process) the local API unless PREFECT_API_URL is in the environment; does not wait.

    Call it early (before importing prefect and the pipeline): the server starts while they import. `force`
    starts it whatever the environment says (the caller found no API URL in Prefect's settings).
    """
    if os.environ.get("PREFECT_API_URL") and not force:
        return None
    quiet_prefect_env()
    with _LOCAL_GUARD:
        api = _LOCAL.get("api")
        if api is None or api.process is None:
            print(EPHEMERAL_NOTICE, file=sys.stderr, flush=True)
            api = _LOCAL["api"] = LocalApi()
        return api


def stop_local_api() -> None:
    """Stop this process's local API, if it started one."""
    with _LOCAL_GUARD:
        api = _LOCAL.pop("api", None)
    if api is not None:
        api.stop()


@contextlib.contextmanager
def _environ(name: str, value: str) -> Iterator[None]:
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def run_name(kind: str, *keys: str) -> Any:
    """A `flow_run_name` callable: `<kind>-<last path part of each parameter in keys>-<UTC time>`, e.g.
    `build-demo_out-20261201T231500` or `stage-refine-demo_out-...`, so a run list says what each run did."""

    def name() -> str:
        from pathlib import PurePath

        from prefect.runtime import flow_run

        parameters = flow_run.parameters or {}
        parts = [PurePath(str(parameters.get(key) or "")).name or str(parameters.get(key) or "") for key in keys]
        return "-".join([kind, *(part for part in parts if part), time.strftime("%Y%m%dT%H%M%S", time.gmtime())])

    return name


def run_flow(flow_obj: Any, *, runner: str | None = None, **params: Any) -> Any:
    """Call an engine flow with `params` on the chosen task runner (`flows.task_runners`; None: the environment's,
    by default a process per core).

    Prefect's settings name no API (no PREFECT_API_URL, no harness): the flow runs against this process's local
    API (`start_local_api`, started now unless the command already started it), which announces itself.
    """
    quiet_prefect_env()
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with contextlib.ExitStack() as stack:
        if runner == "prefect" and not os.environ.get("PREFECT_API_URL"):
            raise ConfigError("--runner prefect hands stage tasks to `videorefer worker` processes through a Prefect "
                              "server: start `prefect server start` and set PREFECT_API_URL for the build and workers")
        if PREFECT_API_URL.value():
            if not os.environ.get("PREFECT_API_URL"):
                stop_local_api()  # a profile or harness names a server: the early start was not needed
        else:
            api = start_local_api(force=True)
            assert api is not None
            url = api.wait_ready()
            stack.enter_context(temporary_settings(updates={PREFECT_API_URL: url}))
            stack.enter_context(_environ("PREFECT_API_URL", url))  # worker processes (Ray) find the same API
        stack.enter_context(fast_prefect())
        if runner is not None:
            from flows.task_runners import RUNNER_ENV, RunnerSettings, check_runner, make_task_runner

            stack.enter_context(_environ(RUNNER_ENV, check_runner(runner)))  # worker processes see the same choice
            flow_obj = flow_obj.with_options(task_runner=make_task_runner(RunnerSettings.from_env()))
        return flow_obj(**params)
