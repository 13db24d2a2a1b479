"""Bench-D scoring: an LLM judge grades each predicted description against the reference on four 0-5 criteria.

The judge (any `ChatBackend`; in practice `OpenAIChatBackend` against GPT-4o or a vLLM server, temperature 0 by
default) reads the versioned prompt `judge_d_system.txt` and answers with four integer scores: subject
correspondence (SC), appearance description (AD), temporal description (TD) and hallucination detection (HD).
Replies are parsed robustly (JSON, fenced JSON, or "Name: 4" lines, with the paper's names or abbreviations);
a malformed reply is re-asked with the reason, and an item still malformed after the re-asks is recorded with
no scores and left out of the means. Every raw reply, with token counts, goes to the judge JSONL for audit,
and that file makes judging resumable. Reported: the mean of each dimension and the mean of the four means.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from agents.backends.base import ChatBackend, ChatMessage, ChatReply, ChatRequest
from agents.bench.bounded import run_bounded
from agents.bench.prompts import load_prompt
from engine.errors import BackendUnavailableError, ConfigError, InvalidReplyError, VideoReferError
from agents.bench.files import PredictionStore

DIMENSIONS: tuple[str, ...] = (
    "subject_correspondence",
    "appearance_description",
    "temporal_description",
    "hallucination_detection",
)
ABBREVIATIONS: dict[str, str] = {
    "subject_correspondence": "SC",
    "appearance_description": "AD",
    "temporal_description": "TD",
    "hallucination_detection": "HD",
}
_ALIASES: dict[str, str] = {
    **{dim: dim for dim in DIMENSIONS},
    **{abbr.lower(): dim for dim, abbr in ABBREVIATIONS.items()},
    "hallucination": "hallucination_detection",
    "subject": "subject_correspondence",
    "appearance": "appearance_description",
    "temporal": "temporal_description",
}
_LINE_SCORE = re.compile(
    r"(subject[\s_-]*correspondence|appearance[\s_-]*description|temporal[\s_-]*description|"
    r"hallucination[\s_-]*detection|\bSC\b|\bAD\b|\bTD\b|\bHD\b)\W{0,6}?(\d+(?:\.\d+)?)",
    re.IGNORECASE,
)
# No minimum/maximum: strict structured output on some servers rejects them; the parser checks the range.
SCORE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {dim: {"type": "integer"} for dim in DIMENSIONS},
    "required": list(DIMENSIONS),
    "additionalProperties": False,
}


@dataclass(frozen=True, slots=True, kw_only=True)
class JudgeSettings:
    """How the judge is asked. `model` names the judge in the audit log and the report."""

    model: str
    temperature: float = 0.0
    max_tokens: int = 256
    max_reasks: int = 1
    concurrency: int = 8


def parse_judge_scores(text: str) -> dict[str, int]:
    """The four integer scores 0-5 from a judge reply; `InvalidReplyError` says what is missing or wrong."""
    found: dict[str, Any] = {}
    obj = _json_object(text)
    if obj is not None:
        for key, value in obj.items():
            dim = _ALIASES.get(re.sub(r"[\s-]+", "_", str(key).strip().lower()))
            if dim is not None:
                found.setdefault(dim, value)
    if len(found) < len(DIMENSIONS):  # not (fully) JSON: "Subject Correspondence: 4" lines
        for name, value in _LINE_SCORE.findall(text):
            dim = _ALIASES.get(re.sub(r"[\s-]+", "_", name.strip().lower()))
            if dim is not None:
                found.setdefault(dim, value)
    missing = [dim for dim in DIMENSIONS if dim not in found]
    if missing:
        raise InvalidReplyError(f"missing scores for {', '.join(missing)}")
    scores = {}
    for dim in DIMENSIONS:
        scores[dim] = _integer_score(dim, found[dim])
    return scores


def _json_object(text: str) -> dict[str, Any] | None:
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end <= start:
        return None
    try:
        value = json.loads(text[start : end + 1])
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _integer_score(dim: str, value: Any) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InvalidReplyError(f"{dim} is not a number: {value!r}") from None
    if not number.is_integer() or not 0 <= number <= 5:
        raise InvalidReplyError(f"{dim} must be an integer from 0 to 5, got {value!r}")
    return int(number)


@dataclass(frozen=True, slots=True, kw_only=True)
class JudgeOutcome:
    """One judged item: the scores (None when the judge never replied in shape) and every raw reply."""

    scores: Mapping[str, int] | None
    replies: tuple[ChatReply, ...]
    error: str = ""


async def judge_description(
    backend: ChatBackend, *, reference: str, prediction: str, settings: JudgeSettings
) -> JudgeOutcome:
    """Ask the judge once, and again (up to `max_reasks` times) with the parse error when the reply is malformed."""
    system = load_prompt("judge_d_system")
    user = load_prompt("judge_d_user")
    reask = load_prompt("judge_d_reask")
    messages: list[ChatMessage] = [
        ChatMessage(role="system", content=(system.render(),)),
        ChatMessage(role="user", content=(user.render(reference=reference, prediction=prediction),)),
    ]
    replies: list[ChatReply] = []
    problem = ""
    for _ in range(1 + settings.max_reasks):
        request = ChatRequest(
            messages=tuple(messages), task="bench_d_judge", json_schema=SCORE_SCHEMA, schema_name="bench_d_scores",
            temperature=settings.temperature, max_tokens=settings.max_tokens,
            context={"reference": reference, "prediction": prediction},
        )
        reply = await backend.complete(request)
        replies.append(reply)
        try:
            return JudgeOutcome(scores=parse_judge_scores(reply.text), replies=tuple(replies))
        except InvalidReplyError as exc:
            problem = str(exc)
            messages.append(ChatMessage(role="assistant", content=(reply.text,)))
            messages.append(ChatMessage(role="user", content=(reask.render(problem=problem),)))
    return JudgeOutcome(scores=None, replies=tuple(replies), error=f"malformed judge reply: {problem}")


def judge_prompt_version() -> str:
    return "+".join(load_prompt(name).version for name in ("judge_d_system", "judge_d_user", "judge_d_reask"))


@dataclass(frozen=True, slots=True, kw_only=True)
class JudgeRunSummary:
    judged: int  # newly judged in this run
    skipped: int  # already in the judge file (resume)
    failed: tuple[tuple[str, str], ...]  # (id, error) of items whose judge call failed; retried on the next run


async def judge_predictions(
    backend: ChatBackend,
    predictions: Iterable[Mapping[str, Any]],
    store: PredictionStore,
    settings: JudgeSettings,
) -> JudgeRunSummary:
    """Judge every prediction (`id`, `caption` = reference, `pred`) not yet in `store`; write each as it finishes.

    A backend that stays down (`BackendUnavailableError`) or a config error stops the run; any other error of one
    item is reported in the summary and not written, so the next run asks again.
    """
    predictions = list(predictions)
    todo = [p for p in predictions if str(p["id"]) not in store]
    skipped = len(predictions) - len(todo)
    failed: list[tuple[str, str]] = []

    async def one(record: Mapping[str, Any]) -> None:
        try:
            outcome = await judge_description(
                backend, reference=str(record["caption"]), prediction=str(record.get("pred") or ""), settings=settings
            )
        except (BackendUnavailableError, ConfigError):
            raise
        except VideoReferError as exc:
            failed.append((str(record["id"]), f"{type(exc).__name__}: {exc}"))
            return
        store.append({
            "id": record["id"],
            "reference": str(record["caption"]),
            "prediction": str(record.get("pred") or ""),
            "scores": dict(outcome.scores) if outcome.scores is not None else None,
            "error": outcome.error or None,
            "replies": [reply.text for reply in outcome.replies],
            "prompt_tokens": sum(reply.prompt_tokens for reply in outcome.replies),
            "completion_tokens": sum(reply.completion_tokens for reply in outcome.replies),
            "latency_s": round(sum(reply.latency_s for reply in outcome.replies), 4),
        })

    await run_bounded(todo, one, concurrency=settings.concurrency)
    return JudgeRunSummary(judged=len(todo) - len(failed), skipped=skipped, failed=tuple(sorted(failed)))


@dataclass(frozen=True, slots=True, kw_only=True)
class DScore:
    """Mean of each dimension over the judged items, the mean of the four means, and the judge's cost."""

    means: Mapping[str, float]
    average: float
    judged: int
    malformed: tuple[str, ...]  # ids whose judge replies stayed malformed after the re-asks
    prompt_tokens: int
    completion_tokens: int

    def to_json(self) -> dict[str, Any]:
        return {
            "means": {ABBREVIATIONS[dim]: value for dim, value in self.means.items()},
            "average": self.average,
            "judged": self.judged,
            "malformed": list(self.malformed),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
        }


def score_d(judge_records: Iterable[Mapping[str, Any]]) -> DScore:
    """Aggregate judge records (as written by `judge_predictions`)."""
    sums = dict.fromkeys(DIMENSIONS, 0.0)
    judged = 0
    malformed: list[str] = []
    prompt_tokens = completion_tokens = 0
    for record in judge_records:
        prompt_tokens += int(record.get("prompt_tokens") or 0)
        completion_tokens += int(record.get("completion_tokens") or 0)
        scores = record.get("scores")
        if not scores:
            malformed.append(str(record["id"]))
            continue
        judged += 1
        for dim in DIMENSIONS:
            sums[dim] += float(scores[dim])
    means = {dim: (sums[dim] / judged if judged else 0.0) for dim in DIMENSIONS}
    return DScore(
        means=means, average=sum(means.values()) / len(DIMENSIONS), judged=judged,
        malformed=tuple(sorted(malformed)), prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
    )
