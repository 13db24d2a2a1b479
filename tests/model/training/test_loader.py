"""The training loader: determinism, split by node and worker, weighted mixing, exact resume, bad samples.

The encoder here is a small stand-in for the processor that keeps what the loader decoded (frame count, size,
mode), so the tests see the loader's own behaviour; the real processor is exercised by the loop tests.
"""

from __future__ import annotations

import io
import itertools
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.errors import ConfigError
from model.training.loader import (
    LoaderSpec,
    LoaderState,
    SlotPosition,
    TrainingStream,
    build_loader,
    count_samples,
    uniform_indices,
)
from model.training.recipes import DataMixture, DataSource
from model.training.synthetic import write_synthetic_shards


class RecordingEncoder:
    """Encodes a sample as its decoded frame tensor plus the mode it was asked for."""

    def encode_wds(self, sample_json: dict, frames: np.ndarray, *, mode: str | None = None) -> dict:
        return {"key": sample_json["key"], "frames": torch.from_numpy(frames), "multi": mode == "multi"}

    def collate(self, items: list[dict]) -> dict:
        return {"keys": [i["key"] for i in items], "frames": torch.stack([i["frames"] for i in items]),
                "multi": torch.tensor([i["multi"] for i in items])}


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("shards")
    write_synthetic_shards(directory, shards=4, samples_per_shard=3, frames=4, size=32, prefix="a")
    write_synthetic_shards(directory, shards=2, samples_per_shard=3, frames=4, size=32, prefix="b", seed=1)
    return directory


def _stream(shards: Path, *, sources=None, rank=0, world=1, workers=0, micro=2, state=None, buffer=4, ratio=0.5,
            frames=4):
    mixture = DataMixture(sources=sources or (DataSource(shards=str(shards / "a-*.tar"), name="a"),),
                          shuffle_buffer=buffer, multi_frame_ratio=ratio, frames_per_sample=frames)
    spec = LoaderSpec(mixture=mixture, micro_batch=micro, seed=3, rank=rank, world_size=world, num_workers=workers)
    return TrainingStream(spec, RecordingEncoder(), state=state)


def _take(loader, count: int) -> list[dict]:
    return list(itertools.islice(iter(loader), count))


def _keys(items: list[dict]) -> list[str]:
    return [key for item in items for key in item["batch"]["keys"]]


def test_same_seed_gives_the_same_stream(shards: Path) -> None:
    first = _keys(_take(build_loader(_stream(shards)), 8))
    second = _keys(_take(build_loader(_stream(shards)), 8))
    assert first == second
    assert len(set(first[:12])) == 12  # one epoch holds every sample once


def test_ranks_read_disjoint_shards_covering_the_epoch(shards: Path) -> None:
    per_rank = [set(_keys(_take(build_loader(_stream(shards, rank=r, world=2, buffer=1)), 3))) for r in range(2)]
    assert per_rank[0].isdisjoint(per_rank[1])
    assert len(per_rank[0] | per_rank[1]) == 12


def test_fewer_shards_than_slots_splits_by_sample(shards: Path) -> None:
    # 2 shards of 3 samples over 2 ranks x 2 workers: slots 0..3 get samples 0,4 | 1,5 | 2 | 3 of each epoch.
    source = (DataSource(shards=str(shards / "b-*.tar"), name="b"),)
    keys = [_keys(_take(build_loader(_stream(shards, sources=source, rank=r, world=2, workers=2, micro=1,
                                             buffer=1)), count)) for r, count in ((0, 4), (1, 2))]
    assert len(set(keys[0])) == 4 and len(set(keys[1])) == 2
    assert set(keys[0]).isdisjoint(keys[1]) and len(set(keys[0]) | set(keys[1])) == 6


def test_weighted_mixing_draws_sources_by_weight(shards: Path) -> None:
    sources = (DataSource(shards=str(shards / "a-*.tar"), weight=3.0, name="a"),
               DataSource(shards=str(shards / "b-*.tar"), weight=1.0, name="b"))
    items = _take(build_loader(_stream(shards, sources=sources, micro=4)), 50)
    from_a = {key for key in _keys(_take(build_loader(_stream(shards, micro=4)), 3))}
    share = np.mean([key in from_a for key in _keys(items)])
    assert 0.65 < share < 0.85
    assert items[-1]["position"]["sources"]["b"]["epoch"] > 0  # the small source cycles into later epochs


