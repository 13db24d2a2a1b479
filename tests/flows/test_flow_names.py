"""Prefect flow names say what they do and follow one pattern (`engine-build`, `engine-stage-<name>`, ...)."""

from __future__ import annotations

import re


def test_every_flow_is_named_after_its_area_and_job() -> None:
    from flows import engine_flows, evaluation, training
    from flows.pipeline.stages import STAGES

    names = {engine_flows.build.name, engine_flows.ingest.name, engine_flows.import_700k.name,
             training.train_stage.name, evaluation.evaluate_checkpoint.name}
    assert names == {"engine-build", "engine-ingest", "engine-import-700k", "train-stage", "evaluate-checkpoint"}
    stage_names = {flow.name for flow in engine_flows.STAGE_FLOWS.values()}
    assert stage_names == {f"engine-stage-{s.name.replace('_', '-')}" for s in STAGES if s.per_shard}
    assert all(re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", name) for name in names | stage_names)
