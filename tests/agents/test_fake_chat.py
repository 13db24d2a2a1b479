"""The fake chat backend: deterministic, schema-valid answers read from the rendered prompts and the images."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from agents.backends.base import ChatBackend, ChatMessage, ChatRequest, ImagePart
from agents.backends.fake_chat import FakeChatBackend, ScriptedChatBackend, minimal_instance, parse_nouns
from agents.calling import parse_reply, structured_request
from agents.frames import jpeg_part
from agents.prompting import load_prompt
from agents.schemas import (
    AnalyzerReply,
    AnnotatorReply,
    JudgeReply,
    QAReply,
    RefinerReply,
    RegionCaptionReply,
    json_schema_for,
)
from engine.config import FakeChatConfig
from engine.errors import BackendUnavailableError, ConfigError
from engine.masks import decode_rle
from engine.render import draw_contour
from engine.video import read_frames


def _request(task: str, schema=None, images: int = 0, text: str = "describe it") -> ChatRequest:
    content = (*[ImagePart(jpeg=b"\xff\xd8fake") for _ in range(images)], text)
    return ChatRequest(
        messages=(ChatMessage(role="user", content=content),),
        task=task,
        json_schema=json_schema_for(schema) if schema else None,
    )


def _ask(fake: FakeChatBackend, request: ChatRequest, schema):
    return parse_reply(asyncio.run(fake.complete(request)).text, schema)


def _analyze(caption: str, prompt: str = "analyzer") -> ChatRequest:
    return structured_request(load_prompt(prompt), AnalyzerReply, task="analyze", values={"caption": caption})


def _annotate(noun: str, images=(), hint: str = "") -> ChatRequest:
    values = {"noun": noun, "num_frames": len(images), "expression_hint": hint}
    return structured_request(load_prompt("annotator"), AnnotatorReply, task="annotate", values=values, images=images)


def _judge(noun: str, appearance: str, region_caption: str, motion: str = "It moves.") -> ChatRequest:
    values = {"noun": noun, "appearance": appearance, "motion": motion, "region_caption": region_caption}
    return structured_request(load_prompt("judge"), JudgeReply, task="judge", values=values)


def _refine(noun: str, appearance: str, motion: str) -> ChatRequest:
    values = {"noun": noun, "appearance": appearance, "motion": motion}
    return structured_request(load_prompt("refiner"), RefinerReply, task="refine", values=values)


def _frames(case, count: int = 4) -> tuple[list[int], np.ndarray]:
    indices = [round(i * (case.clip.num_frames - 1) / (count - 1)) for i in range(count)]
    return indices, read_frames(case.clip.video_uri, indices)


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


def test_analyze_reads_the_caption_from_the_prompt_with_subject_first() -> None:
    fake = FakeChatBackend()
    reply = asyncio.run(fake.complete(_analyze("a woman walks a dog past a car")))
    parsed = parse_reply(reply.text, AnalyzerReply)
    assert (parsed.subject, parsed.others) == (["woman"], ["dog", "car"])
    assert reply.backend == "fake" and reply.prompt_tokens > 0 and reply.completion_tokens > 0
    single = _ask(fake, _analyze("a woman walks a dog past a car", "analyzer_single_subject"), AnalyzerReply)
    assert (single.subject, single.others) == (["woman"], [])
    # A caption that names "single" is not the single-subject prompt.
    assert _ask(fake, _analyze("a single dog chases a ball"), AnalyzerReply).others == ["ball"]


def test_annotate_reads_colour_and_motion_from_the_frames(cases) -> None:
    fake = FakeChatBackend()
    for case in cases:
        _, frames = _frames(case)
        images = [jpeg_part(frame) for frame in frames]
        for obj in case.synthetic.ground_truth.objects:
            parsed = _ask(fake, _annotate(obj.name, images), AnnotatorReply)
            assert f"{obj.color} {obj.name}" in parsed.appearance
            assert parsed.is_static == obj.is_static and obj.name in parsed.motion


def test_annotate_sees_a_static_object_stay_still(static_case) -> None:
    _, frames = _frames(static_case)
    images = [jpeg_part(frame) for frame in frames]
    still = next(obj for obj in static_case.synthetic.ground_truth.objects if obj.is_static)
    parsed = _ask(FakeChatBackend(), _annotate(still.name, images), AnnotatorReply)
    assert parsed.is_static and "still" in parsed.motion


def test_annotate_follows_the_outline_when_the_prompt_says_it_is_outlined(cases) -> None:
    case = next(case for case in cases if len(case.synthetic.ground_truth.objects) >= 2)
    indices, frames = _frames(case)
    fake = FakeChatBackend()
    for obj in case.synthetic.ground_truth.objects:
        images = [
            jpeg_part(draw_contour(frame, decode_rle(obj.masks[index]), (255, 0, 0), 2))
            for index, frame in zip(indices, frames, strict=True)
        ]
        hint = "\nThe object is outlined in red in the frames where it is visible."
        # The noun says nothing here ("thing"): the outline alone tells which object is meant.
        parsed = _ask(fake, _annotate("thing", images, hint), AnnotatorReply)
        assert f"{obj.color} thing" in parsed.appearance


def test_replies_are_deterministic_and_count_image_tokens(cases) -> None:
    fake = FakeChatBackend()
    _, frames = _frames(cases[0], 3)
    request = _annotate(cases[0].synthetic.ground_truth.objects[0].name, [jpeg_part(frame) for frame in frames])
    first, second = asyncio.run(fake.complete_batch([request, request]))
    assert first.text == second.text
    assert first.prompt_tokens > asyncio.run(fake.complete(_annotate("dog"))).prompt_tokens


def test_region_caption_reads_the_outlined_object_from_the_image(cases) -> None:
    fake = FakeChatBackend()
    prompt = load_prompt("region_caption")
    values = {"plural": "", "outline_color": "red", "frames_note": ""}

    def caption(frame: np.ndarray, mask: np.ndarray) -> str:
        image = jpeg_part(draw_contour(frame, mask, (255, 0, 0), 2))
        request = structured_request(prompt, RegionCaptionReply, task="region_caption", values=values, images=[image])
        return _ask(fake, request, RegionCaptionReply).caption

    for case in cases:
        for obj in case.synthetic.ground_truth.objects:
            # On the frame where it is least hidden by the others (a partly hidden shape can read as another).
            index = max(obj.masks, key=lambda i: int(decode_rle(obj.masks[i]).sum()))
            frame = read_frames(case.clip.video_uri, [index])[0]
            assert f"{obj.color} {obj.name}" in caption(frame, decode_rle(obj.masks[index]))
    background = np.zeros((case.clip.height, case.clip.width), dtype=bool)
    background[:8, :8] = True
    assert "background" in caption(frame, background)


def test_judge_compares_the_noun_and_colours_it_is_given() -> None:
    fake = FakeChatBackend()
    assert _ask(fake, _judge("ball", "A red ball.", "A red ball outlined."), JudgeReply).same_object is True
    assert _ask(fake, _judge("ball", "A red ball.", "A green kite outlined."), JudgeReply).same_object is False
    assert _ask(fake, _judge("ball", "A red ball.", "A blue ball outlined."), JudgeReply).same_object is False
    assert _ask(fake, _judge("ball", "A round ball.", "A blue ball outlined."), JudgeReply).same_object is True


def test_disagree_rate_flips_about_that_fraction_of_verdicts_reproducibly() -> None:
    fake = FakeChatBackend(FakeChatConfig(disagree_rate=0.3, seed=1))
    requests = [_judge("ball", f"A red ball, number {i}.", "A red ball.") for i in range(200)]
    verdicts = [parse_reply(r.text, JudgeReply).same_object for r in asyncio.run(fake.complete_batch(requests))]
    again = [parse_reply(r.text, JudgeReply).same_object for r in asyncio.run(fake.complete_batch(requests))]
    assert verdicts == again
    assert 0.2 <= verdicts.count(False) / len(verdicts) <= 0.4


def test_refine_and_qa_replies_validate() -> None:
    fake = FakeChatBackend()
    assert _ask(fake, _refine("car", "A red car", "It drives"), RefinerReply).caption == "A red car. It drives."
    object_list = (
        '<object0> (a car, referred to as "the red car"):\n'
        "  appearance: A red car.\n  motion: It drives to the left.\n"
        "<object1> (a dog):\n  appearance: A brown dog.\n  motion: The dog stays still in the same place."
    )
    values = {"object_list": object_list, "num_questions": 5, "multi_hint": ""}
    qa = _ask(fake, structured_request(load_prompt("qa"), QAReply, task="qa", values=values), QAReply)
    assert {item.type for item in qa.items} == {"basic", "reasoning", "future"}
    assert any(len(item.objects) == 2 for item in qa.items)
    answers = {(item.objects[0], item.type): item.answer for item in qa.items if len(item.objects) == 1}
    assert answers[("<object0>", "basic")] == "A red car." and "to the left" in answers[("<object0>", "future")]
    assert answers[("<object1>", "future")] == "It will stay where it is."


def test_unknown_task_gets_the_minimal_schema_instance() -> None:
    reply = asyncio.run(FakeChatBackend().complete(_request("something_else", schema=QAReply)))
    data = json.loads(reply.text)
    assert data == minimal_instance(json_schema_for(QAReply))
    assert len(data["items"]) == 1  # minItems respected


def test_undecodable_images_are_ignored() -> None:
    parsed = _ask(FakeChatBackend(), _request("annotate", images=2, text='Object to describe: "cat"'), AnnotatorReply)
    assert parsed.appearance.startswith("A cat ") and not parsed.is_static


def test_latency_and_bad_disagree_rate() -> None:
    fake = FakeChatBackend(FakeChatConfig(latency_s=0.05))
    reply = asyncio.run(fake.complete(_refine("cat", "", "")))
    assert reply.latency_s >= 0.05 and json.loads(reply.text) == {"caption": "The cat is visible in the clip."}
    with pytest.raises(ConfigError):
        FakeChatBackend(FakeChatConfig(disagree_rate=1.5))


def test_scripted_backend_counts_attempts_and_propagates_unavailable() -> None:
    scripted = ScriptedChatBackend(lambda request, attempt: "broken" if attempt == 0 else '{"caption": "ok"}')
    request = _request("refine")
    first, second = asyncio.run(scripted.complete_batch([request, request]))
    assert (first.text, second.text) == ("broken", '{"caption": "ok"}')
    down = ScriptedChatBackend(lambda request, attempt: BackendUnavailableError("server down"))
    with pytest.raises(BackendUnavailableError):
        asyncio.run(down.complete_batch([request]))
