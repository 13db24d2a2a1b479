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
from flows.pipeline.stages import SHARD_STAGES, chained_hash
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
    samples = records = 0
    # The README's plain-webdataset reading: one record per clip, its frames once, its samples in the json.
    for record in wds.WebDataset(exported_tars(root), shardshuffle=False).decode("rgb8"):
        records += 1
        frames = record["json"]["frames"]  # the video frame index of 00.jpg, 01.jpg, ...
        assert sorted(key for key in record if key.endswith(".jpg")) == [f"{i:02d}.jpg" for i in range(len(frames))]
        for sample in record["json"]["samples"]:
            tasks.add(sample["task"])
            stored = sample["frame_indices"] + sample["extra_frame_indices"]
            images = [record[f"{frames.index(i):02d}.jpg"] for i in stored]
            # The 96 x 72 clips keep their 4:3 aspect: short side down to the 48-px vision size, not a square.
            assert len(images) == 4 and images[0].shape == (48, 64, 3)
            samples += 1
    assert tasks == {"detailed", "short", "qa"}
    assert samples == figures["export"].items_out
    assert records < samples  # the samples of one clip share its record's frames
    assert (root / "export" / "json").is_dir() and list((root / "export" / "json" / "shards").glob("*.json"))


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


# ---------------------------------------------------------------- warm backends, one decode, streaming, retries


def test_vision_backends_load_once_per_worker_not_per_shard(corpus) -> None:
    from flows.pipeline.backends import BackendPool

    root, manifest = corpus
    config = tiny_config(shard_size=2)
    ingest(root, manifest, config)
    shards = layout.shards(layout.open_root(root))
    assert len(shards) >= 2
    pool = BackendPool()
    for shard in shards:
        for stage in ("analyze", "annotate", "segment", "short_captions"):
            run_stage(root, stage, shard, config, pool=pool)
    # segment and short_captions share the same grounder / segmenter configs: one build each for the whole run.
    assert pool.loads == {"grounder:fake": 1, "segmenter:fake": 1}


def test_each_clip_is_decoded_once_per_stage_task(corpus) -> None:
    root, manifest = corpus
    config = tiny_config()
    ingest(root, manifest, config)
    shard = layout.shards(layout.open_root(root))[0]
    for stage in ("analyze", "annotate", "segment", "review"):
        report = run_stage(root, stage, shard, config)
        if stage in ("annotate", "review"):
            assert 0 < report.decodes <= report.clips, stage  # at most one decode per clip


def test_the_window_streams_clips_without_waiting_for_a_slow_one() -> None:
    """A slow first clip must not hold back the others: it finishes only after every later clip has finished."""
    import asyncio

    from flows.pipeline.runner import stream_groups

    groups = [[("clip0", 0)], *[[(f"clip{i}", i)] for i in range(1, 12)]]
    finished: list[int] = []
    others_done = asyncio.Event()
    in_flight = {"now": 0, "most": 0}

    async def run(group):
        number = group[0][1]
        in_flight["now"] += 1
        in_flight["most"] = max(in_flight["most"], in_flight["now"])
        try:
            if number == 0:
                await asyncio.wait_for(others_done.wait(), timeout=10)  # a barrier would dead-lock here
            else:
                await asyncio.sleep(0.001 * number)
            finished.append(number)
            if len(finished) == len(groups) - 1:
                others_done.set()
            return number
        finally:
            in_flight["now"] -= 1

    results = asyncio.run(stream_groups(run, groups, max_items=4, max_groups=4))
    assert results == list(range(12)) and finished[-1] == 0
    assert in_flight["most"] == 4  # the window is full while the slow clip waits


