"""Read-only checks of a dataset root: `status` on a root that is not one fails clearly."""

from __future__ import annotations

import pytest

from engine.errors import ConfigError
from flows.pipeline.checks import stage_status
from flows.pipeline.ingest import ingest
from tests.flows.conftest import tiny_config


def test_status_of_a_missing_root_is_an_error_not_zeros(tmp_path) -> None:
    with pytest.raises(ConfigError, match="not a dataset root"):
        stage_status(tmp_path / "nonexistent")


def test_status_counts_todo_shards_of_an_ingested_root(corpus) -> None:
    root, manifest = corpus
    config = tiny_config()
    from flows.pipeline import layout

    layout.ensure_dataset(layout.open_root(root), config)
    ingest(root, manifest, config)
    rows = {row["stage"]: row for row in stage_status(root)}
    assert rows["analyze"]["todo"] == len(layout.shards(layout.open_root(root))) and rows["analyze"]["done"] == 0


def test_an_empty_root_is_refused() -> None:
    from flows.pipeline import layout

    for empty in ("", "  "):
        with pytest.raises(ConfigError, match="dataset root is empty"):
            layout.open_root(empty)
