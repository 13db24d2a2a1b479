"""The one way agents ask a chat backend for a structured reply: send, validate, repair once, or reject.

`call_structured` sends a batch of requests through the backend's `complete_batch` (the backend bounds
how many are in flight), validates each reply against its pydantic schema, tries a free local repair
(JSON pulled out of code fences or prose, trailing commas dropped), and then ONE re-ask that shows the
model its invalid reply and the validation error. A reply longer than a reply can be with its texts within
`limits.max_text_chars`, or with one text above it, is not repaired: `text_too_long`. An item that still fails
becomes a
`Reject(reason=INVALID_REPLY)`; an item whose request raised becomes a reject with the error's reason.
Errors that mean the run cannot go on (`BackendUnavailableError`, `ConfigError`, a strict replay miss)
propagate. Every success carries a `Provenance` with the backend, model, prompt version, latency and
tokens of all the calls it took.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ValidationError

from agents.backends.base import ChatBackend, ChatMessage, ChatReply, ChatRequest, ImagePart
from agents.backends.json_reply import extract_json
from agents.prompting import Prompt
from agents.schemas import TEXT_TOO_LONG, json_schema_for
from agents.stage import make_reject, reject_for
from engine.errors import BackendError, InvalidReplyError, RejectReason
from engine.parsing import bounded, current_text_limit
from engine.types import Provenance, Reject

ReplyT = TypeVar("ReplyT", bound=BaseModel)

# A reply that is an exception came from the backend: outside the taxonomy it is the backend's error.
_BACKEND = RejectReason.BACKEND_ERROR

REPAIR_INSTRUCTION = (
    "Your previous reply could not be used: {error}\n"
    "Reply again with only one JSON object that matches the requested schema, and nothing else."
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Call:
    """One request on behalf of one item (`item_id` is what a reject will name)."""

    item_id: str
    clip_id: str
    request: ChatRequest


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome(Generic[ReplyT]):
    """The validated reply of one call with its provenance, or the reject that replaced it."""

    item_id: str
    clip_id: str
    value: ReplyT | None = None
    provenance: Provenance | None = None
    reject: Reject | None = None
    repaired: bool = False


def structured_request(
    prompt: Prompt,
    schema: type[BaseModel],
    *,
    task: str,
    values: Mapping[str, object],
    images: Sequence[ImagePart] = (),
    max_tokens: int | None = None,
) -> ChatRequest:
    """A request filled from `prompt` asking for JSON matching `schema`; `task` names what is asked."""
    return ChatRequest(
        messages=prompt.messages(images, **values),
        task=task,
        json_schema=json_schema_for(schema),
        schema_name=schema.__name__,
        max_tokens=max_tokens,
    )


async def call_structured(
    backend: ChatBackend,
    calls: Sequence[Call],
    schema: type[ReplyT],
    *,
    agent: str,
    stage: str,
    prompt_version: str,
) -> list[Outcome[ReplyT]]:
    """Outcomes of `calls` in order: each a validated reply (possibly after one repair) or a reject."""
    if not calls:
        return []
    first = await _complete_batch(backend, [call.request for call in calls])
    outcomes: list[Outcome[ReplyT] | None] = [None] * len(calls)
    spent: list[list[ChatReply]] = [[] for _ in calls]
    to_repair: list[tuple[int, ChatRequest, str]] = []
    for index, (call, reply) in enumerate(zip(calls, first, strict=True)):
        if isinstance(reply, BaseException):
            outcomes[index] = _rejected(
                reject_for(reply, stage=stage, item_id=call.item_id, clip_id=call.clip_id, untyped=_BACKEND)
            )
            continue
        spent[index].append(reply)
        try:
            value = parse_reply(reply.text, schema)
        except InvalidReplyError as exc:
            if exc.reason == RejectReason.TEXT_TOO_LONG:  # a runaway reply: asking again costs as much again
                outcomes[index] = _rejected(make_reject(stage, call.item_id, call.clip_id, exc.reason, str(exc)))
                continue
            to_repair.append((index, repair_request(call.request, reply.text, str(exc)), str(exc)))
            continue
        outcomes[index] = _accepted(call, value, spent[index], agent, prompt_version, repaired=False)

    if to_repair:
        second = await _complete_batch(backend, [request for _, request, _ in to_repair])
        for (index, _, first_error), reply in zip(to_repair, second, strict=True):
            call = calls[index]
            if isinstance(reply, BaseException):
                outcomes[index] = _rejected(
                    reject_for(reply, stage=stage, item_id=call.item_id, clip_id=call.clip_id, untyped=_BACKEND)
                )
                continue
            spent[index].append(reply)
            try:
                value = parse_reply(reply.text, schema)
            except InvalidReplyError as exc:
                message = f"invalid reply after one repair attempt: {exc} (first error: {first_error})"
                outcomes[index] = _rejected(make_reject(stage, call.item_id, call.clip_id, exc.reason, message))
                continue
            outcomes[index] = _accepted(call, value, spent[index], agent, prompt_version, repaired=True)
    return [outcome for outcome in outcomes if outcome is not None]


def reply_budget(limit: int) -> int:
    """The most characters a whole reply may have with every text in it within `limit` (schemas hold a few texts;
    QA replies a few items of a few texts each)."""
    return 16 * limit + 65_536


def parse_reply(text: str, schema: type[ReplyT]) -> ReplyT:
    """Validate a reply's text against `schema`, tolerating code fences, prose and trailing commas.

    A reply longer than `reply_budget` is not parsed at all, and a text in it above `limits.max_text_chars`
    fails it: `InvalidReplyError` with the reason `text_too_long` (the caller does not ask again)."""
    limit = current_text_limit()
    if not isinstance(text, str):
        raise InvalidReplyError(f"reply is {type(text).__name__}, not text")
    if len(text) > reply_budget(limit):
        raise _too_long(f"reply of {len(text)} characters, above what a reply within limits.max_text_chars "
                        f"({limit}) can hold ({reply_budget(limit)})")
    try:
        return schema.model_validate_json(text)
    except ValidationError as strict_error:
        if _has_too_long(strict_error):
            raise _too_long(_brief(strict_error)) from None
        try:
            data = extract_json(text)
        except InvalidReplyError:
            raise InvalidReplyError(_brief(strict_error)) from None
        except RecursionError:
            raise InvalidReplyError("reply nests deeper than a reply may") from None
        try:
            return schema.model_validate(data)
        except ValidationError as lenient_error:
            if _has_too_long(lenient_error):
                raise _too_long(_brief(lenient_error)) from None
            raise InvalidReplyError(_brief(lenient_error)) from None


def _has_too_long(error: ValidationError) -> bool:
    return any(item["type"] == TEXT_TOO_LONG for item in error.errors())


def _too_long(message: str) -> InvalidReplyError:
    error = InvalidReplyError(message)
    error.reason = RejectReason.TEXT_TOO_LONG
    return error


def repair_request(request: ChatRequest, bad_reply: str, error: str) -> ChatRequest:
    """The original conversation, the model's invalid reply, and the instruction to fix it."""
    extra = (
        ChatMessage(role="assistant", content=(bad_reply[:4000] or "(empty reply)",)),
        ChatMessage(role="user", content=(REPAIR_INSTRUCTION.format(error=error[:1000]),)),
    )
    return dataclasses.replace(request, messages=(*request.messages, *extra))


