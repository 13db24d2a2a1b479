"""How the CLI and tests run engine flows: quiet offline Prefect settings, no heartbeat, a chosen task runner.

Without `PREFECT_API_URL` a flow starts Prefect's local ephemeral API in-process (SQLite under
`PREFECT_HOME`), so `videorefer demo` needs no server. The environment defaults below must be set before
prefect is first imported (`quiet_prefect_env`); the heartbeat can only be switched off in code
(`temporary_settings`), and that saves about a second per synchronous flow.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

QUIET_ENV = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_LOGGING_LEVEL": "WARNING",
    # The task-run recorder's SQLite writes cause random multi-second stalls on the ephemeral API.
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
}


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


EPHEMERAL_NOTICE = (
    "starting Prefect's local API for this command (tens of seconds on a busy machine); to skip it, keep "
    "`prefect server start` running and set PREFECT_API_URL=http://127.0.0.1:4200/api"
)


def run_name(kind: str, *keys: str) -> Any:
    """A `flow_run_name` callable: `<kind>-<last path part of each parameter in keys>-<UTC time>`, e.g.
    `build-demo_out-20261201T231500` or `stage-refine-demo_out-...`, so a run list says what each run did."""

    def name() -> str:
        import time
        from pathlib import PurePath

        from prefect.runtime import flow_run

        parameters = flow_run.parameters or {}
        parts = [PurePath(str(parameters.get(key) or "")).name or str(parameters.get(key) or "") for key in keys]
        return "-".join([kind, *(part for part in parts if part), time.strftime("%Y%m%dT%H%M%S", time.gmtime())])

    return name


def run_flow(flow_obj: Any, *, runner: str = "local", **params: Any) -> Any:
    """Call an engine flow with `params` on the chosen task runner (`local` threads or `ray`).

    Without `PREFECT_API_URL` the flow starts Prefect's ephemeral API first: say so on stderr, with the fast path.
    """
    if not os.environ.get("PREFECT_API_URL"):
        import sys

        print(EPHEMERAL_NOTICE, file=sys.stderr, flush=True)
    with fast_prefect():
        if runner != "local":
            from flows.engine_flows import task_runner

            flow_obj = flow_obj.with_options(task_runner=task_runner(runner))
        return flow_obj(**params)
