"""One writer per dataset root: an exclusive lock naming its holder, stale locks taken over, unique temp names.

A second writer (another process, or a CLI command) fails at once with the holder's pid, host and command; a
lock left by a process killed with -9 (or whose pid now names another process) is taken over; two writers of the
same file never share a temporary name.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli import app
from storage.root import LOCK_NAME, DatasetRoot, LockHolder, RootLockedError

REPO = Path(__file__).resolve().parents[2]
HOLD = (
    "import sys, time\n"
    "from storage.root import DatasetRoot\n"
    "with DatasetRoot(sys.argv[1]).lock('videorefer build --root ' + sys.argv[1]):\n"
    "    print('held', flush=True)\n"
    "    time.sleep(600)\n"
)


def _holder(root: Path) -> subprocess.Popen:
    """Another process holding the root's lock (returns once it holds it)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(root)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


@pytest.fixture
def other_writer(tmp_path: Path):
    root = tmp_path / "root"
    proc = _holder(root)
    yield root, proc
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=60)


def test_a_second_writer_fails_at_once_naming_the_holder(other_writer) -> None:
    root, proc = other_writer
    with pytest.raises(RootLockedError) as caught, DatasetRoot(root).lock("second"):
        pytest.fail("took a lock another process holds")
    message = str(caught.value)
    assert f"pid {proc.pid} on {socket.gethostname()}" in message and "videorefer build --root" in message


@pytest.mark.parametrize("command", [["build"], ["stage", "refine"], ["export"], ["ingest", "--manifest", "m.jsonl"]])
def test_writing_commands_refuse_a_locked_root_with_one_line(other_writer, command: list[str]) -> None:
    root, proc = other_writer
    result = CliRunner().invoke(app, [*command, "--root", str(root)])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "RootLockedError" in lines[0] and f"pid {proc.pid}" in lines[0]
    assert proc.poll() is None and DatasetRoot(root).lock_holder().pid == proc.pid  # the holder keeps its lock


def test_a_lock_left_by_a_killed_process_is_taken_over(other_writer) -> None:
    root, proc = other_writer
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert (root / LOCK_NAME).is_file()  # kill -9 left it behind
    with DatasetRoot(root).lock("after the kill") as me:
        assert me.pid == os.getpid()
        assert DatasetRoot(root).lock_holder().token == me.token
    assert not (root / LOCK_NAME).exists()


def _write_lock(root: Path, **fields: object) -> None:
    root.mkdir(parents=True, exist_ok=True)
    holder = {"host": socket.gethostname(), "pid": os.getpid(), "started": "2026-01-01T00:00:00Z", "command": "x",
              "process_start": "", "token": "t", **fields}
    (root / LOCK_NAME).write_text(json.dumps(holder))


def test_a_reused_pid_is_not_the_holder(tmp_path: Path) -> None:
    # This process's pid, but another start time: the holder died and its pid went to us.
    _write_lock(tmp_path, process_start="1")
    with DatasetRoot(tmp_path).lock("new"):
        pass


def test_a_holder_on_another_host_is_respected(tmp_path: Path) -> None:
    _write_lock(tmp_path, host="some-other-host", pid=1)
    with pytest.raises(RootLockedError, match="some-other-host"), DatasetRoot(tmp_path).lock("new"):
        pass
    assert (tmp_path / LOCK_NAME).is_file()


def test_an_unreadable_old_lock_is_taken_over(tmp_path: Path) -> None:
    (tmp_path / LOCK_NAME).write_text("{half a lock")
    past = time.time() - 3600
    os.utime(tmp_path / LOCK_NAME, (past, past))
    with DatasetRoot(tmp_path).lock("new") as me:
        assert DatasetRoot(tmp_path).lock_holder() == me


def test_the_lock_is_reentrant_in_one_process_and_released_at_the_end(tmp_path: Path) -> None:
    root = DatasetRoot(tmp_path)
    with root.lock("cli") as outer, DatasetRoot(str(tmp_path) + "/").lock("flow") as inner:
        assert inner == outer
    assert root.lock_holder() is None


def test_a_memory_root_is_locked_too() -> None:
    root = DatasetRoot("memory://lock-test/root")
    other = LockHolder(host="elsewhere", pid=1, started="t", command="other build", token="o")
    root.write_json(LOCK_NAME, {name: getattr(other, name) for name in LockHolder.__dataclass_fields__})
    with pytest.raises(RootLockedError, match="other build"), root.lock("mine"):
        pass
    root.delete(LOCK_NAME)
    with root.lock("mine") as me:
        assert root.lock_holder() == me
    assert not root.exists(LOCK_NAME)


def test_two_writers_of_one_file_never_share_a_temporary_name(tmp_path: Path) -> None:
    root = DatasetRoot(tmp_path)
    with (
        root.open_atomic("out/a.tar", temp_name="a.tar.tmp") as first,
        root.open_atomic("out/a.tar", temp_name="a.tar.tmp") as second,
    ):
        first.write(b"first")
        second.write(b"second")
        assert len([p for p in (tmp_path / "out").iterdir() if p.name.startswith("a.tar.tmp")]) == 2
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.tar"]
    assert (tmp_path / "out" / "a.tar").read_bytes() == b"first"  # the writer that finished last wins, whole
