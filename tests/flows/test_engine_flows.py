"""The Prefect flows end to end on the session's test server: tasks per (stage, shard), figures, failures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.errors import BackendUnavailableError, TransientBackendError
from flows import engine_flows
from flows.pipeline.export import exported_tars
from flows.pipeline.reports import RejectFractionExceededError
from flows.pipeline.stages import SHARD_STAGES
from flows.runtime import run_flow
from tests.flows.conftest import write_config


def _stages(report: dict) -> dict[str, dict]:
    return {row["stage"]: row for row in report["stages"]}


def _figure_artifacts() -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        key = ArtifactFilterKey(any_=["engine-run-figures"])
        return client.read_artifacts(artifact_filter=ArtifactFilter(key=key))


def test_build_runs_one_task_per_stage_and_shard_and_records_its_figures(prefect_server, corpus, tmp_path) -> None:
    root, manifest = corpus
    config = write_config(tmp_path / "tiny.yaml")
    state = engine_flows.build(root=str(root), manifest=str(manifest), config_path=str(config), return_state=True)
    report = state.result()
    shards = sorted(p.stem for p in (root / "shards").glob("*.json"))
    assert len(shards) == 2  # 5 clips, shards of 3
    figures = _stages(report)
    # Each row sums the reports of its tasks: one task per (stage, shard), never per item.
    assert [(row["stage"], row["shards"]) for row in report["stages"]] == [("ingest", 1)] + [
        (stage, len(shards)) for stage in SHARD_STAGES
    ]
    assert figures["ingest"]["items_out"] == 5 and figures["export"]["items_out"] > 0
    on_disk = json.loads((root / "reports" / "latest-run.json").read_text())
    assert on_disk["run_id"] == report["run_id"] and on_disk["stages"] == report["stages"]
    assert exported_tars(root)
    assert any(report["run_id"] in artifact.data for artifact in _figure_artifacts())

    again = run_flow(engine_flows.build, root=str(root), manifest=str(manifest), config_path=str(config))
    assert all(row["shards_skipped"] == row["shards"] for row in again["stages"] if row["stage"] != "ingest")


def test_stage_flows_rerun_one_stage_and_a_config_change_reruns_only_later_stages(prefect_server, corpus, tmp_path):
    root, manifest = corpus
    config = write_config(tmp_path / "tiny.yaml")
    run_flow(engine_flows.build, root=str(root), manifest=str(manifest), config_path=str(config))

    forced = run_flow(engine_flows.analyze, root=str(root), config_path=str(config), shards=["shard-000001"],
                      force=True)
    assert [(r["stage"], r["shards"], r["shards_skipped"]) for r in forced["stages"]] == [("analyze", 1, 0)]

    changed = write_config(tmp_path / "new-refiner.yaml", agents={"refiner": {"kind": "fake", "seed": 9}})
    report = run_flow(engine_flows.build, root=str(root), config_path=str(changed))
    rerun = {row["stage"] for row in report["stages"] if row["shards_skipped"] < row["shards"]}
    assert rerun == {"refine", "generate_qa", "export"}


def test_too_many_rejects_fail_the_run_at_the_end_after_the_work(prefect_server, corpus, tmp_path) -> None:
    root, manifest = corpus
    (root / "broken.mp4").write_text("not a video")
    manifest.write_text(manifest.read_text() + json.dumps({"video": "broken.mp4", "caption": "a dog"}) + "\n")
    config = write_config(tmp_path / "strict.yaml", max_reject_fraction=0.1)
    with pytest.raises(RejectFractionExceededError, match="ingest: 1/6 rejected"):
        run_flow(engine_flows.build, root=str(root), manifest=str(manifest), config_path=str(config))
    assert exported_tars(root)  # the bad video was a reject; everything else was built
    figures = _stages(json.loads((root / "reports" / "latest-run.json").read_text()))
    assert figures["ingest"]["rejects"] == {"bad_video": 1}


def test_an_unreachable_backend_fails_the_run_with_a_clear_message(prefect_server, corpus, tmp_path) -> None:
    root, manifest = corpus
    analyzer = {"kind": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "m", "max_retries": 0,
                "timeout_s": 2.0}
    config = write_config(tmp_path / "down.yaml", agents={"analyzer": analyzer})
    # Checked before any stage starts: one line naming the role, the backend and the URL; nothing is ingested.
    with pytest.raises(BackendUnavailableError, match=r"the analyzer backend \(openai, model m\) at http://127"):
        run_flow(engine_flows.build, root=str(root), manifest=str(manifest), config_path=str(config))
    assert not (root / "stages" / "analyze").exists() or not list((root / "stages" / "analyze").glob("*.done.json"))
    assert not (root / "shards").exists() or not list((root / "shards").iterdir())


def test_prefect_retries_only_transient_backend_errors() -> None:
    from prefect.states import Failed

    assert engine_flows.stage_task.retries >= 1
    assert engine_flows.stage_task.retry_condition_fn is engine_flows.is_transient
    assert engine_flows.is_transient(None, None, Failed(data=TransientBackendError("429")))
    assert not engine_flows.is_transient(None, None, Failed(data=BackendUnavailableError("down")))
    assert not engine_flows.is_transient(None, None, Failed(data=ValueError("bug")))


def test_backend_tags_name_the_backends_for_concurrency_limits() -> None:
    from engine.config import load_config

    server = load_config(Path(__file__).resolve().parents[2] / "configs" / "server.yaml")
    assert {"sam2", "grounding_dino", "gpu", "stage:segment"} <= engine_flows.backend_tags("segment", server)
    assert engine_flows.backend_tags("refine", server) == {"stage:refine", "chat:openai"}
    assert not engine_flows.needs_gpu("refine", server) and engine_flows.needs_gpu("segment", server)
