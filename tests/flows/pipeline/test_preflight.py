"""Before any stage starts: a backend that is down or a missing manifest fails at once, with one clear line."""

from __future__ import annotations

import socket
import time

import pytest

from agents.backends.stub_server import StubOpenAIServer
from engine.errors import BackendUnavailableError, ConfigError
from flows.pipeline.preflight import check_run
from tests.flows.conftest import tiny_config


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _with_refiner(url: str):
    agents = {**tiny_config().agents.model_dump(), "refiner": {"kind": "openai", "base_url": url, "model": "m"}}
    return tiny_config(agents=agents)


def test_a_backend_that_is_down_fails_before_any_stage_with_one_line() -> None:
    url = f"http://127.0.0.1:{_closed_port()}/v1"
    started = time.monotonic()
    with pytest.raises(BackendUnavailableError) as error:
        check_run(_with_refiner(url), ["analyze", "refine"])
    assert time.monotonic() - started < 10 and "refiner" in str(error.value) and url in str(error.value)
    assert "\n" not in str(error.value)
    check_run(_with_refiner(url), ["analyze"])  # a stage that does not call it is not held up


def test_a_server_that_answers_passes_and_a_missing_manifest_is_one_line(tmp_path) -> None:
    with StubOpenAIServer() as server:
        check_run(_with_refiner(server.base_url), ["refine"])
    with pytest.raises(ConfigError, match="manifest not found"):
        check_run(tiny_config(), ["analyze"], manifest=str(tmp_path / "absent.csv"))
