"""The engine on the real H.264 / MPEG-4 clips of ../shared/media (skipped when the folder is absent)."""

from __future__ import annotations

import json
from pathlib import Path

import webdataset as wds

from flows import engine_flows
from flows.pipeline.export import exported_tars
from flows.runtime import run_flow
from tests.flows.conftest import write_config

CAPTIONS = {"dog.mp4": "a dog runs on the grass", "demo2.mp4": "a man walks with a dog",
            "demo4.mp4": "a person rides a bike past a car"}


def test_build_on_real_clips_exports_frames_of_those_videos(prefect_server, media_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    manifest = root / "manifest.jsonl"
    rows = [{"video": str(media_dir / name), "caption": caption} for name, caption in CAPTIONS.items()]
    rows.append({"video": str(media_dir / "dog.mp4"), "caption": "a dog runs", "start": 1.0, "end": 3.0})
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    # The fakes read only pixels and prompts: on real footage the fake region captioner cannot tell a dog from the
    # background, so the reviewer may reject every detailed candidate. This test is about real media through every
    # stage (decoding, spans, export), so a fully rejecting review must not fail the run.
    # The shared media lie outside the manifest's folder and the root: allowed explicitly (`paths.allowed_roots`).
    config = write_config(tmp_path / "tiny.yaml", shard_size=2, max_reject_fraction=1.0,
                          paths={"allowed_roots": [str(media_dir)]})
    report = run_flow(engine_flows.build, root=str(root), manifest=str(manifest), config_path=str(config))
    figures = {row["stage"]: row for row in report["stages"]}
    assert figures["ingest"]["items_out"] == 4
    assert figures["export"]["items_out"] > 0
    videos = set()
    for record in wds.WebDataset(exported_tars(root), shardshuffle=False).decode("rgb8"):  # one record per clip
        videos.add(Path(record["json"]["video"]).name)
        frames = sorted(key for key in record if key.endswith(".jpg"))
        height, width, _ = record[frames[0]].shape
        assert len(frames) == 4 and min(height, width) == 48 and max(height, width) > 48  # aspect ratio kept
        assert record[frames[0]].std() > 5  # real picture content, not a blank frame
    assert videos <= set(CAPTIONS) and videos
