"""The `train_stage` Prefect flow (flows/training.py) launches the same torchrun stage and reports its summary.

Kept beside the other training tests (the area that owns the flow); runs on Prefect's local ephemeral API.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from model.training.synthetic import write_synthetic_shards

# Slow on the shared 2-core machine (Prefect's ephemeral server start plus a torchrun stage): deselected by default.
pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]


def test_train_stage_flow_trains_and_summarises(tmp_path: Path) -> None:
    from flows.runtime import fast_prefect
    from flows.training import train_stage

    write_synthetic_shards(tmp_path / "shards", shards=1, samples_per_shard=4, frames=4, size=64)
    with fast_prefect():
        summary = train_stage(recipe="tiny_stage1", data=[str(tmp_path / "shards" / "*.tar")],
                              out=str(tmp_path / "out"), max_steps=2, overrides={"num_workers": "0"})
    assert summary["steps"] == 2 and summary["loss"] > 0
    assert (Path(summary["model_dir"]) / "config.json").is_file()
