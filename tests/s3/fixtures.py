"""The S3 fixtures (registered for the whole suite by tests/conftest.py): one SeaweedFS per test session, started
and stopped here by its own handle, and a fresh `s3://` root per test.

The server listens on 127.0.0.1 at ports chosen at run time, with its data in its own temporary folder; the
standard AWS variables (`AWS_ENDPOINT_URL`, keys, region) point s3fs, and so every command, at it for the session.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.s3.seaweed import SeaweedS3

BUCKET = "videorefer-tests"


@pytest.fixture(scope="session")
def seaweed() -> Iterator[SeaweedS3]:
    directory = Path(tempfile.mkdtemp(prefix="videorefer-seaweed-"))
    server = SeaweedS3.start(directory)
    saved = {key: os.environ.get(key) for key in server.env()}
    os.environ.update(server.env())
    import fsspec

    # Bounded requests: a request that cannot complete fails and is retried instead of waiting forever (a test once
    # hung in `pipe_file` on a client left over from the test before it).
    saved_conf = fsspec.config.conf.get("s3")
    fsspec.config.conf["s3"] = {"config_kwargs": {"connect_timeout": 10, "read_timeout": 60,
                                                  "retries": {"max_attempts": 4, "mode": "standard"}}}
    try:
        fsspec.filesystem("s3", skip_instance_cache=True).mkdir(BUCKET)
        yield server
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if saved_conf is None:
            fsspec.config.conf.pop("s3", None)
        else:
            fsspec.config.conf["s3"] = saved_conf
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def s3_url(seaweed: SeaweedS3) -> Iterator[str]:
    """A fresh, empty prefix of the session's bucket: `s3://videorefer-tests/<unique>`; every test starts with new
    s3fs clients (fsspec caches them per process), so no connection state carries from one test to the next."""
    import fsspec

    fsspec.get_filesystem_class("s3").clear_instance_cache()
    yield f"s3://{BUCKET}/{uuid.uuid4().hex[:12]}"
    fsspec.get_filesystem_class("s3").clear_instance_cache()
