"""`doctor`: a clean built root has no error; each kind of damage done to it afterwards is found, by kind."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from engine.types import RleMask
from flows.pipeline import layout
from flows.pipeline.doctor import diagnose
from flows.pipeline.export import finalize_export
from flows.pipeline.ingest import ingest
from flows.pipeline.runner import run_stage
from flows.pipeline.stages import REFINE, SHARD_STAGES
from storage.wds import list_tars
from tests.flows.conftest import tiny_config, write_config


@pytest.fixture
def built(corpus) -> Path:
    root, manifest = corpus
    config = tiny_config()
    layout.ensure_dataset(layout.open_root(root), config)
    ingest(root, manifest, config)
    for shard in layout.shards(layout.open_root(root)):
        for stage in SHARD_STAGES:
            run_stage(root, stage, shard, config)
    finalize_export(root)
    return root


def _errors(findings, kind: str | None = None) -> list:
    return [f for f in findings if f.severity == "error" and (kind is None or f.kind == kind)]


def test_a_freshly_built_root_has_no_error(built) -> None:
    findings = diagnose(built)
    assert _errors(findings) == [], findings


def test_damage_is_found_by_kind(built) -> None:
    droot = layout.open_root(built)
    shard = layout.shards(droot)[0]
    # A garbage mask (counts do not cover the size) and a runaway caption in a stored stage record.
    records = layout.read_stage(droot, REFINE, shard)
    record = records[0]
    frame = next(iter(record.masklet.masks))
    bad_masks = {**record.masklet.masks, frame: RleMask(height=record.clip.height, width=record.clip.width,
                                                        counts="0")}
    damaged = dataclasses.replace(record, masklet=dataclasses.replace(record.masklet, masks=bad_masks),
                                  detailed_caption="x" * 30_000)
    layout.write_stage(droot, REFINE, shard, [damaged, *records[1:]], [], "whatever")
    # A pickle member smuggled into a tar; inconsistent stored counts; a stale temp file and a dead writer's lock.
    tar_path = Path(list_tars(droot)[0])
    with tarfile.open(tar_path, "a") as tar:
        payload = b"\x80\x04N."
        info = tarfile.TarInfo("evil.pyd")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    report_path = built / layout.stage_report_path(REFINE, shard)
    report = json.loads(report_path.read_text())
    report["items_out"] += 5
    report_path.write_text(json.dumps(report))
    (built / "export" / ".train.json.tmp-deadbeef").write_text("half")
    (built / ".videorefer.lock").write_text(json.dumps(
        {"host": os.uname().nodename, "pid": 2**22 + 12345, "started": "2026-01-01T00:00:00Z", "command": "build"}))

    findings = diagnose(built)

    masks = _errors(findings, "mask")
    assert masks and "counts" in masks[0].message and record.object_id in masks[0].where
    assert any("detailed caption" in f.message for f in _errors(findings, "text"))
    assert any("evil.pyd" in f.message for f in _errors(findings, "shard"))
    assert any(f.where == f"{REFINE}/{shard}" for f in _errors(findings, "counts"))
    assert any(f.kind == "temp_file" and f.severity == "warning" for f in findings)
    assert any(f.kind == "lock" and f.severity == "warning" and "stale" in f.message for f in findings)


def test_limits_come_from_the_roots_config(built, tmp_path) -> None:
    strict = write_config(tmp_path / "strict.yaml", limits={"max_text_chars": 5})
    assert not _errors(diagnose(built), "text")
    assert _errors(diagnose(built, strict), "text")


def test_json_paths_that_leave_the_video_root_are_errors(built) -> None:
    json_file = built / "export" / "json" / "train.json"
    items = json.loads(json_file.read_text())
    items[0]["video"] = "../../../etc/passwd"
    items[-1]["video"] = "/abs/video.mp4"
    json_file.write_text(json.dumps(items))
    messages = [f.message for f in _errors(diagnose(built), "json")]
    assert any("leaves the video root" in m for m in messages)
    assert any("not relative" in m for m in messages)


def test_a_video_replaced_by_a_fifo_is_an_error(built) -> None:
    droot = layout.open_root(built)
    clip = layout.shard_clips(droot, layout.shards(droot)[0])[0]
    video = Path(clip.video_uri) if Path(clip.video_uri).is_absolute() else built / clip.video_uri
    video.unlink()
    os.mkfifo(video)
    assert any("not a regular file" in f.message for f in _errors(diagnose(built), "video"))
