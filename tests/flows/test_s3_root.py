"""The main path on a real S3-compatible store (SeaweedFS started by the session), end to end.

Manifest and videos on S3 (relative video paths in the manifest are below its folder), the dataset root on S3:
ingest -> build (every stage) -> export, a second build that writes nothing, status / validate / doctor / report
through the CLI; the exported 700K JSON read back by import-700k from `s3://`; and the training loader streaming
the export's tars from an `s3://` brace pattern.
"""

from __future__ import annotations

import json
from pathlib import Path

import fsspec
import pytest
from typer.testing import CliRunner

from flows import engine_flows
from flows.cli import app
from flows.pipeline.export import exported_tars
from flows.runtime import run_flow
from storage.root import DatasetRoot
from tests.flows.conftest import make_inputs, write_config


def _upload(local: Path, url: str) -> None:
    fs = fsspec.filesystem("s3")
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        fs.put_file(str(path), f"{url}/{path.relative_to(local).as_posix()}")


@pytest.fixture
def s3_inputs(tmp_path: Path, s3_url: str) -> str:
    """The demo corpus (4 clips + 1 QA clip) uploaded to `<s3_url>/inputs`; returns the manifest's URL."""
    local = tmp_path / "inputs"
    make_inputs(local)
    _upload(local, f"{s3_url}/inputs")
    return f"{s3_url}/inputs/manifest.jsonl"


def test_the_main_path_runs_on_s3_end_to_end(prefect_server, s3_inputs: str, s3_url: str, tmp_path: Path) -> None:
    url = f"{s3_url}/root"
    config = write_config(tmp_path / "tiny.yaml")
    report = run_flow(engine_flows.build, root=url, manifest=s3_inputs, config_path=str(config))
    figures = {row["stage"]: row for row in report["stages"]}
    assert figures["ingest"]["items_out"] == 5 and figures["export"]["items_out"] > 0
    root = DatasetRoot(url)
    tars = exported_tars(url)
    assert [t.rsplit("/", 1)[-1] for t in tars] == ["train-000000.tar", "train-000001.tar"]
    assert all(t.startswith("s3://") for t in tars)
    meta = root.read_json("export/json/_export.json")
    items = root.read_json("export/json/train.json")
    assert meta["items"] == len(items) == figures["export"]["items_out"]
    assert all(item["video"].startswith(f"{s3_url}/inputs/videos/") for item in items)
    assert not root.exists(".videorefer.lock")

    fs = fsspec.filesystem("s3")
    listing = {path: (info["ETag"], info["LastModified"]) for path, info in fs.find(url, detail=True).items()}
    again = run_flow(engine_flows.build, root=url, config_path=str(config))
    assert all(row["shards_skipped"] == row["shards"] for row in again["stages"])
    fs.invalidate_cache()
    assert {path: (info["ETag"], info["LastModified"])
            for path, info in fs.find(url, detail=True).items()} == listing  # nothing to do: nothing written

    cli = CliRunner()
    status = cli.invoke(app, ["status", "--root", url])
    assert status.exit_code == 0 and "export" in status.output, status.output
    exported = cli.invoke(app, ["export", "--root", url])
    assert exported.exit_code == 0 and f"2 tars in {url}/export/wds" in exported.output, exported.output
    validated = cli.invoke(app, ["validate", "--root", url])
    assert validated.exit_code == 0, validated.output
    assert f"2 tars, {len(items)} samples, 0 problems" in validated.output
    doctor = cli.invoke(app, ["doctor", "--root", url])
    assert doctor.exit_code == 0, doctor.output
    assert "0 errors" in doctor.output
    drawn = cli.invoke(app, ["report", "--root", url, "--samples", "1"])
    assert drawn.exit_code == 0, drawn.output
    assert "<html" in root.read_bytes("reports/index.html").decode()[:200].lower()

    imported = f"{s3_url}/imported"
    result = run_flow(engine_flows.import_700k, root=imported, json_path=f"{url}/export/json/train.json",
                      video_root=f"{s3_url}/inputs", config_path=str(config))
    row = {r["stage"]: r for r in result["stages"]}["import_700k"]
    assert row["items_in"] == len(items) and row["items_out"] == len(items) and not row["rejects"]

    from model.training.loader import expand_shards, read_tar_samples

    pattern = f"{url}/export/wds/train-{{000000..000001}}.tar"
    shards = expand_shards(pattern)
    assert shards == tars
    streamed = [sample for shard in shards for sample in read_tar_samples(shard)]
    assert len(streamed) == len(items)
    assert all(json.loads(sample["json"])["key"] == sample["__key__"] for sample in streamed)
