"""The refiner, the short-caption path and the QA generator, on synthetic clips with fake backends."""

from __future__ import annotations

import asyncio
import re
from dataclasses import replace

from agents.analyzer import Analyzer
from agents.annotator import Annotator
from agents.backends.fake_chat import FakeChatBackend, ScriptedChatBackend
from agents.backends.fake_vision import FakeGrounder, FakeSegmenter
from agents.qa import QAGenerator, given_object_records
from agents.refiner import Refiner
from agents.schemas import QAItem
from agents.segmentor import Segmentor
from agents.short_captions import ShortCaptioner
from engine.errors import RejectReason
from engine.types import Clip, ClipQA, GivenObject, Masklet


def test_refiner_merges_appearance_and_motion(clips) -> None:
    fake = FakeChatBackend()
    analyzed = asyncio.run(Analyzer(fake).run(clips[:3]))
    annotated = asyncio.run(Annotator(fake, num_frames=4, drop_static=False).run(analyzed.records))
    undescribed = replace(annotated.records[0], object_id="nodesc", descriptions=None)
    result = asyncio.run(Refiner(fake).run([*annotated.records, undescribed]))
    assert len(result.records) == len(annotated.records)
    for record in result.records:
        assert record.descriptions.appearance in record.detailed_caption
        assert record.descriptions.motion.rstrip(".") in record.detailed_caption
        assert record.provenance[-1].agent == "refiner"
    assert [(r.item_id, r.reason) for r in result.rejects] == [("nodesc", RejectReason.MALFORMED_SAMPLE)]


def test_short_captions_reuse_the_clip_caption_for_the_segmented_subject(cases) -> None:
    segmentor = Segmentor(FakeGrounder(), FakeSegmenter(), num_frames=6)
    no_noun = Clip(clip_id="nonoun", video_uri="x.mp4", caption="the sky at night")
    result = asyncio.run(ShortCaptioner(FakeChatBackend(), segmentor).run([*(c.clip for c in cases), no_noun]))
    assert len(result.records) == len(cases)
    for record, case in zip(result.records, cases, strict=True):
        assert record.noun == case.synthetic.ground_truth.objects[0].name and record.is_subject
        assert record.short_caption == case.clip.caption and record.masklet.masks
    assert [(r.stage, r.item_id, r.reason) for r in result.rejects] == [
        ("short_captions", "nonoun", RejectReason.NO_NOUNS)
    ]


def _qa_clip(case, frames_with_masks: int = 4) -> Clip:
    truth = case.synthetic.ground_truth
    given = []
    for index, obj in enumerate(truth.objects):
        frames = sorted(obj.masks)[::3][:frames_with_masks]
        given.append(
            GivenObject(
                name=f"obj{index}",
                expression=f"the {obj.color} {obj.name}",
                category=obj.name,
                masklet=Masklet(masks={i: obj.masks[i] for i in frames}, key_frame=frames[0]),
            )
        )
    return replace(case.clip, given_objects=tuple(given))


def test_qa_generation_from_given_objects(cases) -> None:
    qa_clips = [_qa_clip(case) for case in cases[:4]]
    plain = Clip(clip_id="plain", video_uri="x.mp4", caption="a dog")
    result = asyncio.run(QAGenerator(FakeChatBackend(), FakeChatBackend(), num_frames=3).run([*qa_clips, plain]))
    assert [(r.item_id, r.reason) for r in result.rejects] == [("plain", RejectReason.NO_NOUNS)]
    assert [r.clip_id for r in result.records] == [c.clip_id for c in qa_clips]
    for clip_qa, clip in zip(result.records, qa_clips, strict=True):
        assert isinstance(clip_qa, ClipQA)
        assert [o.expression for o in clip_qa.objects] == [g.expression for g in clip.given_objects]
        assert all(o.descriptions is not None and o.masklet is not None for o in clip_qa.objects)
        ids = {o.object_id for o in clip_qa.objects}
        assert {pair.qa_type for pair in clip_qa.qa} == {"basic", "reasoning", "future"}
        for pair in clip_qa.qa:
            names = set(re.findall(r"<object(\d+)>", pair.question))
            assert names == {str(k) for k in range(len(pair.object_ids))}  # self-contained numbering
            assert set(pair.object_ids) <= ids and pair.answer in pair.options
        if len(clip.given_objects) >= 2:
            assert any(len(pair.object_ids) == 2 for pair in clip_qa.qa)
        assert clip_qa.provenance[0].agent == "qa_generator"


def test_qa_annotator_sees_the_object_outlined_on_its_mask_frames(cases) -> None:
    clip = _qa_clip(cases[0], frames_with_masks=2)
    annotator = ScriptedChatBackend(lambda r, a: '{"appearance": "round", "motion": "still", "is_static": true}')
    result = asyncio.run(QAGenerator(annotator, FakeChatBackend(), num_frames=8).run([clip]))
    assert len(result.records) == 1  # static objects are kept on the QA path
    first_text = annotator.requests[0].messages[-1].content[-1]
    assert "outlined in red" in first_text and clip.given_objects[0].expression in first_text
    assert len(annotator.requests[0].messages[-1].content) == 3  # both mask frames, then the text


def test_qa_items_are_renumbered_and_unknown_objects_dropped(cases) -> None:
    from agents.qa import to_qa_pair

    records = given_object_records(_qa_clip(cases[2]))
    item = QAItem(
        question="Is <object1> near <object0>?", answer="Yes, <object1> is close.", type="reasoning",
        objects=["<object1>", "<object0>"], options=["Yes, <object1> is close.", "No."],
    )
    pair = to_qa_pair(item, records[:2])
    assert pair.question == "Is <object0> near <object1>?"
    assert pair.object_ids == (records[1].object_id, records[0].object_id)
    assert pair.options == ("Yes, <object0> is close.", "No.")
    ghost = QAItem(question="Where is <object7>?", answer="Gone.", type="basic", objects=["<object7>"])
    assert to_qa_pair(ghost, records) is None


def test_qa_reply_without_usable_questions_rejects_the_clip(cases) -> None:
    clip = _qa_clip(cases[0])
    llm = ScriptedChatBackend(
        lambda r, a: '{"items": [{"question": "What?", "answer": "x", "type": "basic", "objects": [], "options": []}]}'
    )
    result = asyncio.run(QAGenerator(FakeChatBackend(), llm, num_frames=3).run([clip]))
    assert result.records == () and [r.reason for r in result.rejects] == [RejectReason.INVALID_REPLY]
