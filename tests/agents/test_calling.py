"""The shared call helper: validation, one repair, rejects instead of crashes, fatal errors propagate, provenance."""

from __future__ import annotations

import asyncio

import pytest

from agents.backends.base import ChatMessage, ChatRequest
from agents.backends.fake_chat import ScriptedChatBackend
from agents.calling import Call, call_structured
from agents.schemas import RefinerReply, json_schema_for
from engine.errors import (
    BackendUnavailableError,
    ConfigError,
    RejectReason,
    ReplayMissError,
    TransientBackendError,
)

GOOD = '{"caption": "A red car drives away."}'


def _calls(n: int) -> list[Call]:
    return [
        Call(
            item_id=f"item{i}",
            clip_id="clip",
            request=ChatRequest(
                messages=(ChatMessage(role="user", content=(f"caption item {i}",)),),
                json_schema=json_schema_for(RefinerReply),
            ),
        )
        for i in range(n)
    ]


def _run(backend, calls):
    work = call_structured(backend, calls, RefinerReply, agent="refiner", stage="refine", prompt_version="v1")
    return asyncio.run(work)


def test_valid_replies_pass_with_provenance() -> None:
    backend = ScriptedChatBackend(lambda request, attempt: GOOD, model="m1")
    outcomes = _run(backend, _calls(3))
    assert [o.value.caption for o in outcomes] == ["A red car drives away."] * 3
    provenance = outcomes[0].provenance
    assert (provenance.agent, provenance.backend, provenance.model, provenance.prompt_version) == (
        "refiner", "fake", "m1", "v1"
    )
    assert provenance.prompt_tokens > 0 and provenance.completion_tokens > 0
    assert len(backend.requests) == 3


def test_json_in_prose_is_repaired_without_a_second_call() -> None:
    backend = ScriptedChatBackend(lambda request, attempt: 'Sure! ```json\n{"caption": "A dog.",}\n``` Hope it helps')
    (outcome,) = _run(backend, _calls(1))
    assert outcome.value.caption == "A dog." and not outcome.repaired
    assert len(backend.requests) == 1


def test_broken_reply_is_re_asked_once_with_the_error() -> None:
    bad = '{"text": "wrong key"}'
    backend = ScriptedChatBackend(lambda request, attempt: bad if attempt == 0 else GOOD)
    (outcome,) = _run(backend, _calls(1))
    assert outcome.repaired and outcome.value.caption.startswith("A red car")
    assert outcome.provenance.completion_tokens == (len(bad) // 4 + 1) + (len(GOOD) // 4 + 1)  # both calls
    repair = backend.requests[1]
    assert [m.role for m in repair.messages] == ["user", "assistant", "user"]
    assert "caption" in repair.messages[-1].content[0]  # the validation error names the missing field


def test_still_broken_after_one_repair_becomes_invalid_reply() -> None:
    backend = ScriptedChatBackend(lambda request, attempt: "I cannot answer that.")
    outcomes = _run(backend, _calls(2))
    assert [o.reject.reason for o in outcomes] == [RejectReason.INVALID_REPLY] * 2
    assert all(o.value is None and "after one repair" in o.reject.message for o in outcomes)
    assert len(backend.requests) == 4  # exactly one re-ask per item


def test_per_item_exceptions_become_rejects_and_others_go_on() -> None:
    def script(request: ChatRequest, attempt: int):
        text = request.messages[0].content[0]
        if text.endswith("1"):
            return TransientBackendError("429 after retries")
        if text.endswith("2"):
            return RuntimeError("backend bug")
        if text.endswith("3"):
            return ValueError("the backend's own parsing failed")  # untyped, but from the backend
        return GOOD

    outcomes = _run(ScriptedChatBackend(script), _calls(4))
    assert outcomes[0].value is not None
    # A transient failure that outlived the backend's retries stays pending (the stage retries it), never final.
    assert outcomes[1].reject.reason == RejectReason.BACKEND_TRANSIENT and "429" in outcomes[1].reject.message
    assert outcomes[2].reject.reason == RejectReason.BACKEND_ERROR and outcomes[2].reject.item_id == "item2"
    assert outcomes[3].reject.reason == RejectReason.BACKEND_ERROR


@pytest.mark.parametrize("error", [BackendUnavailableError("down"), ConfigError("bad"), ReplayMissError("miss")])
def test_run_fatal_errors_propagate(error: Exception) -> None:
    backend = ScriptedChatBackend(lambda request, attempt: error)
    with pytest.raises(type(error)):
        _run(backend, _calls(2))


def test_empty_batch_makes_no_call() -> None:
    backend = ScriptedChatBackend(lambda request, attempt: GOOD)
    assert _run(backend, []) == [] and backend.requests == []
