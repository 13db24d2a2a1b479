"""The fake chat backend: deterministic, schema-valid answers that follow the request and the ground truth."""

from __future__ import annotations

import asyncio
import json

import pytest

from agents.backends.base import ChatBackend, ChatMessage, ChatRequest, ImagePart
from agents.backends.fake_chat import FakeChatBackend, ScriptedChatBackend, minimal_instance, parse_nouns
from agents.calling import parse_reply
from agents.schemas import AnalyzerReply, AnnotatorReply, JudgeReply, QAReply, RefinerReply, json_schema_for
from engine.config import FakeChatConfig
from engine.errors import BackendUnavailableError, ConfigError


def _request(task: str, context: dict, schema=None, images: int = 0) -> ChatRequest:
    content = (*[ImagePart(jpeg=b"\xff\xd8fake") for _ in range(images)], "describe it")
    return ChatRequest(
        messages=(ChatMessage(role="user", content=content),),
        task=task,
        context=context,
        json_schema=json_schema_for(schema) if schema else None,
    )


@pytest.mark.parametrize(
    ("caption", "nouns"),
    [
        ("a man fishing on a boat catches a large fish", ["man", "boat", "fish"]),
        ("a red ball rolls past a blue box and an orange kite", ["ball", "box", "kite"]),
        ("Two dogs chase a frisbee in the park", ["dog", "frisbee"]),
        ("the sky is clear over the sea", []),
    ],
)
def test_parse_nouns_finds_vocabulary_and_article_patterns(caption: str, nouns: list[str]) -> None:
    assert parse_nouns(caption) == nouns


def test_fake_is_a_chat_backend_and_says_it_is_fake() -> None:
    fake = FakeChatBackend(FakeChatConfig())
    assert isinstance(fake, ChatBackend)
    assert (fake.kind, fake.model) == ("fake", "fake-chat")


def test_analyze_reply_is_schema_valid_with_subject_first() -> None:
    fake = FakeChatBackend()
    reply = asyncio.run(fake.complete(_request("analyze", {"caption": "a woman walks a dog past a car"})))
    parsed = parse_reply(reply.text, AnalyzerReply)
    assert (parsed.subject, parsed.others) == (["woman"], ["dog", "car"])
    assert reply.backend == "fake" and reply.prompt_tokens > 0 and reply.completion_tokens > 0


def test_replies_are_deterministic_and_count_image_tokens() -> None:
    fake = FakeChatBackend()
    request = _request("annotate", {"noun": "dog", "color": "brown"}, images=3)
    first, second = asyncio.run(fake.complete_batch([request, request]))
    assert first.text == second.text
    parsed = parse_reply(first.text, AnnotatorReply)
    assert "brown dog" in parsed.appearance and "dog" in parsed.motion and not parsed.is_static
    assert first.prompt_tokens > asyncio.run(fake.complete(_request("annotate", {"noun": "dog"}))).prompt_tokens


def test_annotate_honours_static_hint() -> None:
    reply = asyncio.run(FakeChatBackend().complete(_request("annotate", {"noun": "box", "is_static": True})))
    parsed = parse_reply(reply.text, AnnotatorReply)
    assert parsed.is_static and "still" in parsed.motion


def test_judge_agrees_when_region_caption_names_the_noun() -> None:
    fake = FakeChatBackend()
    same = asyncio.run(fake.complete(_request("judge", {"noun": "ball", "region_caption": "A red ball."})))
    other = asyncio.run(fake.complete(_request("judge", {"noun": "ball", "region_caption": "A green kite."})))
    assert parse_reply(same.text, JudgeReply).same_object is True
    assert parse_reply(other.text, JudgeReply).same_object is False


def test_disagree_rate_flips_about_that_fraction_of_verdicts_reproducibly() -> None:
    fake = FakeChatBackend(FakeChatConfig(disagree_rate=0.3, seed=1))
    requests = [
        _request("judge", {"item_id": f"obj{i}", "noun": "ball", "region_caption": "A red ball."}) for i in range(200)
    ]
    verdicts = [parse_reply(r.text, JudgeReply).same_object for r in asyncio.run(fake.complete_batch(requests))]
    again = [parse_reply(r.text, JudgeReply).same_object for r in asyncio.run(fake.complete_batch(requests))]
    assert verdicts == again
    assert 0.2 <= verdicts.count(False) / len(verdicts) <= 0.4


def test_refine_and_qa_replies_validate() -> None:
    fake = FakeChatBackend()
    notes = {"noun": "car", "appearance": "A red car", "motion": "It drives"}
    refine = asyncio.run(fake.complete(_request("refine", notes)))
    assert parse_reply(refine.text, RefinerReply).caption == "A red car. It drives."
    objects = [{"name": "<object0>", "noun": "car"}, {"name": "<object1>", "noun": "dog", "is_static": True}]
    qa = parse_reply(asyncio.run(fake.complete(_request("qa", {"objects": objects}))).text, QAReply)
    assert {item.type for item in qa.items} == {"basic", "reasoning", "future"}
    assert any(len(item.objects) == 2 for item in qa.items)


def test_unknown_task_gets_the_minimal_schema_instance() -> None:
    reply = asyncio.run(FakeChatBackend().complete(_request("something_else", {}, schema=QAReply)))
    data = json.loads(reply.text)
    assert data == minimal_instance(json_schema_for(QAReply))
    assert len(data["items"]) == 1  # minItems respected


def test_latency_and_bad_disagree_rate() -> None:
    fake = FakeChatBackend(FakeChatConfig(latency_s=0.05))
    reply = asyncio.run(fake.complete(_request("refine", {"noun": "cat"})))
    assert reply.latency_s >= 0.05
    with pytest.raises(ConfigError):
        FakeChatBackend(FakeChatConfig(disagree_rate=1.5))


def test_scripted_backend_counts_attempts_and_propagates_unavailable() -> None:
    scripted = ScriptedChatBackend(lambda request, attempt: "broken" if attempt == 0 else '{"caption": "ok"}')
    request = _request("refine", {})
    first, second = asyncio.run(scripted.complete_batch([request, request]))
    assert (first.text, second.text) == ("broken", '{"caption": "ok"}')
    down = ScriptedChatBackend(lambda request, attempt: BackendUnavailableError("server down"))
    with pytest.raises(BackendUnavailableError):
        asyncio.run(down.complete_batch([request]))
