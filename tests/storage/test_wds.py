"""WebDataset export: validation on write, deterministic tars, index and stats, our reader and plain webdataset."""

from __future__ import annotations

import dataclasses
import hashlib
import tarfile
from pathlib import Path

import numpy as np
import pytest

from engine.errors import RejectReason
from storage.root import DatasetRoot
from storage.wds import ShardWriter, iter_samples, list_tars, read_index, read_raw, read_sample_at
from tests.storage.conftest import GRID, make_frames, make_sample


def write_samples(directory, count: int, *, per_tar: int = 3, split: str = "train") -> list:
    samples = [make_sample(f"detailed_{i:04d}", frames=(0, 5, 10)) for i in range(count)]
    with ShardWriter(directory, split=split, max_samples_per_tar=per_tar, grid=GRID) as writer:
        for i, sample in enumerate(samples):
            assert writer.write(sample, make_frames(3, seed=i)) is None
    return samples


def test_write_then_read_back_samples_and_frames(tmp_path: Path) -> None:
    samples = write_samples(tmp_path, 7, per_tar=3)
    tars = list_tars(tmp_path)
    assert [Path(t).name for t in tars] == ["train-000000.tar", "train-000001.tar", "train-000002.tar"]
    back = list(iter_samples(tars))
    assert [s for s, _ in back] == samples
    for i, (_, frames) in enumerate(back):
        expected = make_frames(3, seed=i)
        assert len(frames) == 3 and frames[0].shape == expected[0].shape and frames[0].dtype == np.uint8
        # JPEG at quality 90 on smooth content: close to the original, in RGB order.
        assert np.abs(frames[0].astype(int) - expected[0].astype(int)).mean() < 4


def test_tar_members_and_no_temporary_files_left(tmp_path: Path) -> None:
    write_samples(tmp_path, 2, per_tar=10)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["_stats.json", "train-000000.parquet", "train-000000.tar"]
    with tarfile.open(tmp_path / "train-000000.tar") as tar:
        members = tar.getmembers()
    assert [m.name for m in members[:4]] == [
        "detailed_0000.00.jpg",
        "detailed_0000.01.jpg",
        "detailed_0000.02.jpg",
        "detailed_0000.json",
    ]
    assert {(m.mtime, m.uid, m.gid, m.uname, m.mode) for m in members} == {(0, 0, 0, "", 0o644)}


def test_same_samples_give_byte_identical_tars(tmp_path: Path) -> None:
    write_samples(tmp_path / "a", 5)
    write_samples(tmp_path / "b", 5)
    for name in ("train-000000.tar", "train-000001.tar", "train-000000.parquet"):
        digest_a = hashlib.sha256((tmp_path / "a" / name).read_bytes()).hexdigest()
        assert digest_a == hashlib.sha256((tmp_path / "b" / name).read_bytes()).hexdigest()


def test_invalid_samples_are_rejected_with_reasons_and_counted(tmp_path: Path) -> None:
    good = make_sample("detailed_good", frames=(0, 5))
    mismatch = dataclasses.replace(make_sample("detailed_bad", frames=(0, 5), regions=2), objects=good.objects)
    with ShardWriter(tmp_path, grid=GRID) as writer:
        assert writer.write(good, make_frames(2)) is None
        reject = writer.write(mismatch, make_frames(2))
        assert reject is not None and reject.reason is RejectReason.REGION_COUNT_MISMATCH
        assert reject.item_id == "detailed_bad" and reject.stage == "export"
        wrong_frames = writer.write(make_sample("detailed_frames", frames=(0, 5)), make_frames(3))
        assert wrong_frames is not None and wrong_frames.reason is RejectReason.MALFORMED_SAMPLE
        not_uint8 = writer.write(make_sample("detailed_float", frames=(0, 5)), make_frames(2).astype(np.float32))
        assert not_uint8 is not None and not_uint8.reason is RejectReason.MALFORMED_SAMPLE
        duplicate = writer.write(good, make_frames(2))
        assert duplicate is not None and "duplicate" in duplicate.message
        not_json = dataclasses.replace(make_sample("detailed_extra", frames=(0, 5)), extra={"when": object()})
        assert writer.write(not_json, make_frames(2)).reason is RejectReason.MALFORMED_SAMPLE
    stats = DatasetRoot(tmp_path).read_json("_stats.json")["splits"]["train"]
    assert stats["samples"] == 1 and stats["samples_per_task"] == {"detailed": 1}
    assert stats["rejects_per_reason"] == {"malformed_sample": 4, "region_count_mismatch": 1}
    assert stats["bytes"] == (tmp_path / "train-000000.tar").stat().st_size
    assert [s.key for s, _ in iter_samples(list_tars(tmp_path))] == ["detailed_good"]


