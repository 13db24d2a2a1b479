"""Our model's benchmark runner: masks per mode, questions as the release asks them, resume, the tiny model."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from agents.bench.synthetic import make_synthetic_bench
from engine.types import RleMask
from agents.bench.model_runner import D_QUESTION, ModelBenchSettings, run_identity, run_model_bench
from agents.bench.files import PredictionStore, read_bench_d, read_bench_q


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
            max_new_tokens: int = 64, do_sample: bool = False) -> str:
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise KeyboardInterrupt  # the run is killed mid-way
        self.calls.append({"video": video, "masks": masks, "question": question, "mode": mode})
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
            assert call["question"].startswith(item.question) and item.options[-1] in call["question"]
            assert call["question"].count("<region>") == len(item.objects)
        records = list(PredictionStore(tmp_path / f"{mode}.jsonl"))
        assert all(r["pred"] == "(A) answer" and r["mode"] == mode and r["runner"] == "model" for r in records)


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
    assert len(pipeline.calls) == 1 and pipeline.calls[0]["question"] == D_QUESTION
    assert sorted(r["id"] for r in PredictionStore(path)) == ["0", "1"]


def test_tiny_model_answers_both_benchmarks(bench_dir: Path, tmp_path: Path) -> None:
    inference = pytest.importorskip("model.inference")
    model_dir = inference.save_tiny_model(tmp_path / "tiny", seed=0)
    pipeline = inference.VideoReferPipeline.from_pretrained(model_dir)
    for kind, reader in (("q", read_bench_q), ("d", read_bench_d)):
        bench = reader(bench_dir / f"VideoRefer-Bench-{kind.upper()}.json")
        for mode in ("single", "multi"):
            settings = ModelBenchSettings(mode=mode, max_new_tokens_d=4, max_new_tokens_q=2)
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
