"""Every stage fed a mixed batch of good and bad items: the bad ones are rejected, the good ones come through.

Bad items are written straight into a built root's stage inputs (bypassing ingest's edge checks, the way data of
an older root or a bug upstream would arrive): masks with garbage RLE, masks of the wrong size, a mask on frame
-1, no masks at all, clips with a NaN / reversed span and negative sizes, a video that is not a video. Each
stage then runs on the mixed shard. Whatever a bad item does, the task does not fail, every input is accounted
for (an output or a reject), and the good items' outputs and rejects are exactly those of the clean run.
"""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from agents.stage import StageResult
from engine.errors import RejectReason
from engine.types import Clip, Masklet, ObjectRecord, RleMask
from flows.pipeline import layout
from flows.pipeline.backends import BackendPool
from flows.pipeline.ingest import ingest
from flows.pipeline.runner import _run_agent, input_id, output_input_id, run_stage, stage_inputs
from flows.pipeline.stages import EXPORT, SHARD_STAGES, chained_hash, get_stage
from tests.flows.conftest import make_inputs, tiny_config

CONFIG = tiny_config()


def _bad_masklet(masklet: Masklet | None, kind: str) -> Masklet | None:
    if masklet is None:
        return None
    key = masklet.key_frame
    mask = masklet.masks[key]
    if kind == "garbage_rle":
        return dataclasses.replace(masklet, masks={**masklet.masks, key: RleMask(height=mask.height,
                                                                                 width=mask.width, counts="!~~x")})
    if kind == "wrong_size":
        return dataclasses.replace(masklet, masks={f: RleMask(height=10, width=10, counts="PPYo1") for f in
                                                   masklet.masks})
    if kind == "frame_minus_one":
        return dataclasses.replace(masklet, masks={**masklet.masks, -1: mask})
    return dataclasses.replace(masklet, masks={})  # "no_masks"


def _bad_clip(clip: Clip, kind: str, garbage_video: Path) -> Clip:
    if clip.given_objects:
        objects = tuple(dataclasses.replace(g, masklet=_bad_masklet(g.masklet, kind)) for g in clip.given_objects)
        return dataclasses.replace(clip, given_objects=objects)
    if kind == "garbage_rle":
        return dataclasses.replace(clip, video_uri=str(garbage_video))
    if kind == "wrong_size":
        return dataclasses.replace(clip, width=-5, height=0, num_frames=-1)
    return dataclasses.replace(clip, start_s=float("nan"), end_s=-3.0)


def _bad_record(record: Any, kind: str, garbage_video: Path) -> Any:
    if isinstance(record, ObjectRecord) and record.masklet is not None:
        return dataclasses.replace(record, masklet=_bad_masklet(record.masklet, kind))
    return dataclasses.replace(record, clip=_bad_clip(record.clip, kind, garbage_video))