def test_index_rows_and_random_access(tmp_path: Path) -> None:
    samples = write_samples(tmp_path, 4, per_tar=4)
    tar = list_tars(tmp_path)[0]
    rows = read_index(tar)
    assert [r["key"] for r in rows] == [s.key for s in samples]
    assert {(r["task"], r["num_objects"], r["num_frames"]) for r in rows} == {("detailed", 1, 3)}
    sample, frames = read_sample_at(tar, rows[2]["offset"], rows[2]["size"])
    assert sample == samples[2] and len(frames) == 3


def test_failed_export_leaves_no_partial_tar(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), ShardWriter(tmp_path, grid=GRID) as writer:
        writer.write(make_sample("detailed_x", frames=(0,)), make_frames(1))
        raise RuntimeError("export crashed")
    assert list(tmp_path.iterdir()) == []


def test_writer_on_a_dataset_root_and_memory_fs(root: DatasetRoot) -> None:
    with ShardWriter(root, split="val", max_samples_per_tar=2, grid=GRID) as writer:
        for i in range(3):
            writer.write(make_sample(f"detailed_{i}", frames=(0,)), make_frames(1, seed=i))
    assert root.listdir("export/wds") == [
        "_stats.json",
        "val-000000.parquet",
        "val-000000.tar",
        "val-000001.parquet",
        "val-000001.tar",
    ]
    back = list(iter_samples(list_tars(root, split="val")))
    assert [s.key for s, _ in back] == ["detailed_0", "detailed_1", "detailed_2"]


def test_read_raw_yields_bytes_per_member(tmp_path: Path) -> None:
    write_samples(tmp_path, 1)
    (raw,) = read_raw(list_tars(tmp_path)[0])
    assert raw["__key__"] == "detailed_0000"
    assert set(raw) == {"__key__", "json", "00.jpg", "01.jpg", "02.jpg"}
    assert raw["00.jpg"][:2] == b"\xff\xd8"


def test_plain_webdataset_reads_our_tars(tmp_path: Path) -> None:
    import webdataset as wds

    samples = write_samples(tmp_path, 4, per_tar=2)
    urls = sorted(str(p) for p in tmp_path.glob("*.tar"))
    seen = []
    for url in urls:
        for item in wds.WebDataset(url, shardshuffle=False).decode("rgb8"):
            seen.append(item)
    assert [item["__key__"] for item in seen] == [s.key for s in samples]
    first = seen[0]
    assert first["json"]["task"] == "detailed" and first["json"]["objects"][0]["id"] == "obj0"
    frame = first["00.jpg"]
    assert isinstance(frame, np.ndarray) and frame.dtype == np.uint8 and frame.shape == (48, 64, 3)
    assert np.abs(frame.astype(int) - make_frames(3, seed=0)[0].astype(int)).mean() < 4