def test_transient_failures_stay_retryable_and_only_those_items_are_redone(corpus) -> None:
    """The refiner's server fails past the backend's retries: the stage is not done, what finished is kept, and the
    next run asks only for the items that were not done."""
    import json as json_module

    from agents.backends.stub_server import StubOpenAIServer
    from engine.errors import BackendError

    def refiner_reply(request: dict) -> str:
        return json_module.dumps({"caption": "A refined caption."})

    root, manifest = corpus
    ingest(root, manifest, tiny_config())
    shard = layout.shards(layout.open_root(root))[0]
    droot = layout.open_root(root)
    for stage in ("analyze", "annotate", "segment", "review"):
        run_stage(root, stage, shard, tiny_config())
    reviewed = layout.read_stage(droot, "review", shard)
    first_clip = sum(record.clip_id == reviewed[0].clip_id for record in reviewed)
    assert len({record.clip_id for record in reviewed}) >= 2
    # One clip at a time: the first clip's requests succeed, then the server fails past the retries.
    with StubOpenAIServer(responder=refiner_reply, fault_script=[None] * first_clip + ["server_error"] * 40) as server:
        agents = {**tiny_config().agents.model_dump(), "refiner": {
            "kind": "openai", "base_url": server.base_url, "model": "refiner-stub", "max_retries": 1,
            "backoff_base_s": 0.001, "backoff_max_s": 0.002, "structured_output": "none"}}
        config = tiny_config(agents=agents, concurrency=1)
        with pytest.raises(BackendError):
            run_stage(root, "refine", shard, config)
        assert not droot.stage_done("refine", shard, chained_hash(config, "refine"))
        server.set_fault_script([])  # the server is back
        before = server.request_count
        report = run_stage(root, "refine", shard, config)
        retried = server.request_count - before
    assert retried == len(reviewed) - first_clip  # the finished clip was kept, only the rest was asked again
    assert report.items_out + report.rejected == len(reviewed) and "backend_transient" not in report.rejects
    assert all(r.detailed_caption == "A refined caption." for r in layout.read_stage(droot, "refine", shard))


def test_items_that_fail_transiently_are_pending_not_final(corpus, monkeypatch) -> None:
    """An agent whose backend raised `TransientBackendError` for some items: the stage raises it (Prefect retries),
    keeps the rest, and the retry runs only the pending items."""
    import dataclasses

    from agents.stage import StageResult, reject_for
    from engine.errors import TransientBackendError
    from flows.pipeline import stages

    calls: list[str] = []

    class FlakyRefiner:  # fails each object's first attempt when its id ends in an even hex digit
        async def run(self, records):
            out, rejects = [], []
            for record in records:
                calls.append(record.object_id)
                if record.object_id[-1] in "02468ace" and calls.count(record.object_id) == 1:
                    rejects.append(reject_for(TransientBackendError("503 after retries"), stage="refine",
                                              item_id=record.object_id, clip_id=record.clip_id))
                else:
                    out.append(dataclasses.replace(record, detailed_caption="ok"))
            return StageResult(records=tuple(out), rejects=tuple(rejects))

    root, manifest = corpus
    config = tiny_config()
    ingest(root, manifest, config)
    shard = layout.shards(layout.open_root(root))[0]
    for stage in ("analyze", "annotate", "segment", "review"):
        run_stage(root, stage, shard, config)
    monkeypatch.setitem(stages.STAGE_BY_NAME, "refine", dataclasses.replace(
        stages.STAGE_BY_NAME["refine"], build=lambda settings, pool: FlakyRefiner()))
    reviewed = layout.read_stage(layout.open_root(root), "review", shard)
    flaky = [r.object_id for r in reviewed if r.object_id[-1] in "02468ace"]
    if not flaky:
        pytest.skip("no object id with an even last digit in this corpus")
    with pytest.raises(TransientBackendError, match="redoes only those items"):
        run_stage(root, "refine", shard, config)
    first = len(calls)
    report = run_stage(root, "refine", shard, config)
    assert sorted(calls[first:]) == sorted(flaky)  # only the pending items ran again
    assert report.items_out == len(reviewed) and report.rejected == 0
