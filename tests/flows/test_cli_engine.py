"""The `videorefer` engine commands: demo (deterministic, readable by plain webdataset), validate, status,
stage, export, ingest and import-700k."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import webdataset as wds
from typer.testing import CliRunner

from flows.cli import app
from flows.pipeline.export import exported_tars
from tests.flows.conftest import make_inputs, write_config

runner = CliRunner()


def _invoke(*args: str):
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, f"{args}: {result.output}\n{result.exception!r}"
    return result


def _samples(root: Path) -> dict[str, dict]:
    # Plain webdataset, as the README reads a clip record: its frames once, its samples listed in the json.
    out = {}
    for record in wds.WebDataset(exported_tars(root), shardshuffle=False).decode("rgb8"):
        positions = record["json"].get("frames")
        for sample in record["json"].get("samples", [record["json"]]):
            if positions is None:  # a one-sample record (`import-700k`)
                names = sorted(key for key in record if key.endswith(".jpg"))
            else:
                stored = sample["frame_indices"] + sample["extra_frame_indices"]
                names = [f"{positions.index(i):02d}.jpg" for i in stored]
            out[sample["key"]] = {
                "json": sample,
                "frames": [hashlib.sha256(record[name].tobytes()).hexdigest() for name in names],
            }
    return out


def test_demo_is_deterministic_and_its_shards_read_with_plain_webdataset(prefect_server, tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    result = _invoke("demo", "--root", str(first), "--clips", "2")
    assert "WebDataset shards" in result.output and str(first / "export" / "wds") in result.output
    assert f"data report: {(first / 'reports' / 'index.html').resolve()}" in result.output
    _invoke("demo", "--root", str(second), "--clips", "2")
    samples = _samples(first)
    assert {s["json"]["task"] for s in samples.values()} == {"detailed", "short", "qa"}
    assert all(len(s["frames"]) == 16 for s in samples.values())
    assert samples == _samples(second)
    assert json.loads((first / "reports" / "latest-run.json").read_text())["stages"]

    validated = _invoke("validate", "--root", str(first))
    assert f"{len(samples)} samples, 0 problems" in validated.output
    status = _invoke("status", "--root", str(first))
    assert "export" in status.output and "generate_qa" in status.output

    assert "0 errors" in _invoke("doctor", "--root", str(first)).output
    clean = [json.loads(line) for line in _invoke("doctor", "--root", str(first), "--json").output.splitlines()]
    assert clean[-1]["summary"] == {"root": str(first), "errors": 0, "warnings": 0, "infos": len(clean) - 1,
                                    "clean": True}  # a clean root still prints an object: "clean", not "silent"
    (first / "export" / "json" / "train.json").write_text(json.dumps([{"video": "../../../etc/passwd"}]))
    damaged = runner.invoke(app, ["doctor", "--root", str(first), "--json"])
    assert damaged.exit_code == 1
    lines = [json.loads(line) for line in damaged.output.splitlines()]
    assert any(line.get("kind") == "json" for line in lines)
    assert lines[-1]["summary"]["clean"] is False and lines[-1]["summary"]["errors"] >= 1


def test_ingest_stage_export_and_import_commands(prefect_server, tmp_path: Path) -> None:
    root = tmp_path / "root"
    manifest = make_inputs(root, clips=2, qa_clips=1)
    config = str(write_config(tmp_path / "tiny.yaml"))
    _invoke("ingest", "--manifest", str(manifest), "--root", str(root), "--config", config)
    assert (root / "shards" / "shard-000000.json").is_file()
    for stage in ("analyze", "annotate", "segment", "review", "refine", "short-captions", "generate_qa"):
        _invoke("stage", stage, "--root", str(root))  # the root's config snapshot is used
    _invoke("export", "--root", str(root))
    exported = _samples(root)
    assert exported

    released = tmp_path / "released.json"
    meta = json.loads((root / "export" / "json" / "_export.json").read_text())  # one file per export + its root
    assert meta["files"] == ["train.json"] and meta["video_root"] == "../.."  # the root, seen from export/json
    items = json.loads((root / "export" / "json" / "train.json").read_text())
    assert len(items) == meta["items"] == len(exported)
    released.write_text(json.dumps(items + [{"video": "x.mp4", "conversations": [], "annotation": [None]}]))
    imported = tmp_path / "imported"
    result = _invoke("import-700k", "--json", str(released), "--videos", str(root), "--root", str(imported),
                     "--config", config)
    assert "import_700k" in result.output
    samples = _samples(imported)
    assert len(samples) == len(items)
    assert {s["json"]["task"] for s in samples.values()} == {s["json"]["task"] for s in exported.values()}


def test_unknown_stage_and_missing_manifest_exit_with_one_line(prefect_server, tmp_path: Path) -> None:
    result = runner.invoke(app, ["stage", "polish", "--root", str(tmp_path)])
    assert result.exit_code == 1 and "unknown stage 'polish'" in result.output
    result = runner.invoke(app, ["ingest", "--manifest", str(tmp_path / "nope.csv"), "--root", str(tmp_path)])
    assert result.exit_code == 1 and "manifest not found" in result.output
