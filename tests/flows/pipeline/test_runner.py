"""`run_stage` and export without Prefect: the whole chain, skip when done, re-run only what a change touches."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import webdataset as wds

from engine.config import EngineConfig, FakeChatConfig
from flows.pipeline import layout
from flows.pipeline.export import exported_tars
from flows.pipeline.ingest import ingest
from flows.pipeline.reports import RejectFractionExceededError, RunReport, StageReport
from flows.pipeline.runner import StageNotReadyError, run_stage
from flows.pipeline.stages import SHARD_STAGES
from tests.flows.conftest import tiny_config


def build_plain(root: Path, manifest: Path, config: EngineConfig) -> list[StageReport]:
    reports = [ingest(root, manifest, config).report]
    for shard in layout.shards(layout.open_root(root)):
        reports.extend(run_stage(root, stage, shard, config) for stage in SHARD_STAGES)
    return reports


def export_digest(root: Path) -> dict[str, str]:
    return {Path(t).name: hashlib.sha256(Path(t).read_bytes()).hexdigest() for t in exported_tars(root)}


def table_mtimes(root: Path, stage: str) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in sorted((root / "stages" / stage).glob("*.parquet"))}


def test_the_chain_produces_all_three_tasks_readable_by_plain_webdataset(corpus) -> None:
    root, manifest = corpus
    reports = build_plain(root, manifest, tiny_config())
    run = RunReport.from_stage_reports(reports, run_id="t", wall_seconds=0.0)
    figures = {f.stage: f for f in run.stages}
    assert figures["analyze"].items_in == 4 and figures["generate_qa"].items_in == 1
    assert figures["export"].items_out > 0
    tasks = set()
    samples = 0
    for sample in wds.WebDataset(exported_tars(root), shardshuffle=False).decode("rgb8"):
        tasks.add(sample["json"]["task"])
        frames = [key for key in sample if key.endswith(".jpg")]
        assert len(frames) == 4 and sample[frames[0]].shape == (48, 48, 3)
        samples += 1
    assert tasks == {"detailed", "short", "qa"}
    assert samples == figures["export"].items_out
    assert (root / "export" / "json").is_dir() and list((root / "export" / "json").glob("*.json"))


def test_a_second_run_skips_every_stage_and_changes_nothing(corpus) -> None:
    root, manifest = corpus
    config = tiny_config()
    build_plain(root, manifest, config)
    before = export_digest(root), table_mtimes(root, "segment")
    again = build_plain(root, manifest, config)
    assert all(r.skipped for r in again)
    assert (export_digest(root), table_mtimes(root, "segment")) == before


def test_a_refiner_change_reruns_refine_and_after_only(corpus) -> None:
    root, manifest = corpus
    config = tiny_config()
    build_plain(root, manifest, config)
    segment_tables = table_mtimes(root, "segment")
    agents = config.agents.model_copy(update={"refiner": FakeChatConfig(seed=5)})
    changed = config.model_copy(update={"agents": agents})
    reports = build_plain(root, manifest, changed)
    ran = {r.stage for r in reports if not r.skipped}
    assert ran == {"refine", "generate_qa", "export"}
    assert table_mtimes(root, "segment") == segment_tables


def test_each_stage_can_be_rerun_alone_with_the_same_result(corpus) -> None:
    root, manifest = corpus
    config = tiny_config()
    build_plain(root, manifest, config)
    digest = export_digest(root)
    shard = layout.shards(layout.open_root(root))[0]
    for stage in SHARD_STAGES:
        report = run_stage(root, stage, shard, config, force=True)
        assert not report.skipped
    assert export_digest(root) == digest


def test_a_stage_whose_input_is_not_done_fails_fast(corpus) -> None:
    root, manifest = corpus
    config = tiny_config()
    ingest(root, manifest, config)
    shard = layout.shards(layout.open_root(root))[0]
    with pytest.raises(StageNotReadyError, match="analyze"):
        run_stage(root, "annotate", shard, config)


def test_the_same_inputs_give_byte_identical_exports_on_another_root(corpus, tmp_path: Path) -> None:
    root, manifest = corpus
    other = tmp_path / "other"
    shutil.copytree(root, other)
    build_plain(root, manifest, tiny_config())
    build_plain(other, other / manifest.name, tiny_config())
    assert export_digest(root) == export_digest(other) != {}


def test_reject_fraction_above_the_bound_raises_with_the_reasons() -> None:
    reports = [
        StageReport(stage="annotate", shard_id="s0", config_hash="h", items_in=10, items_out=2,
                    rejects={"static_object": 8}),
        StageReport(stage="refine", shard_id="s0", config_hash="h", items_in=2, items_out=2),
    ]
    run = RunReport.from_stage_reports(reports, run_id="t", wall_seconds=1.0)
    run.check_reject_fraction(0.9)
    with pytest.raises(RejectFractionExceededError, match="annotate: 8/10 rejected.*static_object=8"):
        run.check_reject_fraction(0.5)
