"""Fixtures of the flow tests: one Prefect test server per session, tiny engine configs, demo corpora.

Prefect's test harness is slow to start (10-15 s), so one session-scoped server serves every flow test;
the heartbeat thread is switched off inside it. Corpora are the demo's synthetic clips at a small size.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from engine.config import EngineConfig, parse_config

TINY = {
    "base_profile": "offline",
    "shard_size": 3,
    "concurrency": 4,
    "sampling": {"num_frames": 4, "mask_frames": 4, "image_size": 48, "patch_size": 8},
}
CLIP_SIZE = {"width": 96, "height": 72, "num_frames": 12, "fps": 12.0}


def tiny_config(**overrides: Any) -> EngineConfig:
    return parse_config({**TINY, **overrides})


def write_config(path: Path, **overrides: Any) -> Path:
    path.write_text(yaml.safe_dump({**TINY, **overrides}))
    return path


def make_inputs(root: Path, *, clips: int = 4, qa_clips: int = 1, videos: Path | None = None) -> Path:
    """The demo's corpus (synthetic clips + QA clips) at test size; returns the manifest."""
    from flows.demo import prepare_demo

    return prepare_demo(root, clips=clips, qa_clips=qa_clips, videos=videos, clip_kwargs=CLIP_SIZE)


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[str]:
    """A Prefect test server for the whole session; yields its API URL (for subprocesses)."""
    from prefect.settings import PREFECT_API_URL, PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    with (
        prefect_test_harness(server_startup_timeout=60),
        temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}),
    ):
        url = str(PREFECT_API_URL.value())
        before = os.environ.get("PREFECT_API_URL")
        os.environ["PREFECT_API_URL"] = url  # CLI commands see a server, so they start no local API of their own
        try:
            yield url
        finally:
            if before is None:
                os.environ.pop("PREFECT_API_URL", None)
            else:
                os.environ["PREFECT_API_URL"] = before


@pytest.fixture(scope="session")
def corpus_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A prepared (not ingested) corpus, made once and copied by `corpus`."""
    root = tmp_path_factory.mktemp("corpus-template")
    make_inputs(root)
    return root


@pytest.fixture
def corpus(tmp_path: Path, corpus_template: Path) -> tuple[Path, Path]:
    """A fresh dataset root holding the template corpus; returns (root, manifest)."""
    root = tmp_path / "root"
    shutil.copytree(corpus_template, root)
    return root, root / "manifest.jsonl"