KINDS = ("garbage_rle", "wrong_size", "frame_minus_one", "no_masks")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A root with every stage done on clean data (the reference run)."""
    root = tmp_path_factory.mktemp("mixed") / "clean"
    root.mkdir()
    ingest(root, make_inputs(root, clips=4, qa_clips=2), CONFIG)
    droot = layout.open_root(root)
    for stage in SHARD_STAGES:
        for shard in layout.shards(droot):
            run_stage(root, stage, shard, CONFIG)
    return root


def _mixed_copy(built: Path, target: Path, stage: str, kind: str) -> tuple[str, set[str]]:
    """A copy of `built` whose first shard with two or more inputs of `stage` has its first input made bad; the
    shard and the bad input ids."""
    shutil.copytree(built, target)
    droot = layout.open_root(target)
    definition = get_stage(stage)
    garbage = target / "not-a-video.mp4"
    garbage.write_bytes(b"\x00garbage, not a video" * 50)
    for shard in layout.shards(droot):
        if stage == EXPORT:
            records = layout.read_stage(droot, "refine", shard)
            if len(records) < 2:
                continue
            bad = _bad_record(records[0], kind, garbage)
            layout.write_stage(droot, "refine", shard, [bad, *records[1:]], layout.read_stage_rejects(droot, "refine",
                               shard), chained_hash(CONFIG, "refine"))
            return shard, {bad.object_id}
        items = stage_inputs(droot, definition, shard)
        if len(items) < 2:
            continue
        bad = items[0]
        if definition.inputs == "records":
            parent = definition.parents[0]
            if bad.masklet is None:  # the clip is made bad: every object of it is (its objects share the clip)
                bad_ids = {input_id(definition, item) for item in items if item.clip_id == bad.clip_id}
            else:
                bad_ids = {input_id(definition, bad)}
            mixed = [_bad_record(item, kind, garbage) if input_id(definition, item) in bad_ids else item
                     for item in items]
            layout.write_stage(droot, parent, shard, mixed, layout.read_stage_rejects(droot, parent, shard),
                               chained_hash(CONFIG, parent))
            return shard, bad_ids
        else:
            clips = [_bad_clip(c, kind, garbage) if c.clip_id == bad.clip_id else c
                     for c in layout.tables.read_clips(droot, shard)]
            layout.write_sources(droot, shard, clips)
        return shard, {input_id(definition, bad)}
    raise AssertionError(f"no shard with two inputs for {stage}")


def _without_timing(output: Any) -> Any:
    """An output without its provenance (latencies differ run to run; everything else must not)."""
    if hasattr(output, "objects"):
        output = dataclasses.replace(output, objects=tuple(_without_timing(o) for o in output.objects))
    return dataclasses.replace(output, provenance=())


def _by_input(root: Path, stage: str, shard: str) -> tuple[dict[str, list[Any]], dict[str, set[str]]]:
    droot = layout.open_root(root)
    definition = get_stage(stage)
    outputs: dict[str, list[Any]] = {}
    for record in layout.read_stage(droot, stage, shard):
        outputs.setdefault(output_input_id(definition, record), []).append(_without_timing(record))
    rejects: dict[str, set[str]] = {}
    for reject in layout.read_stage_rejects(droot, stage, shard):
        rejects.setdefault(output_input_id(definition, reject), set()).add(str(reject.reason))
    return outputs, rejects


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("stage", [s for s in SHARD_STAGES if s != EXPORT])
def test_every_stage_keeps_the_good_items_of_a_mixed_shard(built: Path, tmp_path: Path, stage: str, kind: str) -> None:
    shard, bad_ids = _mixed_copy(built, tmp_path / "mixed", stage, kind)
    report = run_stage(tmp_path / "mixed", stage, shard, CONFIG, force=True)  # must not raise
    definition = get_stage(stage)
    inputs = {input_id(definition, item) for item in stage_inputs(layout.open_root(tmp_path / "mixed"), definition,
                                                                  shard)}
    outputs, rejects = _by_input(tmp_path / "mixed", stage, shard)
    clean_outputs, clean_rejects = _by_input(built, stage, shard)
    assert inputs <= set(outputs) | set(rejects), "an input vanished without an output or a reject"
    good = inputs - bad_ids
    assert {i: outputs.get(i) for i in good} == {i: clean_outputs.get(i) for i in good}
    assert {i: rejects.get(i) for i in good} == {i: clean_rejects.get(i) for i in good}
    assert report.items_in == len(inputs)


@pytest.mark.parametrize("kind", KINDS)
def test_export_keeps_the_good_samples_of_a_mixed_shard(built: Path, tmp_path: Path, kind: str) -> None:
    shard, _ = _mixed_copy(built, tmp_path / "mixed", EXPORT, kind)
    clean = run_stage(built, EXPORT, shard, CONFIG)
    report = run_stage(tmp_path / "mixed", EXPORT, shard, CONFIG, force=True)  # must not raise
    # One object made bad costs at most its own samples (detailed, and short / QA where it has them).
    assert clean.items_out - 3 <= report.items_out <= clean.items_out
    assert report.items_in == report.items_out + report.rejected


class _OneBadItem:
    """An agent whose whole-clip call raises an untyped error when the clip holds the item `bad`."""

    def __init__(self, bad: str) -> None:
        self.bad = bad

    async def run(self, records: Sequence[ObjectRecord]) -> StageResult[ObjectRecord]:
        if any(record.object_id == self.bad for record in records):
            raise ValueError("Invalid RLE mask representation")
        return StageResult(records=tuple(records))


def test_an_error_escaping_the_agent_rejects_only_its_item_and_not_its_clip_mates(built: Path) -> None:
    droot = layout.open_root(built)
    shard = layout.shards(droot)[0]
    records = layout.read_stage(droot, "analyze", shard)
    same_clip = [r for r in records if r.clip_id == records[0].clip_id]
    assert len(same_clip) >= 2
    bad = same_clip[0].object_id
    stage = dataclasses.replace(get_stage("review"), build=lambda settings, backends: _OneBadItem(bad))
    kept, rejects, stopped = asyncio.run(_run_agent(stage, records, CONFIG, BackendPool()))
    assert stopped is None
    assert [r.object_id for r in kept] == [r.object_id for r in records[1:]]
    assert [(r.item_id, r.reason) for r in rejects] == [(same_clip[0].object_id, RejectReason.ITEM_ERROR)]
    assert "ValueError: Invalid RLE mask representation" in rejects[0].message
