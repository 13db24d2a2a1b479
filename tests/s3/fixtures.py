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
    try:
        import fsspec

        fsspec.filesystem("s3", skip_instance_cache=True).mkdir(BUCKET)
        yield server
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def s3_url(seaweed: SeaweedS3) -> str:
    """A fresh, empty prefix of the session's bucket: `s3://videorefer-tests/<unique>`."""
    return f"s3://{BUCKET}/{uuid.uuid4().hex[:12]}"
