"""The local API's start-up cuts: migrations run once per Prefect version and database, then are skipped."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from flows.runtime import LocalApi

# A stand-in server: answers /api/health and writes the environment it was started with.
RECORDING = (
    "import http.server, json, os, sys\n"
    "open(sys.argv[2], 'w').write(json.dumps(dict(os.environ)))\n"
    "class H(http.server.BaseHTTPRequestHandler):\n"
    "    def do_GET(self):\n"
    "        self.send_response(200); self.end_headers()\n"
    "    def log_message(self, *a): pass\n"
    "http.server.HTTPServer(('127.0.0.1', int(sys.argv[1])), H).serve_forever()\n"
)


def _start(dump: Path) -> dict[str, str]:
    api = LocalApi(command=lambda port: [sys.executable, "-c", RECORDING, str(port), str(dump)])
    try:
        api.wait_ready(timeout_s=120)
    finally:
        api.stop()
    return json.loads(dump.read_text())


def test_migrations_are_skipped_once_this_prefect_version_migrated_the_database(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("PREFECT_SERVER_DATABASE_CONNECTION_URL", raising=False)
    monkeypatch.delenv("PREFECT_API_DATABASE_CONNECTION_URL", raising=False)
    (tmp_path / "home").mkdir()
    first = _start(tmp_path / "first.json")  # no database yet: the server creates and migrates it
    assert "PREFECT_SERVER_DATABASE_MIGRATE_ON_START" not in first
    (tmp_path / "home" / "prefect.db").write_bytes(b"")  # what that server would have left
    second = _start(tmp_path / "second.json")
    assert second["PREFECT_SERVER_DATABASE_MIGRATE_ON_START"] == "false"
    assert second["PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED"] == "false" and "PREFECT_API_URL" not in second
    (tmp_path / "home" / "prefect.db").unlink()  # a deleted database is created and migrated again
    assert "PREFECT_SERVER_DATABASE_MIGRATE_ON_START" not in _start(tmp_path / "third.json")
    monkeypatch.setenv("PREFECT_SERVER_DATABASE_CONNECTION_URL", "postgresql+asyncpg://db/prefect")
    (tmp_path / "home" / "prefect.db").write_bytes(b"")
    assert "PREFECT_SERVER_DATABASE_MIGRATE_ON_START" not in _start(tmp_path / "fourth.json")  # not ours to skip
