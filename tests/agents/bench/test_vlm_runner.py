"""Set-of-marks VLM runner against the stub OpenAI server: the release's frames and prompts, JSONL written, resume.

Frames and prompts are checked against the release's `benchmark/` scripts (transcribed in release_reference.py).
"""

from __future__ import annotations

import asyncio
import base64
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from agents.backends.openai_chat import OpenAIChatBackend
from agents.backends.stub_server import StubOpenAIServer
from agents.bench.files import PredictionStore, read_bench_d, read_bench_q
from agents.bench.marks import marked_frames
from agents.bench.q_scoring import score_q
from agents.bench.synthetic import make_synthetic_bench
from agents.bench.vlm_runner import VlmSettings, run_identity, run_vlm_bench
from engine.config import OpenAIChatConfig
from engine.errors import BackendUnavailableError, RejectReason
from engine.masks import decode_rle
from engine.video import probe, read_frames
from tests.agents.bench import release_reference as release


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bench")
    make_synthetic_bench(root, kind="q", num_items=4, seed=1)
    make_synthetic_bench(root, kind="d", num_items=2, seed=2)
    return root


def _run(server: StubOpenAIServer, bench, store, settings, **over):
    config = {"base_url": server.base_url, "model": "vlm-stub", "max_retries": 1, "backoff_base_s": 0.01,
              "backoff_max_s": 0.02, "structured_output": "none"} | over
    backend = OpenAIChatBackend(OpenAIChatConfig(**config))

    async def go():
        try:
            return await run_vlm_bench(backend, bench, store, settings)
        finally:
            await backend.aclose()

    return asyncio.run(go())


def _images(request: dict) -> list[np.ndarray]:
    parts = request["messages"][0]["content"]
    urls = [p["image_url"]["url"] for p in parts if p["type"] == "image_url"]
    return [np.asarray(Image.open(io.BytesIO(base64.b64decode(u.split(",", 1)[1])))) for u in urls]


def test_q_run_sends_marked_frames_and_question_and_scores(bench_dir: Path, tmp_path: Path) -> None:
    bench = read_bench_q(bench_dir / "VideoRefer-Bench-Q.json")
    settings = VlmSettings(mode="single", num_frames=8, concurrency=2)
    store = PredictionStore(tmp_path / "q.jsonl", expect=run_identity("vlm-stub", "q", settings))
    with StubOpenAIServer(responder=lambda request: "(A) it is that colour") as server:
        summary = _run(server, bench, store, settings)
        requests = server.requests
    store.close()
    assert (summary.predicted, summary.skipped, summary.rejects) == (4, 0, ())
    assert len(requests) == 4
    texts = [[p["text"] for p in r["messages"][0]["content"] if p["type"] == "text"][0] for r in requests]
    lines = [{"Question": item.question, "options": list(item.options)} for item in bench.items]
    assert sorted(texts) == sorted(release.som_q_prompt(line) for line in lines)  # the release's prompt, exactly
    assert any("<object0>: red; <object1>: green" in t for t in texts)  # two-object questions carry a legend
    assert all(len(_images(r)) == 8 for r in requests)
    records = list(PredictionStore(tmp_path / "q.jsonl"))
    assert all(len(frames) == 1 for r in records for frames in r["marked"])  # single-frame: marked once
    score = score_q(records)
    expected = sum(item.answer_letter == "A" for item in bench.items)
    assert score.overall.correct == expected and score.overall.total == 4


def test_marks_single_vs_multi_frame_on_the_release_frames(bench_dir: Path) -> None:
    item = read_bench_d(bench_dir / "VideoRefer-Bench-D.json").items[0]
    single = marked_frames(item, mode="single", num_frames=6)
    multi = marked_frames(item, mode="multi", num_frames=6)
    assert single.frame_indices == multi.frame_indices and len(single.frame_indices) == 6
    total = probe(item.video_path).num_frames
    assert list(single.frame_indices) == release.som_frame_sample(total, 6)
    for length in range(1, 400):
        from agents.bench.protocol import som_frame_indices

        assert som_frame_indices(length) == release.som_frame_sample(length)
    assert single.marked == ((single.frame_indices[0],),)
    assert multi.marked == (single.frame_indices,)
    raw = read_frames(item.video_path, list(single.frame_indices)).astype(int)
    decoded = [np.asarray(Image.open(io.BytesIO(j))).astype(int) for j in single.jpegs]
    # The marked frame changed around the object; an unmarked one only by JPEG noise.
    mask = decode_rle(item.objects[0].masks[single.frame_indices[0]])
    ys, xs = np.nonzero(mask)
    box = (slice(max(ys.min() - 3, 0), ys.max() + 4), slice(max(xs.min() - 3, 0), xs.max() + 4))
    changed = np.abs(decoded[0] - raw[0]).max(axis=-1)
    assert changed[box].max() > 80
    assert np.abs(decoded[-1] - raw[-1]).mean() < 6


def test_d_run_resumes_after_the_server_goes_down(bench_dir: Path, tmp_path: Path) -> None:
    bench = read_bench_d(bench_dir / "VideoRefer-Bench-D.json")
    settings = VlmSettings(mode="multi", num_frames=4, concurrency=1)
    path = tmp_path / "d.jsonl"
    store = PredictionStore(path, expect=run_identity("vlm-stub", "d", settings))
    down_after_one = [None, *["unavailable"] * 5]
    with StubOpenAIServer(responder=lambda r: "A ball.", fault_script=down_after_one, retry_after_s=0.0) as server, \
            pytest.raises(BackendUnavailableError):
        _run(server, bench, store, settings)
    store.close()
    assert len(PredictionStore(path)) == 1
    store = PredictionStore(path, expect=run_identity("vlm-stub", "d", settings))
    with StubOpenAIServer(responder=lambda r: "A ball.") as server:
        summary = _run(server, bench, store, settings)
        assert server.request_count == 1
        text = [p["text"] for p in server.requests[0]["messages"][0]["content"] if p["type"] == "text"][0]
    store.close()
    assert text == release.SOM_D_PROMPTS["multi"]
    assert (summary.predicted, summary.skipped) == (1, 1)
    records = list(PredictionStore(path))
    assert sorted(r["id"] for r in records) == ["0", "1"] and all(r["caption"] for r in records)


def test_unreadable_video_is_rejected_not_fatal(bench_dir: Path, tmp_path: Path) -> None:
    bench = read_bench_d(bench_dir / "VideoRefer-Bench-D.json")
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00" * 64)
    import dataclasses

    bad = dataclasses.replace(bench.items[0], item_id="bad", video_path=broken)
    bench = dataclasses.replace(bench, items=(bad, *bench.items))
    store = PredictionStore(tmp_path / "d.jsonl")
    with StubOpenAIServer(responder=lambda r: "A ball.") as server:
        summary = _run(server, bench, store, VlmSettings(num_frames=4))
    assert summary.predicted == 2 and [r.item_id for r in summary.rejects] == ["bad"]
    assert summary.rejects[0].reason in {RejectReason.BAD_VIDEO, RejectReason.TRUNCATED_VIDEO,
                                         RejectReason.EMPTY_VIDEO}
