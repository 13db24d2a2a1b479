"""Bench-D judge: the release's prompt, message, sampling, score pattern and averaging; re-asks; resume.

Parsing and averaging are checked against the release's `2.extract_re.py` and `3.analyze_score.py`
(transcribed in release_reference.py); the judge runs against a real HTTP stub server.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections import Counter
from pathlib import Path

import pytest

from agents.backends.openai_chat import OpenAIChatBackend
from agents.backends.stub_server import StubOpenAIServer
from agents.bench.files import PredictionStore
from agents.bench.judge import (
    DIMENSIONS,
    RELEASE_NAMES,
    JudgeSettings,
    judge_predictions,
    parse_judge_scores,
    score_d,
)
from agents.bench.protocol import PROTOCOLS, JudgePrompt, load_judge_prompt
from engine.config import OpenAIChatConfig
from engine.errors import BackendUnavailableError, ConfigError, InvalidReplyError
from tests.agents.bench import release_reference as release

NAMES = [RELEASE_NAMES[dim] for dim in DIMENSIONS]
SCORES = {"good": (5, 4, 3, 2), "bad": (1, 0, 1, 0), "fixable": (3, 3, 3, 3), "half": (4, 2.5)}
# A prompt file the test writes itself (never the release's prose); its digest stands in for the release's.
PROMPT_TEXT = "You are a judge written by the test.\nScore as:\n1. Subject Correspondence: <n>\n"


def release_reply(scores) -> str:
    lines = [f"{i + 1}. {name}: {score}" for i, (name, score) in enumerate(zip(NAMES, scores, strict=False))]
    return "Here is my evaluation.\n" + "\n".join(lines) + "\nOverall the prediction is fine."


def scripted_judge():
    asked: Counter = Counter()

    def respond(request: dict) -> str:
        user = request["messages"][1]["content"]
        prediction = user.split("##Predicted answer: ")[1].rstrip("\n")
        asked[prediction] += 1
        if prediction == "hopeless" or (prediction == "fixable" and asked[prediction] == 1):
            return "I would rate this description fairly well overall."
        if prediction == "dots":
            return "1. Subject Correspondence: ...\n2. Appearance Description: 3"
        return release_reply(SCORES[prediction])

    return respond


@pytest.fixture
def prompt(tmp_path: Path) -> JudgePrompt:
    path = tmp_path / "system.txt"
    path.write_text(PROMPT_TEXT)
    digest = hashlib.sha256(PROMPT_TEXT.encode()).hexdigest()
    return load_judge_prompt(path, PROTOCOLS["release"], expected_sha256=digest)


def _backend(server: StubOpenAIServer, **over) -> OpenAIChatBackend:
    config = {"base_url": server.base_url, "model": "judge-stub", "temperature": 0.0, "max_retries": 2,
              "backoff_base_s": 0.01, "backoff_max_s": 0.05, "timeout_s": 5.0, "structured_output": "none"} | over
    return OpenAIChatBackend(OpenAIChatConfig(**config))


def _predictions(*texts: str) -> list[dict]:
    return [{"id": str(i), "caption": "A red ball rolls left.", "pred": text} for i, text in enumerate(texts)]


def _judge(backend, predictions, store, prompt, **settings) -> object:
    async def go():
        try:
            return await judge_predictions(backend, predictions, store,
                                           JudgeSettings(model="judge-stub", prompt=prompt, **settings))
        finally:
            await backend.aclose()

    return asyncio.run(go())


JUDGE_REPLIES = [
    release_reply((5, 4, 3, 2)), release_reply((4.5, 3, 2)), release_reply((1, 1, 1, 1, 9)),
    "1. Subject Correspondence: 4\n1. Subject Correspondence: 2\n2. Appearance Description: 3.",
    "1. subject correspondence: 4\n2. Appearance Description: 3", "Subject Correspondence: 5 (no number)",
    "1.  Temporal Description:   2\n2. Hallucination Detection: 0", "1. Appearance Description: 3/5",
    "No scores at all.", "1. Subject Correspondence: ...", "10. Hallucination Detection: 1.0\n",
    "1. Subject Correspondence:\n4", "**1. Subject Correspondence:** 4",
]


@pytest.mark.parametrize("reply", JUDGE_REPLIES)
def test_scores_are_parsed_as_the_release_extracts_them(reply: str) -> None:
    extracted, errors = release.extract_re([{"gpt": reply}])
    if errors:  # the release drops the item (a score like "..."): ours says the reply is unparseable
        with pytest.raises(InvalidReplyError):
            parse_judge_scores(reply)
        return
    expected = {dim: extracted[0][RELEASE_NAMES[dim]] for dim in DIMENSIONS if RELEASE_NAMES[dim] in extracted[0]}
    if not expected:  # nothing the release would average: ours asks again
        with pytest.raises(InvalidReplyError):
            parse_judge_scores(reply)
        return
    assert parse_judge_scores(reply) == expected


def test_averages_equal_the_release_analysis_on_random_judge_files() -> None:
    rng = random.Random(1)
    for _ in range(20):
        replies = [rng.choice(JUDGE_REPLIES) for _ in range(rng.randint(4, 30))] + [JUDGE_REPLIES[0]]
        extracted, _ = release.extract_re([{"gpt": reply} for reply in replies])
        means, overall = release.analyze_score(extracted)
        records = []
        for number, reply in enumerate(replies):
            try:
                scores = parse_judge_scores(reply)
            except InvalidReplyError:
                scores = None
            records.append({"id": str(number), "scores": scores})
        score = score_d(records)
        assert {RELEASE_NAMES[dim]: value for dim, value in score.means.items()} == pytest.approx(means)
        assert score.average == pytest.approx(overall)


def test_a_dimension_no_item_has_is_missing_not_a_crash() -> None:
    with pytest.raises(ZeroDivisionError):
        release.analyze_score([{"Subject Correspondence": 4.0}])
    score = score_d([{"id": "0", "scores": {"subject_correspondence": 4.0}}])
    assert score.means["subject_correspondence"] == 4.0 and score.means["temporal_description"] is None
    assert score.average is None


def test_the_judge_gets_the_release_message_and_sampling_and_reasks(tmp_path: Path, prompt: JudgePrompt) -> None:
    store = PredictionStore(tmp_path / "judge.jsonl", expect={"judge_model": "judge-stub"})
    with StubOpenAIServer(responder=scripted_judge()) as server:
        summary = _judge(_backend(server), _predictions("good", "bad", "fixable", "hopeless", "half", "dots"), store,
                         prompt)
        requests = server.requests
    store.close()
    first = next(r for r in requests if r["messages"][1]["content"].endswith("answer: good\n"))
    assert first["messages"][0] == {"role": "system", "content": PROMPT_TEXT}  # byte for byte
    assert first["messages"][1]["content"] == release.judge_user_message("A red ball rolls left.", "good")
    assert {(r["temperature"], r["top_p"], r["max_tokens"]) for r in requests} == {
        tuple(release.JUDGE_SAMPLING[k] for k in ("temperature", "top_p", "max_tokens"))}
    assert summary.judged == 6 and summary.failed == ()
    records = {r["id"]: r for r in PredictionStore(tmp_path / "judge.jsonl")}
    assert records["0"]["scores"] == dict(zip(DIMENSIONS, map(float, SCORES["good"]), strict=True))
    assert len(records["2"]["replies"]) == 2  # one unparseable reply, then the same request again
    assert records["3"]["scores"] is None and len(records["3"]["replies"]) == 3  # bounded: 1 + 2 re-asks
    assert records["4"]["scores"] == {"subject_correspondence": 4.0, "appearance_description": 2.5}
    assert records["5"]["scores"] is None  # "..." is no number (the release drops such an item)
    score = score_d(records.values())
    assert score.judged == 4 and score.malformed == ("3", "5")
    assert score.counts["subject_correspondence"] == 4 and score.counts["temporal_description"] == 3
    assert score.means["subject_correspondence"] == pytest.approx((5 + 1 + 3 + 4) / 4)
    assert score.means["temporal_description"] == pytest.approx((3 + 1 + 3) / 3)


def test_judge_retries_timeouts_then_scores(tmp_path: Path, prompt: JudgePrompt) -> None:
    store = PredictionStore(tmp_path / "judge.jsonl")
    with StubOpenAIServer(responder=scripted_judge(), fault_script=["timeout", "server_error"], hang_s=2.0) as server:
        summary = _judge(_backend(server, timeout_s=0.3), _predictions("good"), store, prompt, concurrency=1)
        assert server.faults_injected == ["timeout", "server_error"]
    assert summary.judged == 1 and store.get("0")["scores"] is not None


def test_judge_stops_when_backend_stays_down_and_resumes_without_redoing(tmp_path: Path, prompt) -> None:
    path = tmp_path / "judge.jsonl"
    predictions = _predictions("good", "bad", "good", "bad")
    store = PredictionStore(path)
    down_after_two = [None, None, *["unavailable"] * 10]
    with StubOpenAIServer(responder=scripted_judge(), fault_script=down_after_two) as server, pytest.raises(
        BackendUnavailableError
    ):
        _judge(_backend(server, max_retries=1), predictions, store, prompt, concurrency=1)
    store.close()
    assert len(PredictionStore(path)) == 2
    store = PredictionStore(path)
    with StubOpenAIServer(responder=scripted_judge()) as server:
        summary = _judge(_backend(server), predictions, store, prompt, concurrency=2)
    store.close()
    assert summary.skipped == 2 and summary.judged == 2 and server.request_count == 2
    assert len(PredictionStore(path)) == 4


def test_the_judge_prompt_is_checked_by_sha256(tmp_path: Path) -> None:
    mine = tmp_path / "system.txt"
    mine.write_text(PROMPT_TEXT)
    with pytest.raises(ConfigError, match="sha256"):
        load_judge_prompt(mine, PROTOCOLS["release"])  # not the release's file: refused in release protocol
    paper = load_judge_prompt(mine, PROTOCOLS["paper"])  # paper protocol takes it and records its digest
    assert paper.text == PROMPT_TEXT and paper.sha256 == hashlib.sha256(PROMPT_TEXT.encode()).hexdigest()
    assert not paper.is_release
    with pytest.raises(ConfigError, match="no such file"):
        load_judge_prompt(tmp_path / "missing.txt", PROTOCOLS["release"])
    with pytest.raises(ConfigError, match="--judge-prompt"):
        load_judge_prompt(None, PROTOCOLS["release"], cache_dir=tmp_path / "cache", download=False)
    cached = tmp_path / "cache" / "judge"
    cached.mkdir(parents=True)
    (cached / "system-cbd4207.txt").write_text(PROMPT_TEXT)
    digest = hashlib.sha256(PROMPT_TEXT.encode()).hexdigest()
    from_cache = load_judge_prompt(None, PROTOCOLS["release"], cache_dir=tmp_path / "cache", expected_sha256=digest)
    assert from_cache.text == PROMPT_TEXT and "cached at" in from_cache.source
