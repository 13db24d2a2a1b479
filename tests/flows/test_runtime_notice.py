"""The CLI says what it waits for when a command starts Prefect's local API, and names the fast path."""

from __future__ import annotations

from flows import runtime


def test_the_local_api_start_is_announced_with_the_fast_path(capsys, monkeypatch) -> None:
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    started = []
    monkeypatch.setattr(runtime, "LocalApi", lambda: started.append(1) or _Fake())
    api = runtime.start_local_api()
    try:
        notice = capsys.readouterr().err
        assert "starting Prefect's local API" in notice and "PREFECT_API_URL=" in notice
        assert runtime.start_local_api() is api and started == [1]  # once per process, announced once
        assert capsys.readouterr().err == ""
    finally:
        runtime.stop_local_api()
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:4200/api")
    assert runtime.start_local_api() is None
    assert capsys.readouterr().err == ""  # a running server: nothing to start, nothing to announce


class _Fake:
    """Stands in for the server child (its start-up is tested in tests/reliability/test_process_hygiene.py)."""

    process = object()

    def stop(self) -> None:
        self.process = None
