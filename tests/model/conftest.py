"""Shared fixtures of the model tests: one tiny random VideoRefer saved once per session, a tiny processor."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny VideoRefer folder (model + tokenizer + processor), built once."""
    from model.inference import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("videorefer") / "tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_processor(tiny_model_dir: Path):
    from model.processing import VideoReferProcessor

    return VideoReferProcessor.from_pretrained(tiny_model_dir)
