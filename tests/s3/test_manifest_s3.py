"""A manifest on S3: read like a local one; relative videos are URLs below its folder, one climbing out is a
`path_not_allowed` row, a missing manifest is a config error."""

from __future__ import annotations

import json

import fsspec
import pytest

from engine.errors import ConfigError, RejectReason
from flows.pipeline.manifest import read_manifest


def test_a_manifest_on_s3_names_videos_below_its_folder(s3_url: str) -> None:
    rows = [{"video": "videos/a.mp4", "caption": "a"}, {"video": "../../elsewhere/b.mp4", "caption": "b"},
            {"video": "s3://other-bucket/c.mp4", "caption": "c"}]
    url = f"{s3_url}/in/manifest.jsonl"
    fsspec.filesystem("s3").pipe_file(url, "".join(json.dumps(row) + "\n" for row in rows).encode())
    read = read_manifest(url)
    assert [row.video_uri for row in read] == [f"{s3_url}/in/videos/a.mp4", "../../elsewhere/b.mp4",
                                               "s3://other-bucket/c.mp4"]
    assert [row.problem_reason for row in read if row.problem] == [RejectReason.PATH_NOT_ALLOWED]
    assert read[1].problem and not read[0].problem and not read[2].problem
    with pytest.raises(ConfigError, match="manifest not found"):
        read_manifest(f"{s3_url}/in/none.jsonl")
