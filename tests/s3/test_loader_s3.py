"""The training loader streams shards from `s3://`: a brace or glob pattern names the store's objects, each tar is
read by range requests, and DataLoader workers (forked processes) read their own shards as from a local folder."""

from __future__ import annotations

from pathlib import Path

import fsspec
import pytest

from model.training.loader import LoaderSpec, TrainingStream, build_loader, count_samples, expand_shards
from model.training.recipes import DataMixture, DataSource
from model.training.synthetic import write_synthetic_shards
from tests.model.training.test_loader import RecordingEncoder, _keys, _take


@pytest.fixture
def s3_shards(tmp_path: Path, s3_url: str) -> tuple[Path, str]:
    local = tmp_path / "shards"
    write_synthetic_shards(local, shards=4, samples_per_shard=3, frames=4, size=32, prefix="a")
    fs = fsspec.filesystem("s3")
    for path in sorted(local.glob("*.tar")):
        fs.put_file(str(path), f"{s3_url}/wds/{path.name}")
    return local, f"{s3_url}/wds"


def _loader(pattern: str, workers: int):
    mixture = DataMixture(sources=(DataSource(shards=pattern, name="a"),), shuffle_buffer=4, multi_frame_ratio=0.5,
                          frames_per_sample=4, max_consecutive_bad=1000)
    spec = LoaderSpec(mixture=mixture, micro_batch=2, seed=3, rank=0, world_size=1, num_workers=workers)
    return build_loader(TrainingStream(spec, RecordingEncoder()))


def test_the_loader_streams_s3_shards_as_it_reads_local_ones(s3_shards: tuple[Path, str]) -> None:
    local, url = s3_shards
    names = sorted(p.name for p in local.glob("*.tar"))
    stem = names[0].rsplit("-", 1)[0]
    pattern = f"{url}/{stem}-{{{names[0].rsplit('-', 1)[1][:-4]}..{names[-1].rsplit('-', 1)[1][:-4]}}}.tar"
    assert expand_shards(pattern) == [f"{url}/{name}" for name in names] == expand_shards(f"{url}/a-*.tar")
    assert count_samples(expand_shards(pattern)) == count_samples(sorted(str(p) for p in local.glob("*.tar"))) == 12
    # One epoch (12 samples in batches of 2) over two workers: the same samples (the order is seeded by the URLs).
    local_keys = _keys(_take(_loader(str(local / "a-*.tar"), workers=2), 6))
    streamed = _keys(_take(_loader(pattern, workers=2), 6))
    assert sorted(streamed) == sorted(local_keys) and len(set(streamed)) == 12
