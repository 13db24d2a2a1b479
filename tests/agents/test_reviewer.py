"""The reviewer: region caption of the outlined object + judge; its decisions measured against ground truth."""

from __future__ import annotations

import asyncio
import re
from dataclasses import replace

import numpy as np
import pytest

from agents.analyzer import Analyzer
from agents.annotator import Annotator
from agents.backends.base import ImagePart
from agents.backends.fake_chat import FakeChatBackend, ScriptedChatBackend
from agents.backends.fake_vision import FakeGrounder, FakeSegmenter
from agents.reviewer import Reviewer
from agents.segmentor import Segmentor
from engine.config import FakeChatConfig
from engine.errors import RejectReason
from engine.masks import encode_rle
from engine.synthetic import make_corpus
from engine.types import Masklet, ObjectRecord, RleMask
from tests.agents.conftest import as_clip


async def _candidates(clips) -> list[ObjectRecord]:
    fake = FakeChatBackend()
    analyzed = await Analyzer(fake).run(clips)
    annotated = await Annotator(fake, drop_static=False, num_frames=4).run(analyzed.records)
    segmented = await Segmentor(FakeGrounder(), FakeSegmenter(), num_frames=6, seed=5).run(annotated.records)
    return list(segmented.records)


@pytest.fixture(scope="module")
def candidates(clips) -> list[ObjectRecord]:
    return asyncio.run(_candidates(clips))


def _background_masklet(record: ObjectRecord) -> Masklet:
    """A masklet over a corner where no object is drawn on any frame (a segmentation that missed)."""
    height, width = record.clip.height, record.clip.width
    mask = np.zeros((height, width), dtype=bool)
    mask[:6, :6] = True
    rle = RleMask.from_coco(encode_rle(mask))
    return Masklet(masks=dict.fromkeys(record.masklet.masks, rle), key_frame=record.masklet.key_frame)


def _mislabelled(records: list[ObjectRecord]) -> list[ObjectRecord]:
    """Each record once more with a wrong masklet: another object's of the same clip, else the background."""
    wrong = []
    for record in records:
        others = [r for r in records if r.clip_id == record.clip_id and r.noun != record.noun]
        masklet = others[0].masklet if others else _background_masklet(record)
        wrong.append(replace(record, object_id=record.object_id + "w", masklet=masklet))
    return wrong


def test_correct_masklets_are_accepted_with_provenance(candidates) -> None:
    result = asyncio.run(Reviewer(FakeChatBackend(), FakeChatBackend()).run(candidates))
    assert result.rejects == ()
    assert [r.object_id for r in result.records] == [r.object_id for r in candidates]
    for record in result.records:
        assert record.review.accepted and record.noun in record.review.region_caption
        assert [p.agent for p in record.provenance[-2:]] == ["reviewer.region_captioner", "reviewer.judge"]


def test_wrong_masklets_are_rejected_with_reasons(candidates) -> None:
    result = asyncio.run(Reviewer(FakeChatBackend(), FakeChatBackend()).run(_mislabelled(candidates)))
    assert result.records == ()
    assert {r.reason for r in result.rejects} == {RejectReason.REVIEW_REJECTED}
    assert all("judge:" in r.message and "region caption:" in r.message for r in result.rejects)


def test_captioner_sees_outlined_frames_without_the_noun(candidates) -> None:
    captioner = ScriptedChatBackend(lambda request, attempt: '{"caption": "a red ball"}')
    asyncio.run(Reviewer(captioner, FakeChatBackend(), num_frames=3).run(candidates[:2]))
    for request, record in zip(captioner.requests, candidates[:2], strict=True):
        images = [part for part in request.messages[-1].content if isinstance(part, ImagePart)]
        assert len(images) == min(3, len(record.masklet.masks))
        text = " ".join(part for m in request.messages for part in m.content if isinstance(part, str))
        assert record.noun not in re.findall(r"[a-z]+", text.lower())


def test_records_missing_inputs_are_rejected(candidates) -> None:
    broken = [replace(candidates[0], masklet=None), replace(candidates[1], descriptions=None)]
    result = asyncio.run(Reviewer(FakeChatBackend(), FakeChatBackend()).run(broken))
    assert [r.reason for r in result.rejects] == [RejectReason.MISSING_MASK, RejectReason.MALFORMED_SAMPLE]


def _decisions(reviewer: Reviewer, correct: list[ObjectRecord], wrong: list[ObjectRecord]) -> dict[str, float]:
    """Precision / recall of acceptance against the truth (correct masklets should be accepted)."""
    result = asyncio.run(reviewer.run([*correct, *wrong]))
    accepted = {r.object_id for r in result.records}
    truly_good = {r.object_id for r in correct}
    true_positives = len(accepted & truly_good)
    errors = len(accepted - truly_good) + len(truly_good - accepted)
    return {
        "precision": true_positives / len(accepted) if accepted else 0.0,
        "recall": true_positives / len(truly_good),
        "error_rate": errors / (len(correct) + len(wrong)),
    }


def test_reviewer_quality_reflects_the_injected_judge_disagreement(tmp_path) -> None:
    corpus = make_corpus(tmp_path, 16, seed=11, num_frames=8, width=96, height=64, num_objects=3)
    correct = asyncio.run(_candidates([as_clip(item) for item in corpus]))
    wrong = _mislabelled(correct)
    assert len(correct) >= 30

    # The fake captioner reads the outlined shape from pixels, judging from the frame where the object is
    # least hidden among the three it is shown; a shape hidden behind another on every frame can still read
    # as a different one. Colours it reads reliably, so no wrong masklet (another colour) is accepted.
    honest = _decisions(Reviewer(FakeChatBackend(), FakeChatBackend(), num_frames=3), correct, wrong)
    print(f"reviewer vs ground truth, honest judge, n={2 * len(correct)}: {honest}")
    assert honest["precision"] == 1.0 and honest["recall"] >= 0.95

    rate = 0.3
    noisy_judge = FakeChatBackend(FakeChatConfig(disagree_rate=rate, seed=4))
    noisy = _decisions(Reviewer(FakeChatBackend(), noisy_judge, num_frames=3), correct, wrong)
    print(f"reviewer vs ground truth, judge disagree_rate={rate}, n={2 * len(correct)}: {noisy}")
    # Flipped verdicts add about `rate` of all decisions to the honest errors, hurting precision and recall.
    assert abs(noisy["error_rate"] - honest["error_rate"] - rate) <= 0.1
    assert noisy["precision"] < 1.0 and noisy["recall"] < honest["recall"]
    assert noisy["recall"] == pytest.approx(honest["recall"] * (1 - rate), abs=0.15)
