"""The CLI says what it waits for when a command starts Prefect's local API, and names the fast path."""

from __future__ import annotations

from flows import runtime


def test_the_ephemeral_api_start_is_announced_with_the_fast_path(capsys, monkeypatch) -> None:
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    assert runtime.run_flow(lambda: 7) == 7  # any callable stands in for a flow here
    notice = capsys.readouterr().err
    assert "starting Prefect's local API" in notice and "PREFECT_API_URL=" in notice
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:4200/api")
    assert runtime.run_flow(lambda: 8) == 8
    assert capsys.readouterr().err == ""  # a running server: nothing to announce
