"""Manifests and ingest: formats, bad rows and bad videos become rejects, incremental pinning, content ids."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engine.errors import ConfigError, RejectReason
from flows.pipeline import layout
from flows.pipeline.ingest import ingest
from flows.pipeline.manifest import read_manifest
from tests.flows.conftest import make_inputs, tiny_config


def _rows(manifest: Path) -> list[dict]:
    return [json.loads(line) for line in manifest.read_text().splitlines()]


def test_csv_parquet_and_jsonl_manifests_read_the_same_rows(tmp_path: Path) -> None:
    rows = [{"video": "a.mp4", "caption": "a dog runs", "start": "1.5", "end": "3"},
            {"video": "https://host/b.mp4", "caption": "a cat sits", "start": "", "end": ""}]
    with (tmp_path / "m.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "m.parquet")
    parsed = [read_manifest(tmp_path / name) for name in ("m.csv", "m.jsonl", "m.parquet")]
    assert parsed[0] == parsed[1] == parsed[2]
    first, second = parsed[0]
    assert first.video_uri == str(tmp_path / "a.mp4") and (first.start_s, first.end_s) == (1.5, 3.0)
    assert second.video_uri == "https://host/b.mp4" and second.start_s is None


def test_manifest_without_video_column_fails_fast(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps({"file": "a.mp4", "caption": "x"}) + "\n")
    with pytest.raises(ConfigError, match="no video column"):
        read_manifest(path)
    with pytest.raises(ConfigError, match="not found"):
        read_manifest(tmp_path / "missing.csv")


def test_bad_videos_and_rows_become_rejects_and_the_rest_is_ingested(tmp_path: Path) -> None:
    root = tmp_path / "root"
    manifest = make_inputs(root, clips=2, qa_clips=0)
    (root / "not_a_video.mp4").write_text("hello, I am text")
    (root / "empty.mp4").write_bytes(b"")
    rows = _rows(manifest) + [
        {"video": "not_a_video.mp4", "caption": "a dog"},
        {"video": "empty.mp4", "caption": "a dog"},
        {"video": "missing.mp4", "caption": "a dog"},
        {"caption": "a row without a video"},
        {"video": "videos/synthetic/clip-0-00000.mp4", "caption": "a ball", "start": 2, "end": 1},
    ]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = ingest(root, manifest, tiny_config())
    assert result.report.items_out == 2
    assert result.report.rejects == {
        RejectReason.BAD_VIDEO: 1, RejectReason.EMPTY_VIDEO: 1, RejectReason.VIDEO_NOT_FOUND: 1,
        RejectReason.MALFORMED_SAMPLE: 1, RejectReason.BAD_SPAN: 1,
    }
    droot = layout.open_root(root)
    assert len(layout.ingest_rejects(droot)) == 5
    assert sum(len(layout.shard_clips(droot, s)) for s in result.all_shards) == 2


def test_incremental_ingest_pins_only_new_rows_into_new_shards(tmp_path: Path) -> None:
    root = tmp_path / "root"
    manifest = make_inputs(root, clips=4, qa_clips=0)
    rows = _rows(manifest)
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows[:3]))
    config = tiny_config()  # shard_size 3
    first = ingest(root, manifest, config)
    assert first.new_shards == ("shard-000000",)
    before = layout.shard_members(layout.open_root(root), "shard-000000")

    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    second = ingest(root, manifest, config)
    assert second.new_shards == ("shard-000001",)
    assert second.report.items_in == 1
    droot = layout.open_root(root)
    assert layout.shard_members(droot, "shard-000000") == before
    assert ingest(root, manifest, config).new_shards == ()


def test_clip_ids_come_from_content_not_paths(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    manifest = make_inputs(first, clips=2, qa_clips=1)
    shutil.copytree(first, second)
    ids = []
    for root in (first, second):
        ingest(root, root / manifest.name, tiny_config())
        droot = layout.open_root(root)
        ids.append(sorted(c.clip_id for s in layout.shards(droot) for c in layout.shard_clips(droot, s)))
    assert ids[0] == ids[1] and len(ids[0]) == 3
    clips = [c for s in layout.shards(layout.open_root(first)) for c in layout.shard_clips(layout.open_root(first), s)]
    qa = [c for c in clips if c.given_objects]
    assert len(qa) == 1 and all(o.masklet.masks for o in qa[0].given_objects)


def test_demo_adds_user_videos_with_their_sidecar_caption_and_stops_on_uncaptioned_ones(tmp_path: Path) -> None:
    from engine.errors import ConfigError
    from flows.demo import user_video_rows

    source = make_inputs(tmp_path / "src", clips=2, qa_clips=0).parent / "videos" / "synthetic"
    videos = tmp_path / "videos"
    videos.mkdir()
    first, second = sorted(source.glob("*.mp4"))
    shutil.copy(first, videos / "a.mp4")
    shutil.copy(second, videos / "b.mp4")
    (videos / "a.txt").write_text("a red ball bounces\n")
    (videos / "notes.md").write_text("not a video")
    with pytest.raises(ConfigError, match=r"no caption \(b.mp4\)"):
        user_video_rows(videos)
    (videos / "b.txt").write_text("a green box slides\n")
    rows = user_video_rows(videos)
    assert [(Path(r["video"]).name, r["caption"]) for r in rows] == [
        ("a.mp4", "a red ball bounces"), ("b.mp4", "a green box slides"),
    ]
