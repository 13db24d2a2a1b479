"""Bench-D judge against a real HTTP stub server: scripted scores, malformed replies re-asked, timeouts, resume."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from agents.backends.openai_chat import OpenAIChatBackend
from agents.backends.stub_server import StubOpenAIServer
from agents.bench.judge import DIMENSIONS, JudgeSettings, judge_predictions, parse_judge_scores, score_d
from engine.config import OpenAIChatConfig
from engine.errors import BackendUnavailableError, InvalidReplyError
from agents.bench.files import PredictionStore

SCORES = {"good": (5, 4, 3, 2), "bad": (1, 0, 1, 0), "fixable": (3, 3, 3, 3)}


def scripted_judge(request: dict) -> str:
    """Scores by the predicted text; "fixable" answers badly first and well when re-asked; "hopeless" never."""
    user = request["messages"][1]["content"]
    prediction = user.split("Predicted description:")[1].strip()
    reasked = len(request["messages"]) > 2
    if prediction == "hopeless" or (prediction == "fixable" and not reasked):
        return "I would rate this description fairly well overall."
    sc, ad, td, hd = SCORES[prediction]
    if prediction == "bad":  # not JSON: "Name: n" lines, as some judges answer
        return f"Subject Correspondence: {sc}\nAppearance Description: {ad}\nTemporal Description: {td}\nHD: {hd}"
    return "```json\n" + json.dumps(dict(zip(DIMENSIONS, (sc, ad, td, hd), strict=True))) + "\n```"


def _backend(server: StubOpenAIServer, **over) -> OpenAIChatBackend:
    config = {"base_url": server.base_url, "model": "judge-stub", "temperature": 0.0, "max_retries": 2,
              "backoff_base_s": 0.01, "backoff_max_s": 0.05, "timeout_s": 5.0} | over
    return OpenAIChatBackend(OpenAIChatConfig(**config))


def _predictions(*texts: str) -> list[dict]:
    return [{"id": str(i), "caption": "A red ball rolls left.", "pred": text} for i, text in enumerate(texts)]


def _judge(backend, predictions, store, **settings) -> object:
    async def go():
        try:
            return await judge_predictions(backend, predictions, store, JudgeSettings(model="judge-stub", **settings))
        finally:
            await backend.aclose()

    return asyncio.run(go())


def test_parse_scores_accepts_json_lines_and_abbreviations() -> None:
    assert parse_judge_scores('{"SC": 5, "AD": 4, "TD": "3", "HD": 2.0}') == dict(zip(DIMENSIONS, (5, 4, 3, 2),
                                                                                        strict=True))
    lines = "SC: 1\nAD - 2\nTemporal description = 3\nhallucination detection: 4"
    assert list(parse_judge_scores(lines).values()) == [1, 2, 3, 4]
    with pytest.raises(InvalidReplyError, match="temporal_description"):
        parse_judge_scores('{"SC": 5, "AD": 4, "HD": 2}')
    with pytest.raises(InvalidReplyError, match="0 to 5"):
        parse_judge_scores('{"SC": 7, "AD": 4, "TD": 3, "HD": 2}')


def test_judge_scores_reasks_malformed_and_keeps_raw_replies(tmp_path: Path) -> None:
    store = PredictionStore(tmp_path / "judge.jsonl", expect={"judge_model": "judge-stub"})
    with StubOpenAIServer(responder=scripted_judge) as server:
        summary = _judge(_backend(server), _predictions("good", "bad", "fixable", "hopeless"), store)
        assert all(r["temperature"] == 0.0 and r["model"] == "judge-stub" for r in server.requests)
    store.close()
    assert summary.judged == 4 and summary.failed == ()
    records = {r["id"]: r for r in PredictionStore(tmp_path / "judge.jsonl")}
    assert records["0"]["scores"] == dict(zip(DIMENSIONS, SCORES["good"], strict=True))
    assert len(records["2"]["replies"]) == 2  # one malformed reply, one re-ask that worked
    assert records["3"]["scores"] is None and "malformed" in records["3"]["error"]
    assert records["0"]["prompt_tokens"] > 0 and records["0"]["completion_tokens"] > 0
    score = score_d(records.values())
    assert score.judged == 3 and score.malformed == ("3",)
    assert score.means["subject_correspondence"] == pytest.approx((5 + 1 + 3) / 3)
    assert score.average == pytest.approx(sum(score.means.values()) / 4)
    assert score.prompt_tokens == sum(r["prompt_tokens"] for r in records.values())


def test_judge_retries_timeouts_then_scores(tmp_path: Path) -> None:
    store = PredictionStore(tmp_path / "judge.jsonl")
    with StubOpenAIServer(responder=scripted_judge, fault_script=["timeout", "server_error"], hang_s=2.0) as server:
        summary = _judge(_backend(server, timeout_s=0.3), _predictions("good"), store, concurrency=1)
        assert server.faults_injected == ["timeout", "server_error"]
    assert summary.judged == 1 and store.get("0")["scores"] is not None


def test_judge_stops_when_backend_stays_down_and_resumes_without_redoing(tmp_path: Path) -> None:
    path = tmp_path / "judge.jsonl"
    predictions = _predictions("good", "bad", "good", "bad")
    store = PredictionStore(path)
    # Two items answered, then the server is down for longer than the retries last.
    down_after_two = [None, None, *["unavailable"] * 10]
    with StubOpenAIServer(responder=scripted_judge, fault_script=down_after_two) as server, pytest.raises(
        BackendUnavailableError
    ):
        _judge(_backend(server, max_retries=1), predictions, store, concurrency=1)
    store.close()
    assert len(PredictionStore(path)) == 2
    store = PredictionStore(path)
    with StubOpenAIServer(responder=scripted_judge) as server:
        summary = _judge(_backend(server), predictions, store, concurrency=2)
        asked = {r["messages"][1]["content"] for r in server.requests}
    store.close()
    assert summary.skipped == 2 and summary.judged == 2 and server.request_count == 2 and len(asked) == 2
    assert len(PredictionStore(path)) == 4
