"""A dataset root on a real S3-compatible store (SeaweedFS): one writer per root, atomic visibility, JSON I/O.

The lock is created by the store's create-if-absent (`If-None-Match: *`): a second writer, in another process,
is refused at once with a message naming the holder; the store itself refuses a second create of the lock key;
a lock left by a killed process is taken over; an upload is invisible until it is committed whole, and a failed
one leaves nothing.
"""

from __future__ import annotations

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


@pytest.fixture
def other_writer(s3_url: str):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, s3_url], cwd=REPO, stdout=subprocess.PIPE, text=True,
                            env=os.environ.copy())
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    yield s3_url, proc
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=60)


def test_a_second_writer_on_s3_is_refused_at_once_naming_the_holder(other_writer) -> None:
    url, proc = other_writer
    started = time.monotonic()
    with pytest.raises(RootLockedError) as caught, DatasetRoot(url).lock("second"):
        pytest.fail("took a lock another process holds")
    assert time.monotonic() - started < 10
    message = str(caught.value)
    assert f"pid {proc.pid} on {socket.gethostname()}" in message and "videorefer build --root" in message
    assert DatasetRoot(url).lock_holder().pid == proc.pid  # the holder keeps its lock


def test_a_writing_command_on_a_locked_s3_root_fails_with_one_line(other_writer) -> None:
    url, proc = other_writer
    result = CliRunner().invoke(app, ["export", "--root", url])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "RootLockedError" in lines[0] and f"pid {proc.pid}" in lines[0]


def test_the_store_refuses_a_second_create_of_the_lock(s3_url: str) -> None:
    root = DatasetRoot(s3_url)
    first, second = LockHolder.current("first"), LockHolder.current("second")
    assert root._create_lock(first) is True
    assert root._create_lock(second) is False  # refused by the store, not by a check before the write
    assert root.lock_holder().token == first.token


def test_a_lock_left_by_a_killed_process_on_s3_is_taken_over(other_writer) -> None:
    url, proc = other_writer
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    root = DatasetRoot(url)
    assert root.exists(LOCK_NAME)
    with root.lock("after the kill") as me:
        assert root.lock_holder().token == me.token
    assert not root.exists(LOCK_NAME)


def test_an_upload_is_invisible_until_committed_and_a_failed_one_leaves_nothing(s3_url: str) -> None:
    root = DatasetRoot(s3_url)
    with root.open_atomic("export/json/train.json") as handle:
        handle.write(b"[" + b"0," * 100_000)
        assert not DatasetRoot(s3_url).exists("export/json/train.json")
        handle.write(b"0]")
    assert root.read_json("export/json/train.json") == [0] * 100_001
    with pytest.raises(RuntimeError), root.open_atomic("stages/x/shard-000000.parquet") as handle:
        handle.write(b"half")
        raise RuntimeError("killed mid-write")
    assert root.listdir("stages/x") == []
    root.write_json("a/b.json", {"x": 1})
    assert root.read_json("a/b.json") == {"x": 1} and root.listdir("a") == ["b.json"]


def test_an_export_on_s3_names_videos_under_the_root_relative_to_it(s3_url: str) -> None:
    import dataclasses

    from engine.types import Sample, Task
    from flows.pipeline.export import _portable
    from storage.videorefer_json import export_video_root, write_export_files

    root = DatasetRoot(f"{s3_url}/root")
    sample = Sample(key="k", task=next(iter(Task)), video_uri=f"{s3_url}/root/videos/a.mp4", conversations=(),
                    objects=())
    assert _portable(root, sample).video_uri == "videos/a.mp4"  # the same bytes on any root
    outside = dataclasses.replace(sample, video_uri="s3://other/a.mp4")
    assert _portable(root, outside).video_uri == "s3://other/a.mp4"
    write_export_files(root, [{"video": "videos/a.mp4", "conversations": [], "annotation": []}])
    assert root.read_json("export/json/_export.json")["video_root"] == "../.."
    assert export_video_root(root) == f"{s3_url}/root"


def test_a_lock_another_client_wrote_after_a_listing_is_seen(s3_url: str) -> None:
    import dataclasses
    import json

    import fsspec

    root = DatasetRoot(s3_url)
    root.write_json("dataset.json", {})
    assert root.listdir("") == ["dataset.json"]  # a listing that a cache would keep
    other = LockHolder.current("videorefer build (another client)")
    other = dataclasses.replace(other, host="another-host")
    client = fsspec.filesystem("s3", skip_instance_cache=True)
    client.pipe_file(f"{s3_url}/{LOCK_NAME}".removeprefix("s3://"),
                     json.dumps(dataclasses.asdict(other)).encode())
    with pytest.raises(RootLockedError, match="another-host"), root.lock("second"):
        pytest.fail("took a lock another client holds")
