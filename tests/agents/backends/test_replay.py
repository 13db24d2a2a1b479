"""ReplayChatBackend: record -> strict replay, deterministic keys, miss handling, torn cassettes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from agents.backends.base import ChatMessage, ChatReply, ChatRequest, ImagePart
from agents.backends.replay import ReplayChatBackend, request_key
from engine.config import FakeChatConfig, ReplayChatConfig
from engine.errors import ConfigError, InvalidReplyError, ReplayMissError


class CountingBackend:
    """A tiny real backend that numbers its answers, so a replayed answer is told apart from a fresh one."""

    kind = "counting"
    model = "counting-model"

    def __init__(self) -> None:
        self.calls = 0

    async def complete(self, request: ChatRequest) -> ChatReply:
        self.calls += 1
        number = self.calls
        await asyncio.sleep(0.01)
        text = request.messages[-1].content[0]
        if text == "explode":
            raise InvalidReplyError("bad item")
        return ChatReply(text=f"answer {number} to {text}", model=self.model, backend=self.kind,
                         prompt_tokens=5, completion_tokens=3)

    async def complete_batch(self, requests: Sequence[ChatRequest]) -> list[ChatReply | Exception]:
        return list(await asyncio.gather(*(self.complete(r) for r in requests), return_exceptions=True))

    async def aclose(self) -> None:
        pass


def _request(text: str, *, image: bytes | None = None, **kwargs) -> ChatRequest:
    content = (text,) if image is None else (text, ImagePart(jpeg=image))
    return ChatRequest(messages=(ChatMessage(role="user", content=content),), **kwargs)


def _run(backend, requests):
    return asyncio.run(backend.complete_batch(requests))


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_record_then_strict_replay_returns_the_recorded_replies(tmp_path: Path, suffix: str) -> None:
    cassette = tmp_path / f"cassette{suffix}"
    requests = [_request("a dog"), _request("a cat", image=b"\xff\xd8jpeg"), _request("a dog")]
    inner = CountingBackend()
    recorder = ReplayChatBackend(ReplayChatConfig(cassette=str(cassette), mode="record"), inner)
    recorded = _run(recorder, requests)
    assert inner.calls == 2  # the repeated request was answered once and shared
    assert recorded[0].text == recorded[2].text
    assert recorder.recorded == 2

    config = ReplayChatConfig(cassette=str(cassette), mode="strict", inner=FakeChatConfig(model="counting-model"))
    replayer = ReplayChatBackend(config)
    replayed = _run(replayer, requests)
    assert [r.text for r in replayed] == [r.text for r in recorded]
    assert all(r.backend == "replay" and r.model == "counting-model" for r in replayed)
    assert [(r.prompt_tokens, r.completion_tokens) for r in replayed] == [(5, 3)] * 3
    assert replayer.hits == 3 and replayer.misses == 0


def test_strict_miss_raises_and_fails_the_batch(tmp_path: Path) -> None:
    backend = ReplayChatBackend(ReplayChatConfig(cassette=str(tmp_path / "empty.jsonl")))
    with pytest.raises(ReplayMissError):
        asyncio.run(backend.complete(_request("never recorded")))
    with pytest.raises(ReplayMissError):
        _run(backend, [_request("never recorded")])


def test_record_appends_to_an_existing_cassette_and_keeps_item_errors_out(tmp_path: Path) -> None:
    cassette = tmp_path / "c.jsonl"
    inner = CountingBackend()
    _run(ReplayChatBackend(ReplayChatConfig(cassette=str(cassette), mode="record"), inner), [_request("one")])
    second = ReplayChatBackend(ReplayChatConfig(cassette=str(cassette), mode="record"), inner)
    replies = _run(second, [_request("one"), _request("two"), _request("explode")])
    assert replies[0].text == "answer 1 to one"  # a hit: not asked again
    assert isinstance(replies[2], InvalidReplyError)
    assert inner.calls == 3
    assert [json.loads(line)["reply"]["text"] for line in cassette.read_text().splitlines()] == [
        "answer 1 to one",
        "answer 2 to two",
    ]


def test_fallthrough_answers_misses_without_recording(tmp_path: Path) -> None:
    cassette = tmp_path / "c.jsonl"
    backend = ReplayChatBackend(ReplayChatConfig(cassette=str(cassette), mode="fallthrough"), CountingBackend())
    [reply] = _run(backend, [_request("x")])
    assert reply.text == "answer 1 to x"
    assert not cassette.exists()


def test_a_torn_last_line_is_skipped(tmp_path: Path) -> None:
    cassette = tmp_path / "c.jsonl"
    _run(ReplayChatBackend(ReplayChatConfig(cassette=str(cassette), mode="record"), CountingBackend()),
         [_request("kept")])
    with cassette.open("a") as handle:
        handle.write('{"key": "abc", "reply": {"text": "half')
    backend = ReplayChatBackend(ReplayChatConfig(cassette=str(cassette), inner=FakeChatConfig(model="counting-model")))
    assert len(backend) == 1
    assert asyncio.run(backend.complete(_request("kept"))).text == "answer 1 to kept"


def test_keys_are_deterministic_and_sensitive_to_what_the_model_sees() -> None:
    base = _request("a dog", image=b"one", json_schema={"type": "object"}, temperature=0.0)
    assert request_key(base, "m") == request_key(
        _request("a dog", image=b"one", json_schema={"type": "object"}, temperature=0.0), "m"
    )
    # the task is not seen by a model: it does not change the key.
    assert request_key(base, "m") == request_key(
        ChatRequest(messages=base.messages, json_schema={"type": "object"}, temperature=0.0, task="t"), "m"
    )
    variants = [
        _request("a cat", image=b"one", json_schema={"type": "object"}, temperature=0.0),
        _request("a dog", image=b"two", json_schema={"type": "object"}, temperature=0.0),
        _request("a dog", image=b"one", json_schema={"type": "array"}, temperature=0.0),
        _request("a dog", image=b"one", json_schema={"type": "object"}, temperature=0.5),
        _request("a dog", image=b"one", json_schema={"type": "object"}, temperature=0.0, max_tokens=9),
    ]
    keys = {request_key(v, "m") for v in variants} | {request_key(base, "other-model"), request_key(base, "m")}
    assert len(keys) == len(variants) + 2
    assert len(request_key(base, "m")) == 32 and "." not in request_key(base, "m")


def test_record_mode_without_inner_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        ReplayChatBackend(ReplayChatConfig(cassette=str(tmp_path / "c.jsonl"), mode="record"))
