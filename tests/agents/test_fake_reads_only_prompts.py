"""Each agent's fake answer comes from the prompt it renders and the images it sends, nothing else.

The requests are the ones the agents really send (recorded while they run on synthetic clips). Removing one
input from a rendered prompt, or the images, must change what the fake answers: an agent whose prompt
forgot that input would get a different answer, and these tests would catch it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
from collections.abc import Sequence

import pytest

from agents.analyzer import Analyzer
from agents.annotator import Annotator
from agents.backends.base import ChatMessage, ChatReply, ChatRequest, ImagePart
from agents.backends.fake_chat import FakeChatBackend
from agents.backends.fake_vision import FakeGrounder, FakeSegmenter
from agents.calling import parse_reply
from agents.qa import QAGenerator
from agents.refiner import Refiner
from agents.reviewer import Reviewer
from agents.schemas import AnalyzerReply, AnnotatorReply, JudgeReply, QAReply, RefinerReply, RegionCaptionReply
from agents.segmentor import Segmentor
from engine.synthetic import COLORS
from engine.types import Clip, GivenObject, Masklet


class RecordingBackend:
    """The fake chat backend, keeping every request the agents send it."""

    kind = "fake"
    model = "fake-chat"

    def __init__(self) -> None:
        self.fake = FakeChatBackend()
        self.requests: list[ChatRequest] = []

    async def complete(self, request: ChatRequest) -> ChatReply:
        self.requests.append(request)
        return await self.fake.complete(request)

    async def complete_batch(self, requests: Sequence[ChatRequest]) -> list[ChatReply | Exception]:
        self.requests.extend(requests)
        return await self.fake.complete_batch(requests)

    async def aclose(self) -> None:
        return None

    def sent(self, task: str) -> list[ChatRequest]:
        return [request for request in self.requests if request.task == task]


@dataclasses.dataclass(frozen=True)
class Recorded:
    detailed: RecordingBackend
    qa: RecordingBackend


def _qa_clip(case) -> Clip:
    truth = case.synthetic.ground_truth
    given = tuple(
        GivenObject(
            name=f"obj{index}",
            expression="",
            category=obj.name,
            masklet=Masklet(masks={i: obj.masks[i] for i in sorted(obj.masks)[::4]}, key_frame=0),
        )
        for index, obj in enumerate(truth.objects)
    )
    return dataclasses.replace(case.clip, given_objects=given)


@pytest.fixture(scope="module")
def recorded(cases, static_case) -> Recorded:
    detailed, qa = RecordingBackend(), RecordingBackend()

    async def chain() -> None:
        analyzed = await Analyzer(detailed).run([case.clip for case in cases[:3]])
        annotated = await Annotator(detailed, num_frames=4, drop_static=False).run(analyzed.records)
        segmented = await Segmentor(FakeGrounder(), FakeSegmenter(), num_frames=6, seed=5).run(annotated.records)
        reviewed = await Reviewer(detailed, detailed, num_frames=3).run(segmented.records)
        await Refiner(detailed).run(reviewed.records)
        await QAGenerator(qa, qa, num_frames=4).run([_qa_clip(static_case)])

    asyncio.run(chain())
    return Recorded(detailed=detailed, qa=qa)


def _answer(request: ChatRequest, schema):
    return parse_reply(asyncio.run(FakeChatBackend().complete(request)).text, schema)


def _prompt(request: ChatRequest) -> str:
    return next(part for part in request.messages[1].content if isinstance(part, str))


def _edited(request: ChatRequest, old: str, new: str = "") -> ChatRequest:
    """The request with `old` replaced by `new` in its rendered prompt (which must contain it)."""
    assert old in _prompt(request), f"{old!r} is not in the prompt"
    user = request.messages[1]
    content = tuple(part.replace(old, new) if isinstance(part, str) else part for part in user.content)
    return dataclasses.replace(request, messages=(request.messages[0], ChatMessage(role="user", content=content)))


def _without_images(request: ChatRequest) -> ChatRequest:
    user = request.messages[1]
    content = tuple(part for part in user.content if not isinstance(part, ImagePart))
    return dataclasses.replace(request, messages=(request.messages[0], ChatMessage(role="user", content=content)))


def _colours(text: str) -> set[str]:
    return {word.strip(".,") for word in text.lower().split()} & set(COLORS)


def test_analyzer_nouns_come_from_the_caption_in_the_prompt(recorded, cases) -> None:
    for request, case in zip(recorded.detailed.sent("analyze"), cases[:3], strict=True):
        full = _answer(request, AnalyzerReply)
        assert full.subject == [case.synthetic.ground_truth.objects[0].name]
        blank = _answer(_edited(request, case.clip.caption), AnalyzerReply)
        assert (blank.subject, blank.others) == ([], [])


def test_annotator_reads_the_noun_from_the_prompt_and_the_colour_from_the_frames(recorded) -> None:
    requests = [r for r in recorded.detailed.sent("annotate") if _colours(_answer(r, AnnotatorReply).appearance)]
    assert requests
    for request in requests:
        noun = _prompt(request).split('Object to describe: "')[1].split('"')[0]
        full = _answer(request, AnnotatorReply)
        assert noun in full.appearance and len(_colours(full.appearance)) == 1
        without_noun = _answer(_edited(request, f'"{noun}"', '""'), AnnotatorReply)
        assert noun not in without_noun.appearance
        without_frames = _answer(_without_images(request), AnnotatorReply)
        assert noun in without_frames.appearance and not _colours(without_frames.appearance)


def test_region_captioner_reads_the_outline_colour_and_the_images(recorded) -> None:
    requests = recorded.detailed.sent("region_caption")
    assert requests
    for request in requests:
        full = _answer(request, RegionCaptionReply).caption
        assert _colours(full), full
        assert not _colours(_answer(_without_images(request), RegionCaptionReply).caption)
        # Not told the outline's colour, the fake cannot tell the outline from the objects.
        unnamed = _answer(_edited(request, "a red contour", "a contour"), RegionCaptionReply).caption
        assert not _colours(unnamed)


def test_judge_reads_noun_region_caption_and_appearance_from_the_prompt(recorded) -> None:
    accepted = [r for r in recorded.detailed.sent("judge") if _answer(r, JudgeReply).same_object]
    assert accepted
    for request in accepted:
        text = _prompt(request)
        noun = text.split('asked about "')[1].split('"')[0]
        region_caption = text.split("and wrote:")[-1].split("Do A and B")[0].strip()
        appearance = text.split("Appearance:")[1].split("Motion:")[0].strip()
        assert _answer(_edited(request, region_caption), JudgeReply).same_object is False
        assert _answer(_edited(request, f'"{noun}"', '""'), JudgeReply).same_object is False
        (color,) = _colours(appearance)
        other = next(name for name in COLORS if name != color)
        recoloured = _edited(request, appearance, appearance.replace(color, other))
        assert _answer(recoloured, JudgeReply).same_object is False
        # With the (contradicting) appearance gone, nothing is left to contradict the region caption.
        assert _answer(_edited(recoloured, appearance.replace(color, other)), JudgeReply).same_object is True


def test_refiner_caption_is_made_of_the_notes_in_its_prompt(recorded) -> None:
    requests = recorded.detailed.sent("refine")
    assert requests
    for request in requests:
        text = _prompt(request)
        appearance = text.split("Appearance note:")[1].split("\n")[0].strip()
        motion = text.split("Motion note:")[1].split("\n")[0].strip()
        full = _answer(request, RefinerReply).caption
        assert appearance in full and motion.rstrip(".") in full
        without_appearance = _answer(_edited(request, appearance), RefinerReply).caption
        assert appearance not in without_appearance and motion.rstrip(".") in without_appearance
        without_motion = _answer(_edited(request, motion), RefinerReply).caption
        assert motion.rstrip(".") not in without_motion and appearance in without_motion


def test_qa_answers_follow_the_descriptions_in_its_prompt(recorded) -> None:
    (request,) = recorded.qa.sent("qa")
    text = _prompt(request)
    full = _answer(request, QAReply)

    def answer(reply: QAReply, kind: str, name: str) -> str:
        return next(item.answer for item in reply.items if item.type == kind and item.objects == [name])

    recoloured = moved = 0
    for listed in re.finditer(r"^(<object\d+>) \(.*\):\n  appearance: (.*)\n  motion: (.*)$", text, re.MULTILINE):
        name, appearance, motion = listed.groups()
        assert _colours(answer(full, "basic", name)) == _colours(appearance) != set()
        assert not _colours(answer(_answer(_edited(request, appearance), QAReply), "basic", name))
        recoloured += 1
        still = "still" in motion
        assert (answer(full, "future", name) == "It will stay where it is.") == still
        assert answer(_answer(_edited(request, motion), QAReply), "future", name) != answer(full, "future", name)
        moved += not still
    assert recoloured >= 2 and 0 < moved < recoloured  # the static clip has moving objects and a still one
