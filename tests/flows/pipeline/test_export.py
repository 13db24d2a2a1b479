"""The export stage's layout (issue 14.9): one `train-NNNNNN.tar` per engine shard numbered like the shard, clip
records, a re-export that renumbers nothing, one 700K JSON per export with its video root."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import webdataset as wds

from flows.pipeline import layout
from flows.pipeline.export import EXPORT, finalize_export
from flows.pipeline.ingest import ingest
from flows.pipeline.runner import run_stage
from flows.pipeline.stages import SHARD_STAGES
from storage.wds import iter_samples, list_tars
from tests.flows.conftest import tiny_config


def _build(root: Path, manifest: Path) -> dict[str, int]:
    config = tiny_config()
    ingest(root, manifest, config)
    exported = {}
    for shard in layout.shards(layout.open_root(root)):
        for stage in SHARD_STAGES:
            report = run_stage(root, stage, shard, config)
        exported[shard] = report.items_out
    return exported


def _digests(root: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((root / "export" / "wds").glob("*"))
            if p.suffix in (".tar", ".parquet")}


def test_one_tar_per_engine_shard_named_like_it_and_brace_expandable(corpus) -> None:
    root, manifest = corpus
    exported = _build(root, manifest)
    assert list(exported) == ["shard-000000", "shard-000001"]  # 5 clips in shards of 3
    names = [Path(t).name for t in list_tars(root / "export" / "wds")]
    assert names == ["train-000000.tar", "train-000001.tar"]
    url = str(root / "export" / "wds" / "train-{000000..000001}.tar")
    records = list(wds.WebDataset(url, shardshuffle=False).decode("rgb8"))
    samples = sum(len(r["json"]["samples"]) for r in records)
    assert samples == sum(exported.values())
    assert len(records) == len({r["json"]["clip_id"] for r in records}) < samples  # one record per clip


def test_re_exporting_one_shard_renumbers_and_rewrites_no_other_tar(corpus) -> None:
    root, manifest = corpus
    _build(root, manifest)
    before = _digests(root)
    legacy = root / "export" / "wds" / "train-shard-000001-000000.tar"  # the earlier naming of that shard's tar
    legacy.write_bytes(b"")
    stats_path = root / "export" / "wds" / "_stats.json"
    stats = json.loads(stats_path.read_text())
    before_stats = json.loads(json.dumps(stats))
    stats["splits"]["train-shard-000001"] = {"tars": ["train-shard-000001-000000.tar"], "samples": 7}
    stats_path.write_text(json.dumps(stats))
    other = (root / "export" / "wds" / "train-000000.tar").stat().st_mtime_ns
    run_stage(root, EXPORT, "shard-000001", tiny_config(), force=True)
    assert not legacy.exists()
    assert json.loads(stats_path.read_text()) == before_stats  # the old split's figures are not counted twice
    assert _digests(root) == before
    assert (root / "export" / "wds" / "train-000000.tar").stat().st_mtime_ns == other


def test_finalize_merges_every_exported_shard_into_one_json_with_its_video_root(corpus) -> None:
    from storage.root import DatasetRoot
    from storage.videorefer_json import export_video_root, import_700k

    root, manifest = corpus
    exported = _build(root, manifest)
    written = finalize_export(root)
    assert written == ["export/json/train.json", "export/json/_export.json"]
    meta = json.loads((root / "export" / "json" / "_export.json").read_text())
    items = json.loads((root / "export" / "json" / "train.json").read_text())
    video_root = export_video_root(DatasetRoot(root))
    assert meta["video_root"] == "../.." and video_root == str(root)  # relative to export/json: the same on any root
    assert meta["items"] == len(items) == sum(exported.values())
    assert all(not item["video"].startswith("/") and (root / item["video"]).is_file() for item in items)
    samples, rejects = import_700k(items, grid=6, video_root=video_root)
    assert not rejects
    ours = sorted(s.conversations[-1].value for s, _ in iter_samples(list_tars(root / "export" / "wds")))
    assert sorted(s.conversations[-1].value for s in samples) == ours
    stamp = (root / "export" / "json" / "train.json").stat().st_mtime_ns
    assert finalize_export(root) == []  # nothing changed: nothing written (no re-merge)
    assert (root / "export" / "json" / "train.json").stat().st_mtime_ns == stamp
    (root / "export" / "json" / "train.json").unlink()
    assert finalize_export(root) == ["export/json/train.json"]  # a plain function of the stored parts
    assert json.loads((root / "export" / "json" / "train.json").read_text()) == items


def test_finalize_repairs_stats_merges_lost_between_parallel_export_processes(corpus) -> None:
    root, manifest = corpus
    _build(root, manifest)
    finalize_export(root)
    stats_path = root / "export" / "wds" / "_stats.json"
    complete = json.loads(stats_path.read_text())
    assert len(complete["writers"]) == len(layout.shards(layout.open_root(root))) > 1
    # Two export tasks in different processes both read the file before either wrote: one merge is lost.
    lost = dict(complete, writers=dict(list(complete["writers"].items())[:1]))
    stats_path.write_text(json.dumps(lost))
    finalize_export(root)
    assert json.loads(stats_path.read_text()) == complete
