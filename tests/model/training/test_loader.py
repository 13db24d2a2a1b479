"""The training loader: determinism, split by node and worker, weighted mixing, exact resume, bad samples (counted
among good ones, a typed error when none is usable), the single/multi-frame mode (a sample's recorded mode wins, the
recipe ratio draws for the rest), and the frame plan (video frames resampled by the release's rule, every mask frame
kept as an extra frame).

The encoder here is a small stand-in for the processor that keeps what the loader decoded (video frames, extra
frame count, mode), so the tests see the loader's own behaviour; the real processor is exercised by the loop tests.
"""

from __future__ import annotations

import io
import itertools
import json
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.errors import ConfigError, InvalidSampleError
from engine.video import uniform_indices
from model.training.loader import (
    LoaderSpec,
    LoaderState,
    NoUsableSamplesError,
    SlotPosition,
    TrainingStream,
    build_loader,
    count_samples,
    decode_frames,
    decode_jpeg,
    jpeg_bytes,
    plan_frames,
    read_tar_samples,
    recorded_mode,
)
from model.training.recipes import DataMixture, DataSource
from model.training.synthetic import write_synthetic_shards


class RecordingEncoder:
    """Encodes a sample as its decoded video frames, the number of extra mask frames after them, and the mode."""

    def encode_wds(self, sample_json: dict, frames: np.ndarray, *, mode: str | None = None) -> dict:
        video = len(sample_json["frame_indices"])
        return {"key": sample_json["key"], "frames": torch.from_numpy(frames[:video]), "extras": len(frames) - video,
                "multi": mode == "multi"}

    def collate(self, items: list[dict]) -> dict:
        return {"keys": [i["key"] for i in items], "frames": torch.stack([i["frames"] for i in items]),
                "extras": torch.tensor([i["extras"] for i in items]),
                "multi": torch.tensor([i["multi"] for i in items])}


class CapturingEncoder:
    """Keeps exactly what the loader hands the processor: the json and the frames."""

    def encode_wds(self, sample_json: dict, frames: np.ndarray, *, mode: str | None = None) -> dict:
        return {"json": sample_json, "frames": frames}

    def collate(self, items: list[dict]) -> dict:
        return {"items": items}


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("shards")
    write_synthetic_shards(directory, shards=4, samples_per_shard=3, frames=4, size=32, prefix="a")
    write_synthetic_shards(directory, shards=2, samples_per_shard=3, frames=4, size=32, prefix="b", seed=1)
    return directory


def _stream(shards: Path, *, sources=None, rank=0, world=1, workers=0, micro=2, state=None, buffer=4, ratio=0.5,
            frames=4, max_bad=1000, encoder=None):
    mixture = DataMixture(sources=sources or (DataSource(shards=str(shards / "a-*.tar"), name="a"),),
                          shuffle_buffer=buffer, multi_frame_ratio=ratio, frames_per_sample=frames,
                          max_consecutive_bad=max_bad)
    spec = LoaderSpec(mixture=mixture, micro_batch=micro, seed=3, rank=rank, world_size=world, num_workers=workers)
    return TrainingStream(spec, encoder or RecordingEncoder(), state=state)


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
    # 4 stored frames, 2 wanted: positions uniform_indices(4, 2) == [1, 2]; the masks on frames 0 and 3 (multi-frame
    # samples) or on frame 0 (single-frame ones) come along as extra frames.
    batch = _take(build_loader(_stream(shards, frames=2)), 1)[0]["batch"]
    assert batch["frames"].shape == (2, 2, 32, 32, 3) and batch["frames"].dtype == torch.uint8
    assert set(batch["extras"].tolist()) <= {1, 2}


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


def _break_frames(source_tar: Path, broken: Path, *, every: bool = False) -> list[str]:
    """A copy of a shard whose first sample (or, with `every`, each sample) has an undecodable frame 01; its keys."""
    keys: list[str] = []
    with tarfile.open(source_tar) as source, tarfile.open(broken, "w") as target:
        for member in source.getmembers():
            data = source.extractfile(member).read()
            if member.name.endswith("01.jpg") and (every or not keys):
                keys.append(member.name.split(".")[0])
                data = b"not a jpeg"
            member.size = len(data)
            target.addfile(member, io.BytesIO(data))
    return keys


