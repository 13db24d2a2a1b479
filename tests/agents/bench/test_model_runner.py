"""Our model's benchmark runner: masks per mode, null masks, frames and questions as the release, resume, tiny model.

Questions are checked against the release's inference scripts (transcribed in release_reference.py).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agents.bench.files import PredictionStore, read_bench_d, read_bench_q
from agents.bench.model_runner import ModelBenchSettings, run_identity, run_model_bench
from agents.bench.protocol import PROTOCOLS
from agents.bench.synthetic import make_synthetic_bench
from engine.types import RleMask
from tests.agents.bench import release_reference as release


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bench")
    make_synthetic_bench(root, kind="q", num_items=4, seed=5)
    make_synthetic_bench(root, kind="d", num_items=2, seed=6)
    return root


class RecordingPipeline:
    """Answers "(A)" and remembers what it was asked; stops the run after `fail_after` calls."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.calls: list[dict[str, Any]] = []
        self.fail_after = fail_after

    def ask(self, *, video: Any, masks: Sequence[Mapping[int, Any]], question: str, mode: str = "single",
            num_frames: int | None = None, max_new_tokens: int | None = None, do_sample: bool = False) -> str:
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise KeyboardInterrupt  # the run is killed mid-way
        self.calls.append({"video": video, "masks": masks, "question": question, "mode": mode,
                           "num_frames": num_frames, "max_new_tokens": max_new_tokens})
        return " (A) answer "


def test_single_and_multi_frame_masks_and_questions(bench_dir: Path, tmp_path: Path) -> None:
    bench = read_bench_q(bench_dir / "VideoRefer-Bench-Q.json")
    for mode in ("single", "multi"):
        pipeline = RecordingPipeline()
        settings = ModelBenchSettings(mode=mode)
        with PredictionStore(tmp_path / f"{mode}.jsonl", expect=run_identity("tiny", settings)) as store:
            summary = run_model_bench(pipeline, bench, store, settings)
        assert summary.predicted == 4
        for item, call in zip(bench.items, pipeline.calls, strict=True):
            assert call["mode"] == mode and Path(call["video"]) == item.video_path
            assert len(call["masks"]) == len(item.objects)
            assert all(isinstance(m, RleMask) for per_object in call["masks"] for m in per_object.values())
            frames = [set(per_object) for per_object in call["masks"]]
            if mode == "single":
                assert frames == [{item.frame_idx}] * len(item.objects)
            else:
                assert all(len(f) == len(item.annotated_frames) for f in frames)
            line = {"Question": item.question, "options": list(item.options)}
            assert call["question"] == release.q_question(line)
            assert call["num_frames"] == 8 and call["max_new_tokens"] is None  # release protocol: mm_infer's
        records = list(PredictionStore(tmp_path / f"{mode}.jsonl"))
        assert all(r["pred"] == "(A) answer" and r["mode"] == mode and r["runner"] == "model" for r in records)
        assert all(r["protocol"] == "release" and r["num_frames"] == 8 for r in records)


def test_null_masks_are_zero_masks_and_paper_protocol_uses_16_frames(bench_dir: Path, tmp_path: Path) -> None:
    data = json.loads((bench_dir / "VideoRefer-Bench-D.json").read_text())
    entry = data[0]
    frames = sorted(entry["annotation"][0], key=int)
    entry["annotation"][0][frames[1]]["segmentation"] = None
    entry["frame_idx"] = frames[1]
    path = bench_dir / "nulls.json"
    path.write_text(json.dumps([entry]))
    bench = read_bench_d(path)
    for mode in ("single", "multi"):
        pipeline = RecordingPipeline()
        settings = ModelBenchSettings(mode=mode, protocol=PROTOCOLS["paper"])
        with PredictionStore(tmp_path / f"null-{mode}.jsonl") as store:
            assert run_model_bench(pipeline, bench, store, settings).rejects == ()
        (call,) = pipeline.calls
        zero = call["masks"][0][int(frames[1])]
        assert isinstance(zero, np.ndarray) and not zero.any() and zero.shape == (48, 64)  # the video's size
        assert call["question"] == release.D_QUESTION and call["num_frames"] == 16
        assert len(call["masks"][0]) == (1 if mode == "single" else len(frames))


def test_interrupted_run_resumes_without_redoing_items(bench_dir: Path, tmp_path: Path) -> None:
    bench = read_bench_d(bench_dir / "VideoRefer-Bench-D.json")
    settings = ModelBenchSettings(mode="multi")
    path = tmp_path / "d.jsonl"
    with PredictionStore(path, expect=run_identity("tiny", settings)) as store, pytest.raises(KeyboardInterrupt):
        run_model_bench(RecordingPipeline(fail_after=1), bench, store, settings)
    pipeline = RecordingPipeline()
    with PredictionStore(path, expect=run_identity("tiny", settings)) as store:
        summary = run_model_bench(pipeline, bench, store, settings)
    assert (summary.predicted, summary.skipped) == (1, 1)
    assert len(pipeline.calls) == 1 and pipeline.calls[0]["question"] == release.D_QUESTION
    assert sorted(r["id"] for r in PredictionStore(path)) == ["0", "1"]


def test_tiny_model_answers_both_benchmarks(bench_dir: Path, tmp_path: Path) -> None:
    inference = pytest.importorskip("model.inference")
    model_dir = inference.save_tiny_model(tmp_path / "tiny", seed=0)
    pipeline = inference.VideoReferPipeline.from_pretrained(model_dir)
    for kind, reader in (("q", read_bench_q), ("d", read_bench_d)):
        bench = reader(bench_dir / f"VideoRefer-Bench-{kind.upper()}.json")
        for mode in ("single", "multi"):
            settings = ModelBenchSettings(mode=mode, max_new_tokens=3)
            with PredictionStore(tmp_path / f"{kind}-{mode}.jsonl", expect=run_identity("tiny", settings)) as store:
                summary = run_model_bench(pipeline, bench, store, settings, limit=1)
            assert summary.predicted == 1 and summary.rejects == ()
            assert all(isinstance(r["pred"], str) for r in PredictionStore(tmp_path / f"{kind}-{mode}.jsonl"))


def test_entry_whose_masks_lie_past_the_video_is_rejected(bench_dir: Path, tmp_path: Path) -> None:
    import dataclasses

    from engine.errors import RejectReason

    bench = read_bench_d(bench_dir / "VideoRefer-Bench-D.json")
    first = bench.items[0]
    obj = first.objects[0]
    beyond = dataclasses.replace(obj, masks={**obj.masks, 999: next(iter(obj.masks.values()))})
    bad = dataclasses.replace(first, item_id="bad", objects=(beyond,))
    bench = dataclasses.replace(bench, items=(bad, *bench.items))
    pipeline = RecordingPipeline()
    with PredictionStore(tmp_path / "d.jsonl") as store:
        summary = run_model_bench(pipeline, bench, store, ModelBenchSettings(mode="multi"))
    assert summary.predicted == 2 and len(pipeline.calls) == 2
    assert [(r.item_id, r.reason) for r in summary.rejects] == [("bad", RejectReason.MALFORMED_SAMPLE)]
