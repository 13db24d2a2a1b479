"""A run that fails says so on the terminal as a user sees it (a real `videorefer` process, stderr and stdout
apart): the `error:` line first with no Prefect traceback before it, then the stage table of what the run did;
the traceback stays in the Prefect log and reaches the terminal with `--debug`; the data report says the build
failed and why; an ingest ends with the rows it rejected by reason and how to allow a folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from flows.pipeline.ingest import ingest_reject_lines
from tests.flows.conftest import make_inputs, write_config

VIDEOREFER = [sys.executable, "-m", "flows.cli"]


def _run(*args: str, api: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PREFECT_API_URL": api, "COLUMNS": "160"}
    return subprocess.run([*VIDEOREFER, *args], capture_output=True, text=True, env=env, timeout=600, check=False,
                          cwd=Path(__file__).resolve().parents[2])


def test_a_build_with_every_item_rejected_fails_with_one_line_then_its_table(prefect_server, tmp_path: Path) -> None:
    root = tmp_path / "root"
    manifest = make_inputs(root, clips=2, qa_clips=0)
    # The fake judge disagrees with every region caption: review rejects every object.
    config = write_config(tmp_path / "reject-all.yaml", max_reject_fraction=0.5,
                          agents={"judge": {"kind": "fake", "disagree_rate": 1.0}})
    run = _run("build", "--root", str(root), "--manifest", str(manifest), "--config", str(config), api=prefect_server)
    assert run.returncode == 1, run.stderr[-3000:]
    errors = [line for line in run.stderr.splitlines() if line.strip()]
    assert errors[0].startswith("error: RejectFractionExceededError") and "review" in errors[0], run.stderr
    assert "Traceback" not in run.stderr and "Encountered exception" not in run.stderr
    assert "review_rejected" in run.stdout and "export" in run.stdout  # the stage table, printed anyway
    latest = json.loads((root / "reports" / "latest-run.json").read_text())
    assert latest["outcome"] == "failed" and latest["failed_because"].startswith("RejectFractionExceededError")
    page = (root / "reports" / "index.html").read_text()
    assert "The latest run failed" in page and "review_rejected" in page

    debug = _run("--debug", "build", "--root", str(root), "--config", str(config), api=prefect_server)
    assert debug.returncode == 1
    assert "Traceback" in debug.stderr and "RejectFractionExceededError" in debug.stderr


def test_ingest_ends_with_its_rejects_and_how_to_allow_a_folder(prefect_server, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    manifest_dir = tmp_path / "manifest"
    make_inputs(elsewhere, clips=1, qa_clips=0)
    video = next(path for path in elsewhere.rglob("*") if path.suffix in (".mp4", ".mkv", ".avi"))
    manifest_dir.mkdir()
    manifest = manifest_dir / "m.jsonl"
    manifest.write_text(json.dumps({"video": str(video), "caption": "a red ball rolls"}) + "\n"
                        + json.dumps({"video": "missing.mp4", "caption": "gone"}) + "\n")
    run = _run("ingest", "--manifest", str(manifest), "--root", str(tmp_path / "root"), api=prefect_server)
    assert "rejected rows: path_not_allowed 1, video_not_found 1" in run.stderr, run.stderr
    assert f"allowed_roots: [{video.parent}]" in run.stderr
    assert "delete its rejects/ingest/ folder" in run.stderr


def test_ingest_reject_lines_count_by_reason_bound_the_examples_and_collect_folders() -> None:
    from engine.errors import RejectReason
    from engine.types import Reject

    def reject(number: int, reason: RejectReason, message: str) -> Reject:
        return Reject(stage="ingest", item_id=f"i{number}", clip_id=f"c{number}", reason=reason, message=message)

    outside = [reject(i, RejectReason.PATH_NOT_ALLOWED, f"manifest row {i}: v{i}.mp4 resolves to "
                      f"/data/{i % 2}/v{i}.mp4, outside the allowed roots (/m); add its folder") for i in range(5)]
    lines = ingest_reject_lines([*outside, reject(9, RejectReason.BAD_VIDEO, "x" * 5000)])
    assert lines[0] == "rejected rows: bad_video 1, path_not_allowed 5"
    assert sum(line.startswith("  path_not_allowed: manifest row") for line in lines) == 3
    assert "  path_not_allowed: ... and 2 more" in lines
    assert all(len(line) < 400 for line in lines)  # an unbounded message is cut
    assert "    allowed_roots: [/data/0, /data/1]" in lines
    assert ingest_reject_lines([]) == []