def test_mode_follows_the_multi_frame_ratio(shards: Path) -> None:
    single = _take(build_loader(_stream(shards, ratio=0.0)), 4)
    assert not any(bool(item["batch"]["multi"].any()) for item in single)
    both = torch.cat([item["batch"]["multi"] for item in _take(build_loader(_stream(shards, ratio=0.5)), 20)])
    assert 0.25 < float(both.float().mean()) < 0.75


def test_frames_are_decoded_and_subsampled(shards: Path) -> None:
    batch = _take(build_loader(_stream(shards, frames=2)), 1)[0]["batch"]
    assert batch["frames"].shape == (2, 2, 32, 32, 3) and batch["frames"].dtype == torch.uint8
    assert uniform_indices(16, 4) == [2, 6, 9, 13] and uniform_indices(3, 8) == [0, 1, 2]


@pytest.mark.parametrize("consumed", [3, 4])
def test_resume_continues_the_stream_exactly(shards: Path, consumed: int) -> None:
    # Two workers: after an odd number of batches the next one is worker 1's, which the resumed loader honours.
    reference = _keys(_take(build_loader(_stream(shards, workers=2)), consumed + 5))
    state = LoaderState()
    for item in _take(build_loader(_stream(shards, workers=2)), consumed):
        state = state.advanced(item["worker"], SlotPosition.from_json(item["position"]))
    state = LoaderState.from_json(state.to_json())  # as through a checkpoint
    resumed = _keys(_take(build_loader(_stream(shards, workers=2, state=state)), 5))
    assert resumed == reference[consumed * 2 :]


def test_bad_samples_are_reported_with_their_key(shards: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken-000000.tar"
    with tarfile.open(shards / "a-000000.tar") as source, tarfile.open(broken, "w") as target:
        for member in source.getmembers():
            data = source.extractfile(member).read()
            if member.name.endswith("01.jpg") and not any(m for m in target.getmembers() if "01.jpg" in m.name):
                bad_key = member.name.split(".")[0]
                data = b"not a jpeg"
            member.size = len(data)
            target.addfile(member, io.BytesIO(data))
    stream = _stream(tmp_path, sources=(DataSource(shards=str(broken), name="x"),), micro=1, buffer=1)
    items = _take(build_loader(stream), 2)  # the two good samples of the shard's first epoch
    bad = [record for item in items for record in item["bad"]]
    assert [record["key"] for record in bad] == [bad_key]
    assert "undecodable frame" in bad[0]["message"]
    assert bad_key not in _keys(items)


def test_missing_shards_fail_fast(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        _stream(tmp_path, sources=(DataSource(shards=str(tmp_path / "none-*.tar")),))


def test_count_samples_reads_headers(shards: Path) -> None:
    assert count_samples(sorted(str(p) for p in shards.glob("a-*.tar"))) == 12


@pytest.mark.parametrize("size", [64, 48])  # at the vision size (the export's), and one that needs a resize
def test_uint8_frames_normalise_to_the_processors_pixels(size: int) -> None:
    from model.configuration import VideoReferConfig
    from model.processing import VideoReferProcessor, build_tiny_tokenizer
    from model.training.loader import Uint8FramesEncoder, normalize_pixels
    from model.training.synthetic import synthetic_sample
    from storage.samples import sample_to_json

    processor = VideoReferProcessor.from_config(build_tiny_tokenizer(), VideoReferConfig.preset("tiny"))
    sample, images = synthetic_sample(0, frames=4, size=size)
    items = [sample_to_json(sample), np.stack(images)]
    expected = processor.collate([processor.encode_wds(*items)])
    encoder = Uint8FramesEncoder(processor)
    got = encoder.collate([encoder.encode_wds(*items)])
    assert got["pixel_values"].dtype == torch.uint8
    pixels = normalize_pixels(got["pixel_values"], processor)
    tolerance = 0.0 if size == 64 else 1.0 / 255 * 2  # rounding to uint8 after the resize
    torch.testing.assert_close(pixels, expected["pixel_values"], rtol=0, atol=tolerance + 1e-6)
    assert all(torch.equal(got[key], expected[key]) for key in expected if key != "pixel_values")
