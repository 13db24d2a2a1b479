"""Bench-D / Bench-Q readers on files in the published format, and the resumable prediction JSONL store."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from agents.bench.files import (
    PredictionStore,
    item_record,
    parse_option_letter,
    read_bench_d,
    read_bench_q,
)
from engine.errors import ConfigError, RejectReason
from engine.masks import decode_rle, encode_rle


def _rle(h: int = 8, w: int = 10, box: tuple[int, int, int, int] = (2, 2, 5, 6)) -> dict:
    mask = np.zeros((h, w), dtype=bool)
    mask[box[0] : box[2], box[1] : box[3]] = True
    return encode_rle(mask)


def _d_entry(idx: int, video: str = "clip.mp4", **over) -> dict:
    entry = {
        "id": idx, "video": video, "caption": "A red ball rolls.", "frame_idx": "4",
        "annotation": [{"0": {"segmentation": _rle()}, "4": {"segmentation": _rle()}, "8": {"segmentation": None}}],
    }
    entry.update(over)
    return entry


def _q_entry(idx: int, video: str = "frames", **over) -> dict:
    entry = {
        "id": idx, "video": video, "Question": "What is <object3><region> doing?", "type": "Basic Questions",
        "options": ["(A) Running", "(B) Sitting"], "Answer": "(B) Sitting", "frame_idx": "0",
        "annotation": [{"0": {"segmentation": _rle()}, "3": {"segmentation": _rle()}}],
    }
    entry.update(over)
    return entry


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    (tmp_path / "clip.mp4").write_bytes(b"not really a video, but it exists")
    (tmp_path / "frames").mkdir()
    (tmp_path / "frames" / "00000.jpg").write_bytes(b"jpg")
    return tmp_path


def _write(path: Path, entries: list) -> Path:
    path.write_text(json.dumps(entries))
    return path


def test_bench_d_reads_published_fields_and_modes(data_root: Path) -> None:
    bench = read_bench_d(_write(data_root / "d.json", [_d_entry(0)]))
    assert bench.rejects == ()
    (item,) = bench.items
    assert item.item_id == "0" and item.caption == "A red ball rolls." and item.frame_idx == 4
    assert item.video_path == data_root / "clip.mp4"
    obj = item.objects[0]
    assert obj.masks[8] is None and obj.frame_indices == (0, 4, 8)  # a null mask is kept (a zero mask later)
    assert decode_rle(obj.masks[0]).sum() == 12


def test_bad_entries_are_rejected_with_reasons_and_the_rest_is_read(data_root: Path) -> None:
    entries = [
        _d_entry(0),
        _d_entry(1, video="missing.mp4"),
        _d_entry(2, caption=""),
        _d_entry(3, annotation=[{"x": {"segmentation": _rle()}}]),
        _d_entry(4, annotation=[{"0": {"segmentation": None}}]),  # only null masks: runs, as in the release
        _d_entry(5, annotation=[{"0": {"segmentation": {}}}]),
        _d_entry(0),  # duplicate id
        "not an object",
    ]
    bench = read_bench_d(_write(data_root / "d.json", entries))
    assert [i.item_id for i in bench.items] == ["0", "4"]
    reasons = {r.item_id: r.reason for r in bench.rejects}
    assert reasons["1"] == RejectReason.VIDEO_NOT_FOUND
    assert reasons["2"] == RejectReason.MALFORMED_SAMPLE
    assert reasons["3"] == RejectReason.MALFORMED_SAMPLE
    assert reasons["5"] == RejectReason.MALFORMED_SAMPLE
    assert reasons["0@6"] == RejectReason.MALFORMED_SAMPLE  # the duplicate still counts, under its position
    assert reasons["entry7"] == RejectReason.MALFORMED_SAMPLE
    assert len(bench.rejects) == 6
    assert bench.entry_ids() == ["0", "1", "2", "3", "4", "5", "0@6", "entry7"]  # every entry, for the denominator


def test_uncompressed_rle_and_polygons_become_compressed_rle(data_root: Path) -> None:
    mask = np.zeros((8, 10), dtype=bool)
    mask[1:4, 2:6] = True
    flat = mask.flatten(order="F")
    counts, current, run = [], False, 0
    for value in flat:
        if value != current:
            counts.append(run)
            current, run = value, 0
        run += 1
    counts.append(run)
    polygon = [[2, 1, 6, 1, 6, 4, 2, 4]]
    entry = _d_entry(0, annotation=[{"0": {"segmentation": {"size": [8, 10], "counts": counts}},
                                     "1": {"segmentation": polygon}}])
    obj = read_bench_d(_write(data_root / "d.json", [entry])).items[0].objects[0]
    assert np.array_equal(decode_rle(obj.masks[0]), mask)
    assert decode_rle(obj.masks[1]).sum() > 0


def test_bench_q_reads_question_options_answer_and_object_names(data_root: Path) -> None:
    bench = read_bench_q(_write(data_root / "q.json", [_q_entry(7)]))
    (item,) = bench.items
    assert item.answer_letter == "B" and item.option_letters == ("A", "B")
    assert item.type_key == "basic" and item.objects[0].name == "<object3>"
    assert item_record(item)["option_letters"] == ["A", "B"]


def test_bench_q_rejects_region_count_mismatch_and_bad_answers(data_root: Path) -> None:
    entries = [
        _q_entry(0, Question="Is <object0><region> near <object1><region>?"),
        _q_entry(1, Answer="Sitting"),
        _q_entry(2, Answer="(C) Flying"),
        _q_entry(3, options=[]),
    ]
    bench = read_bench_q(_write(data_root / "q.json", entries))
    assert bench.items == ()
    reasons = {r.item_id: r.reason for r in bench.rejects}
    assert reasons == {"0": RejectReason.REGION_COUNT_MISMATCH, "1": RejectReason.MALFORMED_SAMPLE,
                       "2": RejectReason.MALFORMED_SAMPLE, "3": RejectReason.MALFORMED_SAMPLE}


def test_data_root_points_elsewhere_and_config_errors_fail_fast(tmp_path: Path, data_root: Path) -> None:
    other = tmp_path / "json"
    other.mkdir()
    path = _write(other / "d.json", [_d_entry(0)])
    assert read_bench_d(path).rejects[0].reason == RejectReason.VIDEO_NOT_FOUND
    assert len(read_bench_d(path, data_root=data_root).items) == 1
    with pytest.raises(ConfigError):
        read_bench_d(tmp_path / "absent.json")
    with pytest.raises(ConfigError):
        read_bench_d(path, data_root=tmp_path / "nope")
    (other / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError):
        read_bench_q(other / "bad.json")


def test_parse_option_letter() -> None:
    assert parse_option_letter("(A) A helmet") == "A"
    assert parse_option_letter("C) no") == "C"
    assert parse_option_letter("b") == "B"
    assert parse_option_letter("Sitting") is None


def test_prediction_store_resumes_and_cuts_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "out" / "preds.jsonl"
    with PredictionStore(path, expect={"model": "m"}) as store:
        store.append({"id": 1, "pred": "a"})
        store.append({"id": "2", "pred": "b"})
    with path.open("a") as handle:
        handle.write('{"id": "3", "pred": "tor')  # killed mid-write
    store = PredictionStore(path, expect={"model": "m"})
    assert store.done_ids() == {"1", "2"} and "3" not in store
    store.append({"id": 3, "pred": "c"})
    store.close()
    lines = path.read_text().splitlines()
    assert [json.loads(line)["id"] for line in lines] == ["1", "2", "3"]
    assert all(json.loads(line)["model"] == "m" for line in lines)


def test_prediction_store_refuses_to_mix_runs(tmp_path: Path) -> None:
    path = tmp_path / "preds.jsonl"
    with PredictionStore(path, expect={"model": "m", "mode": "single"}) as store:
        store.append({"id": 1})
    with pytest.raises(ConfigError, match="another run"):
        PredictionStore(path, expect={"model": "m", "mode": "multi"})