def provenance_of(replies: Sequence[ChatReply], *, agent: str, prompt_version: str) -> Provenance:
    """One provenance entry for the calls that produced one field (costs summed over a repair)."""
    last = replies[-1]
    return Provenance(
        agent=agent,
        backend=last.backend,
        model=last.model,
        prompt_version=prompt_version,
        latency_s=round(sum(reply.latency_s for reply in replies), 6),
        prompt_tokens=sum(reply.prompt_tokens for reply in replies),
        completion_tokens=sum(reply.completion_tokens for reply in replies),
    )


async def _complete_batch(backend: ChatBackend, requests: list[ChatRequest]) -> list[ChatReply | BaseException]:
    replies = await backend.complete_batch(requests)
    if len(replies) != len(requests):
        raise BackendError(f"backend {backend.kind} returned {len(replies)} replies for {len(requests)} requests")
    return list(replies)


def _accepted(
    call: Call, value: ReplyT, replies: list[ChatReply], agent: str, prompt_version: str, *, repaired: bool
) -> Outcome[ReplyT]:
    provenance = provenance_of(replies, agent=agent, prompt_version=prompt_version)
    return Outcome(item_id=call.item_id, clip_id=call.clip_id, value=value, provenance=provenance, repaired=repaired)


def _rejected(reject: Reject) -> Outcome[Any]:
    return Outcome(item_id=reject.item_id, clip_id=reject.clip_id, reject=reject)


def _brief(error: ValidationError) -> str:
    problems = [f"{'.'.join(str(p) for p in item['loc']) or 'reply'}: {item['msg']}" for item in error.errors()]
    return bounded("; ".join(problems[:5]) or str(error), 1000)
