"""Bench-D scoring as the release judges: its judge prompt, user message, sampling, score pattern and averaging.

The judge (any `ChatBackend`; GPT-4o in the paper, or a vLLM server) gets the release's `system.txt` as the system
message (`agents.bench.protocol.load_judge_prompt`: byte for byte, sha256-checked) and the user message
"##Correct answer: <caption>\n##Predicted answer: <prediction>\n", sampled at temperature 0.7, top_p 0.95, 800
tokens (`1.eval_gpt_new.py`). Scores are read with the release's pattern `\\d+\\.\\s+(.*?):\\s+([\\d.]+)` into floats
keyed by the description (`2.extract_re.py`); a dimension is averaged over the items that have it and the overall
is the mean of the four means (`3.analyze_score.py`). Fixed, and documented: the release's judging script never
sends its messages (a misspelt variable), so it produces no replies; here a reply with none of the four
dimensions, or a score that is not a number (the release then drops the item), is asked again (the same request,
a bounded number of times), then counted and listed as malformed, never a crash; a dimension no item has is
reported as missing instead of dividing by zero. Every raw reply, with token counts, goes to the judge JSONL for
audit, and that file makes judging resumable.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from agents.backends.base import ChatBackend, ChatMessage, ChatReply, ChatRequest
from agents.bench.bounded import run_bounded
from agents.bench.files import PredictionStore
from agents.bench.protocol import JudgePrompt
from engine.errors import BackendUnavailableError, ConfigError, InvalidReplyError, VideoReferError
from engine.parsing import clean_text, current_text_limit

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
# The names the release's judge prompt asks for and `3.analyze_score.py` averages (`type_list`).
RELEASE_NAMES: dict[str, str] = {
    "subject_correspondence": "Subject Correspondence",
    "appearance_description": "Appearance Description",
    "temporal_description": "Temporal Description",
    "hallucination_detection": "Hallucination Detection",
}
SCORE_PATTERN = re.compile(r"\d+\.\s+(.*?):\s+([\d.]+)")  # videorefer/eval/videorefer_bench_d/2.extract_re.py


@dataclass(frozen=True, slots=True, kw_only=True)
class JudgeSettings:
    """How the judge is asked (the release's sampling by default). `model` names the judge in logs and reports."""

    model: str
    prompt: JudgePrompt
    temperature: float = 0.7
    top_p: float = 0.95
    max_tokens: int = 800
    max_reasks: int = 2
    concurrency: int = 8


def user_message(reference: str, prediction: str) -> str:
    """The release's user message (`1.eval_gpt_new.py`)."""
    return "##Correct answer: " + reference + "\n" + "##Predicted answer: " + prediction + "\n"


def release_scores(text: str) -> dict[str, float]:
    """What the release's `2.extract_re.py` adds to an item: {description: float(score)} for every match.

    Raises ValueError where the release's comprehension does (a score like "..."): the release then drops the item.
    """
    return {description: float(score) for description, score in SCORE_PATTERN.findall(text)}


def parse_judge_scores(text: str) -> dict[str, float]:
    """The release's scores of the four dimensions in a reply (a subset when the judge left some out).

    `InvalidReplyError` when a score is not a number (the release drops such an item) or no dimension is there.
    """
    try:
        found = release_scores(text)
    except ValueError as exc:
        raise InvalidReplyError(f"a score is not a number ({exc})") from None
    scores = {dim: found[name] for dim, name in RELEASE_NAMES.items() if name in found}
    if not scores:
        raise InvalidReplyError("no '<n>. <Dimension>: <score>' line for any of the four dimensions")
    return scores


@dataclass(frozen=True, slots=True, kw_only=True)
class JudgeOutcome:
    """One judged item: the scores (None when the judge never replied in shape) and every raw reply."""

    scores: Mapping[str, float] | None
    replies: tuple[ChatReply, ...]
    error: str = ""


async def judge_description(
    backend: ChatBackend, *, reference: str, prediction: str, settings: JudgeSettings
) -> JudgeOutcome:
    """Ask the judge, and ask again (up to `max_reasks` times, the same request) while the reply is unparseable."""
    request = ChatRequest(
        messages=(
            ChatMessage(role="system", content=(settings.prompt.text,)),
            ChatMessage(role="user", content=(user_message(reference, prediction),)),
        ),
        task="bench_d_judge", temperature=settings.temperature, top_p=settings.top_p,
        max_tokens=settings.max_tokens,
    )
    replies: list[ChatReply] = []
    problem = ""
    for _ in range(1 + settings.max_reasks):
        reply = await backend.complete(request)
        limit = current_text_limit()
        # A judge reply is stored for audit: cleaned of control characters, and never longer than the text limit.
        replies.append(dataclasses.replace(reply, text=clean_text(reply.text[:limit])))
        if len(reply.text) > limit:
            problem = f"a reply of {len(reply.text)} characters, above limits.max_text_chars ({limit})"
            continue
        try:
            return JudgeOutcome(scores=parse_judge_scores(reply.text), replies=tuple(replies))
        except InvalidReplyError as exc:
            problem = str(exc)
    return JudgeOutcome(scores=None, replies=tuple(replies), error=f"malformed judge reply: {problem}")


def judge_prompt_version(prompt: JudgePrompt) -> str:
    return f"judge-system@{prompt.sha256[:12]}"


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
    """Mean of each dimension over the items that have it, the mean of the four means, and the judge's cost.

    A dimension no item has is None, and so is the average then (the release divides by zero there).
    """

    means: Mapping[str, float | None]
    counts: Mapping[str, int]
    average: float | None
    judged: int
    malformed: tuple[str, ...]  # ids whose judge replies stayed unparseable after the re-asks
    prompt_tokens: int
    completion_tokens: int

    def to_json(self) -> dict[str, Any]:
        return {
            "means": {ABBREVIATIONS[dim]: value for dim, value in self.means.items()},
            "counts": {ABBREVIATIONS[dim]: value for dim, value in self.counts.items()},
            "average": self.average,
            "judged": self.judged,
            "malformed": list(self.malformed),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
        }

    def release_text(self) -> str:
        """The figures in the layout the release's `3.analyze_score.py` prints."""
        lines = []
        for dim in DIMENSIONS:
            lines += [f"{RELEASE_NAMES[dim]} :  {self.means[dim]}", str(self.counts[dim])]
        return "\n".join([*lines, "all....", str(self.average)])


def score_d(judge_records: Iterable[Mapping[str, Any]]) -> DScore:
    """Aggregate judge records (as written by `judge_predictions`), per dimension over the items that have it."""
    sums = dict.fromkeys(DIMENSIONS, 0.0)
    counts = dict.fromkeys(DIMENSIONS, 0)
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
            if dim in scores:
                sums[dim] += float(scores[dim])
                counts[dim] += 1
    means = {dim: (sums[dim] / counts[dim] if counts[dim] else None) for dim in DIMENSIONS}
    present = [value for value in means.values() if value is not None]
    average = sum(present) / len(DIMENSIONS) if len(present) == len(DIMENSIONS) else None
    return DScore(
        means=means, counts=counts, average=average, judged=judged, malformed=tuple(sorted(malformed)),
        prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
    )
