"""Engine logs carry per-shard figures: one line per (stage, shard) with items in / out / rejected and seconds."""

from __future__ import annotations

import logging

from flows import engine_flows
from flows.pipeline.ingest import ingest
from flows.pipeline.reports import StageReport
from tests.flows.conftest import tiny_config


def test_the_shard_line_names_stage_shard_items_rejects_and_seconds() -> None:
    report = StageReport(stage="review", shard_id="shard-000001", config_hash="h", items_in=5, items_out=3,
                         rejects={"review_rejected": 1, "item_error": 1}, seconds=1.234)
    assert engine_flows.shard_log_line(report) == (
        "review shard-000001: 5 in, 3 out, 2 rejected (item_error 1, review_rejected 1), 1.23 s"
    )


def test_every_stage_task_logs_its_shard_figures(corpus, caplog) -> None:
    root, manifest = corpus
    config = tiny_config()
    ingest(root, manifest, config)
    with caplog.at_level(logging.INFO, logger=engine_flows.__name__):
        report = engine_flows.stage_task.fn(str(root), "analyze", "shard-000000", config)
        again = engine_flows.stage_task.fn(str(root), "analyze", "shard-000000", config)
    lines = [record.getMessage() for record in caplog.records if record.name == engine_flows.__name__]
    assert lines == [engine_flows.shard_log_line(report), engine_flows.shard_log_line(again)]
    assert lines[0].startswith(f"analyze shard-000000: {report.items_in} in, {report.items_out} out")
    assert lines[1].endswith("(done before: skipped)")