@pytest.mark.parametrize("tar_format", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_reader_understands_tars_from_other_tools(tmp_path: Path, tar_format: int) -> None:
    import io

    long_dir = "d" * 120  # longer than the 100-byte name field: prefix, GNU long name or pax path
    path = tmp_path / "other.tar"
    with tarfile.open(path, "w", format=tar_format) as tar:
        tar.addfile(_dir_info(long_dir))
        for name, data in [("k1.json", b"{}"), ("k1.txt", b"a" * 700), ("k2.json", b"[1]")]:
            info = tarfile.TarInfo(f"{long_dir}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    raws = list(read_raw(path))
    assert raws == [{"__key__": "k1", "json": b"{}", "txt": b"a" * 700}, {"__key__": "k2", "json": b"[1]"}]


def _dir_info(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    return info


def test_corrupt_tar_is_an_error_not_garbage(tmp_path: Path) -> None:
    write_samples(tmp_path, 1)
    tar = Path(list_tars(tmp_path)[0])
    data = bytearray(tar.read_bytes())
    data[10] ^= 0xFF  # inside the first member's name
    tar.write_bytes(bytes(data))
    with pytest.raises(ValueError):
        list(read_raw(tar))


def test_samples_built_from_records_export_and_read_back(tmp_path: Path) -> None:
    from storage.samples import detailed_sample, short_sample
    from tests.storage.conftest import make_record

    frame_indices = [0, 10, 20, 30]
    records = [make_record(f"clip{i}", seed=i) for i in range(3)]
    built = [detailed_sample(r, frame_indices=frame_indices, multi_frame=i % 2 == 0) for i, r in enumerate(records)]
    built += [short_sample(r, frame_indices=frame_indices) for r in records]
    with ShardWriter(tmp_path, grid=GRID) as writer:
        assert all(writer.write(s, make_frames(4, seed=i)) is None for i, s in enumerate(built))
    assert [s for s, _ in iter_samples(list_tars(tmp_path))] == built
    stats = DatasetRoot(tmp_path).read_json("_stats.json")["splits"]["train"]
    assert stats["samples_per_task"] == {"detailed": 3, "short": 3} and stats["frames"] == 24


def _sample_with_extras(key: str = "detailed_extra"):
    # Masks on sampled frames 0 and 5 and on frames 7 and 12, stored after the sampled ones.
    from tests.storage.conftest import box_mask

    sample = make_sample(key, frames=(0, 5))
    masks = {frame: box_mask(2 + frame, 2, 22 + frame, 30) for frame in (0, 5, 7, 12)}
    obj = dataclasses.replace(sample.objects[0], masks=masks)
    return dataclasses.replace(sample, objects=(obj,), extra_frame_indices=(7, 12))


def test_extra_mask_frames_are_stored_after_the_sampled_frames(tmp_path: Path) -> None:
    sample = _sample_with_extras()
    frames = make_frames(4, seed=7)  # rows: frame 0, frame 5, extra 7, extra 12
    with ShardWriter(tmp_path, grid=GRID) as writer:
        assert writer.write(sample, frames) is None
    with tarfile.open(tmp_path / "train-000000.tar") as tar:
        assert [m.name for m in tar.getmembers()] == [f"detailed_extra.0{i}.jpg" for i in range(4)] + [
            "detailed_extra.json"
        ]
    ((back, images),) = list(iter_samples(list_tars(tmp_path)))
    assert back == sample and back.extra_frame_indices == (7, 12) and len(images) == 4
    for row, image in enumerate(images):  # each row is its own frame, not a neighbour's
        errors = [np.abs(image.astype(int) - other.astype(int)).mean() for other in frames]
        assert int(np.argmin(errors)) == row and errors[row] < 4
    assert read_index(list_tars(tmp_path)[0])[0]["num_frames"] == 4


def test_frame_count_must_cover_the_extra_frames_and_stay_within_100(tmp_path: Path) -> None:
    from tests.storage.conftest import box_mask

    with ShardWriter(tmp_path, grid=GRID) as writer:
        only_sampled = writer.write(_sample_with_extras(), make_frames(2))
        assert only_sampled is not None and only_sampled.reason is RejectReason.MALFORMED_SAMPLE
        assert "2 frames but 2 frame indices + 2 extra frame indices" in only_sampled.message
        block = box_mask(0, 0, 20, 20)
        big = make_sample("detailed_big", frames=(0,))
        big = dataclasses.replace(
            big,
            objects=(dataclasses.replace(big.objects[0], masks={f: block for f in range(100)}),),
            frame_indices=(0,),
            extra_frame_indices=tuple(range(1, 100)),
        )
        assert writer.write(big, np.zeros((100, 8, 8, 3), np.uint8)) is None  # exactly 100: stored
        too_many = dataclasses.replace(big, key="detailed_huge", frame_indices=(0, 0))
        reject = writer.write(too_many, np.zeros((101, 8, 8, 3), np.uint8))
        assert reject is not None and reject.reason is RejectReason.TOO_MANY_FRAMES
    stats = DatasetRoot(tmp_path).read_json("_stats.json")["splits"]["train"]
    assert stats["rejects_per_reason"] == {"malformed_sample": 1, "too_many_frames": 1}


# ---------------------------------------------------------------- the vision grid is the model's, never assumed


def _pixel_sample(key: str, y0: int, x0: int, y1: int, x1: int):
    from tests.storage.conftest import box_mask

    sample = make_sample(key, frames=(0,))
    obj = dataclasses.replace(sample.objects[0], masks={0: box_mask(y0, x0, y1, x1)})
    return dataclasses.replace(sample, objects=(obj,))


def test_the_writer_needs_the_grid(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        ShardWriter(tmp_path)  # no 27 x 27 default: the caller names its model's grid
    for wrong in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="grid"):
            ShardWriter(tmp_path, grid=wrong)


def test_a_shard_is_validated_at_its_own_grid(tmp_path: Path) -> None:
    from storage.samples import vision_grid

    # On a 48 x 64 video: a 3 x 3 corner blob is seen by a 27 x 27 grid but by no cell of an 8 x 8 one; a 1-pixel
    # mask at (2, 28) is the other way round. The tiny model (64 px, patch 8) and SigLIP (384 px, patch 14) differ.
    corner, thin = _pixel_sample("detailed_corner", 0, 0, 3, 3), _pixel_sample("detailed_thin", 2, 28, 3, 29)
    verdicts = {}
    for grid in (vision_grid(64, 8), vision_grid(384, 14)):
        with ShardWriter(tmp_path / str(grid), grid=grid) as writer:
            verdicts[grid] = [writer.write(s, make_frames(1)) for s in (corner, thin)]
        assert DatasetRoot(tmp_path / str(grid)).read_json("_stats.json")["splits"]["train"]["grid"] == grid
    corner_8, thin_8 = verdicts[8]
    assert corner_8.reason is RejectReason.MASK_VANISHES_ON_GRID and "8x8 grid" in corner_8.message
    assert thin_8 is None
    corner_27, thin_27 = verdicts[27]
    assert corner_27 is None
    assert thin_27.reason is RejectReason.MASK_VANISHES_ON_GRID and "27x27 grid" in thin_27.message


# ---------------------------------------------------------------- clip records (issue 14.9)


def clip_samples(count: int = 3, frames: tuple[int, ...] = (0, 5, 10)) -> list:
    return [make_sample(f"detailed_{i:04d}", frames=frames) for i in range(count)]


def clip_frames(indices=(0, 5, 10), seed: int = 0) -> dict[int, np.ndarray]:
    return dict(zip(indices, make_frames(len(indices), seed=seed), strict=True))


def test_a_clip_record_stores_its_frames_once_for_all_its_samples(tmp_path: Path) -> None:
    samples = clip_samples(3)
    with ShardWriter(tmp_path, grid=GRID) as writer:
        assert writer.write_clip(samples, clip_frames()) == []
    tar = list_tars(tmp_path)[0]
    with tarfile.open(tar) as archive:
        names = archive.getnames()
    assert names == ["c0ffee.00.jpg", "c0ffee.01.jpg", "c0ffee.02.jpg", "c0ffee.json"]
    back = list(iter_samples(tar))
    assert [s for s, _ in back] == samples
    assert all(len(frames) == 3 for _, frames in back)
    assert np.abs(back[2][1][1].astype(int) - clip_frames()[5].astype(int)).mean() < 4
    rows = read_index(tar)
    assert [r["key"] for r in rows] == [s.key for s in samples] and {r["record"] for r in rows} == {"c0ffee"}
    assert read_sample_at(tar, rows[1]["offset"], rows[1]["size"], key=rows[1]["key"])[0] == samples[1]
    with pytest.raises(ValueError, match="none or several"):
        read_sample_at(tar, rows[1]["offset"], rows[1]["size"])  # three samples: the key says which


def test_clip_records_cut_the_bytes_per_sample(tmp_path: Path) -> None:
    samples, frames = clip_samples(3), clip_frames()
    with ShardWriter(tmp_path / "per_sample", grid=GRID) as writer:
        for sample in samples:
            writer.write(sample, np.stack([frames[i] for i in sample.stored_frame_indices]))
    with ShardWriter(tmp_path / "per_clip", grid=GRID) as writer:
        writer.write_clip(samples, frames)
    per_sample = (tmp_path / "per_sample" / "train-000000.tar").stat().st_size
    per_clip = (tmp_path / "per_clip" / "train-000000.tar").stat().st_size
    assert per_clip < 0.5 * per_sample  # three samples, one copy of their JPEGs instead of three
    assert [s for s, _ in iter_samples(list_tars(tmp_path / "per_clip"))] == samples


def test_plain_webdataset_reads_every_clip_record_and_the_readme_recipe_finds_each_samples_frames(
    tmp_path: Path,
) -> None:
    import webdataset as wds

    one, other = clip_samples(2), [dataclasses.replace(s, key=f"{s.key}b", clip_id="beef") for s in clip_samples(1)]
    extra = dataclasses.replace(one[1], key="detailed_extra", frame_indices=(0, 5), extra_frame_indices=(10,))
    with ShardWriter(tmp_path, grid=GRID) as writer:
        assert writer.write_clip([*one, extra], clip_frames()) == []
        assert writer.write_clip(other, clip_frames(seed=1)) == []
    ours = {s.key: frames for s, frames in iter_samples(list_tars(tmp_path))}
    records = list(wds.WebDataset(list_tars(tmp_path), shardshuffle=False).decode("rgb8"))
    assert [r["__key__"] for r in records] == ["c0ffee", "beef"]
    found = {}
    for record in records:  # the reading documented in the README's export section
        frames = record["json"]["frames"]
        for sample in record["json"]["samples"]:
            stored = sample["frame_indices"] + sample["extra_frame_indices"]
            found[sample["key"]] = [record[f"{frames.index(i):02d}.jpg"] for i in stored]
    assert sorted(found) == sorted(ours)
    for key, frames in found.items():
        assert all(np.array_equal(a, b) for a, b in zip(frames, ours[key], strict=True))


def test_clip_samples_are_validated_one_by_one(tmp_path: Path) -> None:
    good = make_sample("detailed_good", frames=(0, 5))
    mismatch = dataclasses.replace(make_sample("detailed_bad", frames=(0, 5), regions=2), objects=good.objects)
    missing = make_sample("detailed_missing", frames=(0, 7))
    with ShardWriter(tmp_path, grid=GRID) as writer:
        rejects = writer.write_clip([good, mismatch, missing], clip_frames((0, 5)))
        assert [(r.item_id, r.reason) for r in rejects] == [
            ("detailed_bad", RejectReason.REGION_COUNT_MISMATCH), ("detailed_missing", RejectReason.MALFORMED_SAMPLE)]
        assert writer.write_clip([good], clip_frames((0, 5)))[0].message.startswith("duplicate sample key")
        bad_frames = {0: make_frames(1)[0], 5: make_frames(1, height=10)[0]}
        assert writer.write_clip([make_sample("detailed_sizes", frames=(0, 5))], bad_frames)[0].reason == (
            RejectReason.MALFORMED_SAMPLE)
    assert [s.key for s, _ in iter_samples(list_tars(tmp_path))] == ["detailed_good"]


def test_a_clip_needing_more_than_100_frames_is_cut_into_records(tmp_path: Path) -> None:
    first = make_sample("detailed_a", frames=tuple(range(0, 60)))
    second = make_sample("detailed_b", frames=tuple(range(60, 120)))
    frames = dict(enumerate(make_frames(120, height=16, width=16)))
    with ShardWriter(tmp_path, grid=GRID) as writer:
        assert writer.write_clip([first, second], frames) == []
    keys = [raw["__key__"] for raw in read_raw(list_tars(tmp_path)[0])]
    assert keys == ["c0ffee", "c0ffee_1"]
    assert [s.key for s, _ in iter_samples(list_tars(tmp_path))] == ["detailed_a", "detailed_b"]


def test_an_empty_tar_keeps_a_numbered_set_without_gaps(tmp_path: Path) -> None:
    import webdataset as wds

    with ShardWriter(tmp_path, start_index=0, max_samples_per_tar=None, empty_tar=True, grid=GRID) as writer:
        writer.write_clip(clip_samples(1), clip_frames())
    with ShardWriter(tmp_path, start_index=1, max_samples_per_tar=None, empty_tar=True, grid=GRID):
        pass  # a shard that exported nothing
    tars = list_tars(tmp_path)
    assert [Path(t).name for t in tars] == ["train-000000.tar", "train-000001.tar"]
    assert list(iter_samples(tars[1])) == [] and read_index(tars[1]) == []
    url = str(tmp_path / "train-{000000..000001}.tar")  # the whole export, brace-expanded
    assert [r["__key__"] for r in wds.WebDataset(url, shardshuffle=False)] == ["c0ffee"]


def test_stats_of_writers_of_one_split_add_up_and_a_rewrite_replaces_its_own(tmp_path: Path) -> None:
    for index, count in ((0, 2), (1, 3), (0, 1)):  # the last rewrites tar 0 (a re-exported shard)
        with ShardWriter(tmp_path, start_index=index, max_samples_per_tar=None, grid=GRID) as writer:
            writer.write_clip(clip_samples(count), clip_frames())
    stats = DatasetRoot(tmp_path).read_json("_stats.json")
    assert stats["splits"]["train"]["samples"] == 4 and stats["splits"]["train"]["records"] == 2
    assert stats["splits"]["train"]["tars"] == ["train-000000.tar", "train-000001.tar"]
    assert stats["splits"]["train"]["bytes"] == sum(p.stat().st_size for p in tmp_path.glob("*.tar"))


def test_bounded_size_keeps_the_aspect_ratio_and_never_enlarges() -> None:
    from storage.wds import bounded_size

    assert bounded_size(720, 1280, 384) == (384, 683)
    assert bounded_size(1280, 720, 384) == (683, 384)
    assert bounded_size(120, 160, 384) == (120, 160)  # smaller than the vision size: stored as it is
    assert bounded_size(100, 2000, 50) == (10, 200)  # a panorama: long side at most 4x the vision size


def test_a_bounded_frame_stretched_by_the_processor_is_what_inference_sees() -> None:
    # Reference (the release, videorefer/mm_utils.py process_video with image_aspect_ratio 'square', as used by
    # train.py and the Bench inference scripts): `processor.preprocess(images)` = SigLIP's image processor, which
    # resizes each full frame to 384 x 384 with PIL bicubic (no pad, no crop).
    from PIL import Image

    from storage.wds import bound_frames

    def release_square(frame: np.ndarray, size: int) -> np.ndarray:
        return np.asarray(Image.fromarray(frame).resize((size, size), Image.Resampling.BICUBIC)).astype(float)

    native = make_frames(1, seed=3, height=360, width=640)
    stored = bound_frames(native, 96)
    assert stored.shape == (1, 96, 171, 3)
    at_training = release_square(stored[0], 96)
    at_inference = release_square(native[0], 96)
    old_square = release_square(np.asarray(Image.fromarray(native[0]).resize((24, 24))), 96)  # a poor store
    assert np.abs(at_training - at_inference).mean() < 1.0  # grey levels: the same picture
    assert np.abs(old_square - at_inference).mean() > 2 * np.abs(at_training - at_inference).mean()