def test_bad_samples_are_reported_with_their_key(shards: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken-000000.tar"
    (bad_key,) = _break_frames(shards / "a-000000.tar", broken)
    stream = _stream(tmp_path, sources=(DataSource(shards=str(broken), name="x"),), micro=1, buffer=1)
    items = _take(build_loader(stream), 2)  # the two good samples of the shard's first epoch
    bad = [record for item in items for record in item["bad"]]
    assert [record["key"] for record in bad] == [bad_key]
    assert "undecodable frame" in bad[0]["message"]
    assert bad_key not in _keys(items)


@pytest.fixture
def draw_guard(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the raw samples the loader draws and stops a loader that would spin forever (after 500 draws)."""
    import model.training.loader as loader

    draws: list[int] = []
    original = loader._SourceStream.next

    def guarded(self):  # noqa: ANN001, ANN202
        draws.append(1)
        if len(draws) > 500:
            raise AssertionError("the loader is still drawing after 500 samples without one usable")
        return original(self)

    monkeypatch.setattr(loader._SourceStream, "next", guarded)
    return draws


@pytest.mark.parametrize("workers", [0, 1])
def test_a_source_without_one_good_sample_fails_naming_shards_and_reasons(
    shards: Path, tmp_path: Path, draw_guard: list[int], workers: int
) -> None:
    for shard in range(2):
        _break_frames(shards / f"a-00000{shard}.tar", tmp_path / f"broken-00000{shard}.tar", every=True)
    stream = _stream(tmp_path, sources=(DataSource(shards=str(tmp_path / "broken-*.tar"), name="x"),), micro=1,
                     workers=workers)
    with pytest.raises(NoUsableSamplesError) as info:
        _take(build_loader(stream), 1)
    assert isinstance(info.value, ConfigError)  # the trainer's CLI reports it as a config error
    message = str(info.value)
    assert "full pass over every source (x)" in message
    assert "broken-000000.tar" in message and "broken-000001.tar" in message
    assert "malformed_sample (6)" in message and "undecodable frame 01.jpg" in message
    if workers == 0:
        assert len(draw_guard) == 6  # both shards read through once, well before max_consecutive_bad


def test_consecutive_bad_samples_are_bounded(shards: Path, tmp_path: Path, draw_guard: list[int]) -> None:
    _break_frames(shards / "a-000000.tar", tmp_path / "broken-000000.tar", every=True)
    source = (DataSource(shards=str(tmp_path / "broken-*.tar"), name="x"),)
    with pytest.raises(NoUsableSamplesError, match=r"2 consecutive samples failed \(max_consecutive_bad=2\)"):
        _take(build_loader(_stream(tmp_path, sources=source, micro=1, max_bad=2)), 1)
    assert len(draw_guard) == 2
    with pytest.raises(ConfigError, match="max_consecutive_bad"):
        _stream(tmp_path, sources=source, max_bad=0)


def test_a_few_bad_samples_among_good_ones_are_only_counted(shards: Path, tmp_path: Path) -> None:
    # One bad sample of three, read for many epochs; and a source where every sample is bad beside a good source.
    (bad_key,) = _break_frames(shards / "a-000000.tar", tmp_path / "some-000000.tar")
    some = (DataSource(shards=str(tmp_path / "some-*.tar"), name="some"),)
    items = _take(build_loader(_stream(tmp_path, sources=some, micro=1, buffer=1, max_bad=2)), 20)
    assert {record["key"] for item in items for record in item["bad"]} == {bad_key}
    assert sum(len(item["bad"]) for item in items) >= 9  # one per epoch, epochs go on
    bad_keys = _break_frames(shards / "a-000001.tar", tmp_path / "all-000000.tar", every=True)
    mixed = (DataSource(shards=str(tmp_path / "all-*.tar"), name="all"),
             DataSource(shards=str(shards / "b-*.tar"), name="good"))
    items = _take(build_loader(_stream(tmp_path, sources=mixed, micro=2)), 20)
    bad = [record["key"] for item in items for record in item["bad"]]
    assert set(bad) == set(bad_keys) and len(bad) > 10
    assert not set(_keys(items)) & set(bad_keys)


def test_missing_shards_fail_fast(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        _stream(tmp_path, sources=(DataSource(shards=str(tmp_path / "none-*.tar")),))


def test_count_samples_reads_headers(shards: Path) -> None:
    assert count_samples(sorted(str(p) for p in shards.glob("a-*.tar"))) == 12


def _pillow_pixels(frames: np.ndarray, size: int) -> torch.Tensor:
    """Reference: the release's SigLIP pixels, written out (Pillow's bicubic stretch of each uint8 frame to
    size x size, then x / 255 and (x - 0.5) / 0.5 in float32), as training took them before and takes them now."""
    from PIL import Image

    resized = np.stack([np.asarray(Image.fromarray(f).resize((size, size), Image.Resampling.BICUBIC)) for f in frames])
    return (torch.from_numpy(resized).permute(0, 3, 1, 2).float() / 255.0 - 0.5) / 0.5


# At the vision size; a smaller square; the export's layout (aspect kept, short side 64, masks at the source size).
@pytest.mark.parametrize(("size", "width"), [(64, 64), (48, 48), (64, 85)])
def test_uint8_frames_normalise_to_the_processors_pixels(size: int, width: int) -> None:
    from model.configuration import VideoReferConfig
    from model.processing import VideoReferProcessor, build_tiny_tokenizer
    from model.training.synthetic import synthetic_sample
    from storage.samples import sample_to_json

    processor = VideoReferProcessor.from_config(build_tiny_tokenizer(), VideoReferConfig.preset("tiny"))
    sample, images = synthetic_sample(0, frames=4, size=size)
    frames = np.stack(images)
    frames = np.concatenate([frames, frames[:, :, : width - size]], axis=2)  # wider than high when width > size
    items = [sample_to_json(sample), frames]
    expected = processor.collate([processor.encode_wds(*items)])
    assert torch.equal(expected["pixel_values"], _pillow_pixels(frames, 64))
    for do_resize in (True, False):  # CPU training resizes in the loader, GPU training on the device
        loader = processor.replace(do_resize=do_resize, do_normalize=False)
        assert "preprocess_frames" not in vars(loader)  # options, not a method swapped onto a copy
        got = loader.collate([loader.encode_wds(*items)])
        assert got["pixel_values"].dtype == torch.uint8
        assert tuple(got["pixel_values"].shape[-2:]) == ((64, 64) if do_resize or width == size else (64, width))
        pixels = processor.normalize_pixels(got["pixel_values"])  # the training step's half
        assert torch.equal(pixels, expected["pixel_values"])  # the same Pillow resize on uint8: the very same pixels
        assert all(torch.equal(got[key], expected[key]) for key in expected if key != "pixel_values")


def test_export_frames_leave_the_workers_at_their_stored_size_and_mixed_sizes_are_resized_in_collate() -> None:
    from model.configuration import VideoReferConfig
    from model.processing import VideoReferProcessor, build_tiny_tokenizer
    from model.training.synthetic import synthetic_sample
    from storage.samples import sample_to_json

    processor = VideoReferProcessor.from_config(build_tiny_tokenizer(), VideoReferConfig.preset("tiny"))
    samples = []
    for index, (height, width) in enumerate(((64, 85), (64, 85), (64, 114), (64, 64), (48, 56))):  # 4:3, 16:9,
        sample, images = synthetic_sample(index, frames=4, size=64)  # at size, smaller (both sides resized)
        frames = np.stack(images)
        frames = np.concatenate([frames, frames[:, :, : max(0, width - 64)]], axis=2)[:, :height, :width]
        samples.append([sample_to_json(sample), np.ascontiguousarray(frames)])
    deferred = processor.replace(do_resize=False, do_normalize=False)
    eager = processor.replace(do_normalize=False)
    first = deferred.encode_wds(*samples[0])
    assert tuple(first["pixel_values"].shape) == (4, 3, 64, 85) and first["pixel_values"].dtype == torch.uint8
    assert tuple(deferred.encode_wds(*samples[4])["pixel_values"].shape[-2:]) == (64, 64)  # two passes: resized
    assert tuple(eager.encode_wds(*samples[0])["pixel_values"].shape[-2:]) == (64, 64)
    for batch in (samples[:2], samples[:4], samples):  # one stored size (left for the trainer), then mixed sizes
        expected = processor.collate([processor.encode_wds(*items) for items in batch])
        reference = torch.cat([_pillow_pixels(frames, 64) for _, frames in batch])
        assert torch.equal(expected["pixel_values"], reference)
        for encoder in (deferred, eager):
            got = encoder.collate([encoder.encode_wds(*items) for items in batch])
            assert torch.equal(processor.normalize_pixels(got["pixel_values"]), reference)
            assert all(torch.equal(got[key], expected[key]) for key in expected if key != "pixel_values")


# ---------------------------------------------------------------- the frame plan

VIDEO_FRAMES = tuple(range(0, 64, 4))  # 16 sampled frames: 0, 4, ..., 60
EXTRA_FRAMES = (2, 33, 61)  # stored mask frames off the sampled ones
MASK_FRAMES = ({0, 2, 8, 33}, {4, 60, 61})  # per object: on kept, dropped and extra frames when 8 are wanted


def _frame_image(index: int, size: tuple[int, int] = (48, 64)) -> np.ndarray:
    # A different smooth pattern per frame index, so a frame in the wrong row is obvious.
    ys, xs = np.mgrid[0 : size[0], 0 : size[1]]
    base = np.stack([np.sin(xs / (3 + index % 7)), np.cos(ys / (2 + index % 5)), np.sin((xs + ys) / (4 + index))], -1)
    return ((base + 1) * 127.5).astype(np.uint8)


def _box(frame: int, size: tuple[int, int] = (48, 64)):
    from engine.masks import encode_rle
    from engine.types import RleMask

    mask = np.zeros(size, dtype=bool)
    top = frame % 20
    mask[top : top + 20, 10:40] = True
    return RleMask.from_coco(encode_rle(mask))


@pytest.fixture(scope="module")
def extra_shard(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tar with one sample: 16 sampled frames + 3 extra mask frames, written by the export's ShardWriter."""
    from engine.types import Sample, SampleObject, Turn
    from storage.wds import ShardWriter

    directory = tmp_path_factory.mktemp("extra-shard")
    question = "<video>\nWhat do <region> and <region> do?"
    sample = Sample(
        key="extra_sample", task="qa", video_uri="file:///v.mp4",
        conversations=(Turn(role="human", value=question), Turn(role="gpt", value="They move.")),
        objects=tuple(SampleObject(object_id=f"o{i}", category="box", masks={f: _box(f) for f in sorted(frames)})
                      for i, frames in enumerate(MASK_FRAMES)),
        frame_indices=VIDEO_FRAMES, extra_frame_indices=EXTRA_FRAMES, height=48, width=64,
    )
    frames = np.stack([_frame_image(i) for i in sample.stored_frame_indices])
    with ShardWriter(directory, split="x", grid=8) as writer:  # the tiny model's 64 px / patch 8
        assert writer.write(sample, frames) is None
    return directory / "x-000000.tar"


def _capture(tar: Path, wanted: int) -> tuple[dict, dict, np.ndarray]:
    mixture = DataMixture(sources=(DataSource(shards=str(tar), name="x"),), shuffle_buffer=1,
                          multi_frame_ratio=None, frames_per_sample=wanted)
    stream = TrainingStream(LoaderSpec(mixture=mixture, micro_batch=1), CapturingEncoder())
    item = next(iter(build_loader(stream)))
    assert item["bad"] == []
    raw = next(read_tar_samples(str(tar)))
    captured = item["batch"]["items"][0]
    return raw, captured["json"], captured["frames"]


def test_fewer_wanted_frames_keep_every_mask_as_extra_frames(extra_shard: Path) -> None:
    raw, planned, frames = _capture(extra_shard, 8)
    kept = uniform_indices(16, 8)
    assert kept == [1, 3, 5, 7, 8, 10, 12, 14]
    assert planned["frame_indices"] == [VIDEO_FRAMES[p] for p in kept]
    every_mask = sorted(set().union(*MASK_FRAMES))
    assert planned["extra_frame_indices"] == [f for f in every_mask if f not in planned["frame_indices"]]
    assert planned["extra_frame_indices"] == [0, 2, 8, 33, 60, 61]
    assert [sorted(int(f) for f in obj["masks"]) for obj in planned["objects"]] == [sorted(m) for m in MASK_FRAMES]
    # Rows: the kept video frames, then each extra frame from where it is stored (dropped video frame or old extra).
    stored = list(VIDEO_FRAMES + EXTRA_FRAMES)
    positions = kept + [stored.index(f) for f in planned["extra_frame_indices"]]
    assert positions[8:] == [0, 16, 2, 17, 15, 18]
    assert frames.shape == (14, 48, 64, 3)
    for row, position in enumerate(positions):
        np.testing.assert_array_equal(frames[row], decode_jpeg(raw[f"{position:02d}.jpg"]))


def test_wanted_frames_as_stored_leave_the_sample_untouched(extra_shard: Path) -> None:
    raw, planned, frames = _capture(extra_shard, 16)
    assert planned == json.loads(raw["json"])
    assert frames.shape == (19, 48, 64, 3)
    for position in range(19):
        np.testing.assert_array_equal(frames[position], decode_jpeg(raw[f"{position:02d}.jpg"]))


def test_the_processor_accepts_the_planned_layout(extra_shard: Path) -> None:
    from model.configuration import VideoReferConfig
    from model.processing import VideoReferProcessor, build_tiny_tokenizer

    processor = VideoReferProcessor.from_config(build_tiny_tokenizer(), VideoReferConfig.preset("tiny"))
    raw = next(read_tar_samples(str(extra_shard)))
    planned, positions = plan_frames(json.loads(raw["json"]), 19, 8)
    encoded = processor.encode_wds(planned, decode_frames(raw, positions), mode="multi")
    assert int(encoded["video_frame_counts"]) == 8


def test_old_shards_without_extra_frames_keep_their_masks() -> None:
    # A shard written before `extra_frame_indices` existed: 4 frames, masks on all of them, 2 wanted.
    old = {"frame_indices": [0, 10, 20, 30], "objects": [{"masks": {"0": {}, "10": {}, "20": {}, "30": {}}}]}
    planned, positions = plan_frames(old, 4, 2)
    assert planned["frame_indices"] == [10, 20] and planned["extra_frame_indices"] == [0, 30]
    assert positions == [1, 2, 0, 3]
    # More frames wanted than stored: the release's rule repeats frames; no mask frame is then an extra frame.
    planned, positions = plan_frames(old, 4, 8)
    assert positions == uniform_indices(4, 8) and set(positions) == {0, 1, 2, 3}
    assert planned["frame_indices"] == [[0, 10, 20, 30][p] for p in positions]
    assert planned["extra_frame_indices"] == []


def test_a_frame_count_that_disagrees_with_the_json_is_a_bad_sample() -> None:
    with pytest.raises(InvalidSampleError, match="3 frames stored"):
        plan_frames({"frame_indices": [0, 1], "extra_frame_indices": [], "objects": []}, 3, 1)
    with pytest.raises(InvalidSampleError, match="not among the stored frames"):
        plan_frames({"frame_indices": [0, 1, 2], "objects": [{"masks": {"7": {}}}]}, 3, 2)


def test_repeated_positions_decode_once(extra_shard: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import model.training.loader as loader

    calls: list[int] = []
    original = loader.decode_jpeg
    monkeypatch.setattr(loader, "decode_jpeg", lambda data: calls.append(1) or original(data))
    raw = next(read_tar_samples(str(extra_shard)))
    frames = decode_frames(raw, [3, 3, 0, 3])
    assert len(calls) == 2 and frames.shape[0] == 4
    np.testing.assert_array_equal(frames[0], frames[3])


# ---------------------------------------------------------------- the single/multi-frame mode: decided once


class ModeEncoder:
    """Records the mode the loader asks the processor for, per sample key."""

    def encode_wds(self, sample_json: dict, frames: np.ndarray, *, mode: str | None = None) -> dict:
        return {"key": sample_json["key"], "mode": mode}

    def collate(self, items: list[dict]) -> dict:
        return {"keys": [i["key"] for i in items], "modes": [i["mode"] for i in items]}


@pytest.fixture(scope="module")
def mode_shards(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str | None]]:
    """Shards written by the export's ShardWriter: 8 samples exported multi-frame, 8 single-frame, 8 without a mode
    (like imported 700K items, masks on every frame); returns the directory and each key's recorded mode."""
    import dataclasses

    from model.training.synthetic import synthetic_sample
    from storage.samples import vision_grid
    from storage.wds import ShardWriter

    directory = tmp_path_factory.mktemp("mode-shards")
    modes: dict[str, str | None] = {}
    with ShardWriter(directory, split="m", max_samples_per_tar=6, grid=vision_grid(64, 8)) as writer:
        for index in range(24):
            mode = ("multi", "single", None)[index % 3]
            sample, images = synthetic_sample(index, frames=4, size=32, multi_frame=mode != "single")
            if mode is not None:
                sample = dataclasses.replace(sample, extra={"mode": mode})
            assert writer.write(sample, np.stack(images)) is None
            modes[sample.key] = mode
    return directory, modes


def _modes(directory: Path, ratio: float | None, epochs: int = 1) -> list[tuple[str, str | None]]:
    stream = _stream(directory, sources=(DataSource(shards=str(directory / "m-*.tar"), name="m"),), micro=4,
                     ratio=ratio, encoder=ModeEncoder())
    items = _take(build_loader(stream), 6 * epochs)
    return [pair for item in items for pair in zip(item["batch"]["keys"], item["batch"]["modes"], strict=True)]


@pytest.mark.parametrize("ratio", [0.5, 0.0, 1.0, None])
def test_a_samples_recorded_mode_wins_over_the_recipe_ratio(mode_shards, ratio) -> None:
    directory, recorded = mode_shards
    got = _modes(directory, ratio, epochs=2)
    assert len(got) == 48 and {key for key, _ in got} == set(recorded)
    exported = [(key, mode) for key, mode in got if recorded[key] is not None]
    assert all(mode == recorded[key] for key, mode in exported)  # never re-drawn by a second coin
    # Half the exported samples are multi-frame, and so is exactly half of what the loader yields of them.
    assert sum(mode == "multi" for _, mode in exported) == len(exported) // 2 == 16


def test_samples_without_a_mode_follow_the_recipe_ratio(mode_shards) -> None:
    directory, recorded = mode_shards
    free = {ratio: [mode for key, mode in _modes(directory, ratio, epochs=4) if recorded[key] is None]
            for ratio in (0.0, 1.0, 0.5, None)}
    assert free[0.0] == ["single"] * 32 and free[1.0] == ["multi"] * 32
    assert 8 <= free[0.5].count("multi") <= 24 and set(free[0.5]) == {"single", "multi"}
    assert free[None] == [None] * 32  # the processor's own rule (multi-frame: these carry several mask frames)


def test_recorded_mode_reads_the_exports_field() -> None:
    assert recorded_mode({"extra": {"mode": "multi"}}) == "multi"
    assert recorded_mode({"mode": "single", "extra": {"mode": "multi"}}) == "single"
    assert recorded_mode({"extra": {"source_format": "videorefer-700k"}}) is None
    assert recorded_mode({}) is None
    with pytest.raises(InvalidSampleError, match="unknown sample mode"):
        recorded_mode({"extra": {"mode": "both"}})


# ---------------------------------------------------------------- clip records (issue 14.9: a clip's frames once)


def _clip_record_shard(directory: Path) -> tuple[Path, list]:
    import dataclasses

    from storage.wds import ShardWriter
    from tests.storage.conftest import GRID, make_frames, make_sample

    samples = [make_sample(f"detailed_{i:04d}", frames=(0, 5, 10)) for i in range(3)]
    other = [dataclasses.replace(samples[0], key="detailed_other", clip_id="beef")]  # a second clip
    with ShardWriter(directory, split="clips", grid=GRID) as writer:
        assert writer.write_clip(samples, dict(zip((0, 5, 10), make_frames(3), strict=True))) == []
        assert writer.write_clip(other, dict(zip((0, 5, 10), make_frames(3, seed=1), strict=True))) == []
    return directory / "clips-000000.tar", [*samples, *other]


def test_clip_records_read_as_one_raw_sample_per_training_sample(tmp_path: Path) -> None:
    tar, samples = _clip_record_shard(tmp_path)
    raws = list(read_tar_samples(str(tar)))
    assert [raw["__key__"] for raw in raws] == [s.key for s in samples]
    assert [json.loads(raw["json"])["key"] for raw in raws] == [s.key for s in samples]
    with tarfile.open(tar) as archive:
        stored = {m.name: archive.extractfile(m).read() for m in archive if m.name.endswith(".jpg")}
    assert raws[0]["01.jpg"] == raws[2]["01.jpg"] == stored["c0ffee.01.jpg"]  # shared, one copy in the tar
    assert raws[3]["00.jpg"] == stored["beef.00.jpg"]
    assert count_samples([str(tar)]) == 4


def test_the_loader_trains_on_every_sample_of_clip_records(tmp_path: Path) -> None:
    tar, samples = _clip_record_shard(tmp_path)
    stream = _stream(tmp_path, sources=(DataSource(shards=str(tar), name="clips"),), micro=1, frames=3, buffer=1,
                     encoder=CapturingEncoder())
    items = [item["batch"]["items"][0] for item in _take(build_loader(stream), 4)]
    assert sorted(i["json"]["key"] for i in items) == sorted(s.key for s in samples)
    assert all(i["frames"].shape == (3, 48, 64, 3) for i in items)


def test_a_broken_clip_record_is_a_bad_sample_not_a_crash(tmp_path: Path) -> None:
    tar, _ = _clip_record_shard(tmp_path)
    broken = tmp_path / "broken-000000.tar"
    with tarfile.open(tar) as source, tarfile.open(broken, "w", format=tarfile.USTAR_FORMAT) as out:
        for member in source:
            data = source.extractfile(member).read()
            if member.name == "c0ffee.json":
                data = data.replace(b'"frames":[0,5,10]', b'"frames":[0,5]')  # lists fewer frames than it holds
            member.size = len(data)
            out.addfile(member, io.BytesIO(data))
    stream = _stream(tmp_path, sources=(DataSource(shards=str(broken), name="x"),), micro=1, frames=3, buffer=1,
                     encoder=CapturingEncoder())
    first = next(iter(build_loader(stream)))
    assert first["batch"]["items"][0]["json"]["key"] == "detailed_other"
    assert [bad["key"] for bad in first["bad"]] == ["c0ffee"]


def test_jpeg_codec_falls_back_to_pillow_without_opencv(monkeypatch: pytest.MonkeyPatch) -> None:
    # The lent GPU machine carries no OpenCV (its wheel alone is ~60 MB): Pillow encodes and decodes there instead.
    from PIL import Image

    ys, xs = np.mgrid[0:24, 0:32]
    frame = np.stack([ys * 10, xs * 8, 255 - xs * 8], axis=-1).astype(np.uint8)  # smooth: JPEG keeps it closely
    with_opencv = jpeg_bytes(frame)
    monkeypatch.setitem(sys.modules, "cv2", None)  # `import cv2` raises ImportError
    with pytest.raises(ImportError):
        import cv2  # noqa: F401
    data = jpeg_bytes(frame)
    assert data[:2] == b"\xff\xd8"  # a JPEG stream
    decoded = decode_jpeg(data)
    assert np.array_equal(decoded, np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
    assert np.abs(decoded.astype(int) - frame).mean() < 4  # a JPEG of the frame
    assert decode_jpeg(with_opencv).shape == (24, 32, 3)
    assert decode_jpeg(b"not a jpeg") is None
