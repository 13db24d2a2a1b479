"""The segmentor's SAM 3 path (point 2 of issue 24): nouns prompt a text-grounding segmenter directly, no grounder;
each object takes one instance (present on its key frame, else the first to appear), never another object's."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import numpy as np
import pytest

from agents.analyzer import Analyzer
from agents.backends.base import PhraseInstance
from agents.backends.fake_chat import FakeChatBackend
from agents.segmentor import Segmentor
from engine.errors import RejectReason
from engine.masks import encode_rle
from engine.types import Masklet, RleMask


class _NoGrounder:
    kind, model = "none", "none"

    def ground(self, **kwargs):
        raise AssertionError("the text path must not ground")


def _square(x: int, height: int, width: int) -> RleMask:
    mask = np.zeros((height, width), bool)
    mask[10:30, x : x + 20] = True
    return RleMask.from_coco(encode_rle(mask))


class _ScriptedPhrases:
    """Two instances of "ball": id 7 on every frame, id 9 entering on `enters`; nothing else."""

    kind, model = "scripted3", "scripted-sam3"

    def __init__(self, *, height: int, width: int, enters: int) -> None:
        self.height, self.width, self.enters, self.calls = height, width, enters, []

    def segment_many(self, **kwargs):
        raise AssertionError("the text path does not prompt boxes")

    def segment_phrases(self, *, video_uri, frame_indices, phrases, frames=None):
        self.calls.append(list(phrases))
        frames_ = sorted(frame_indices)
        def instance(obj_id, first, x, score):
            masks = {f: _square(x, self.height, self.width) for f in frames_ if f >= first}
            return PhraseInstance(phrase="ball", instance_id=obj_id, first_frame=first, score=score,
                                  masklet=Masklet(masks=masks, key_frame=first, box=(float(x), 10.0, x + 20.0, 30.0)))
        late = next(f for f in frames_ if f >= self.enters)
        return {"ball": [instance(7, frames_[0], 5, 0.6), instance(9, late, 60, 0.9)]} if "ball" in phrases else {}


@pytest.fixture(scope="module")
def record(clips):
    return asyncio.run(Analyzer(FakeChatBackend()).run(clips[:1])).records[0]


def _run(records, enters: int, **kwargs):
    clip = records[0].clip
    phrases = _ScriptedPhrases(height=clip.height, width=clip.width, enters=enters)
    segmentor = Segmentor(_NoGrounder(), phrases, num_frames=6, min_mask_area_px=1, **kwargs)
    return asyncio.run(segmentor.run(records)), phrases


def test_nouns_prompt_the_segmenter_and_each_object_takes_its_own_instance(record) -> None:
    balls = [replace(record, object_id="a", noun="Ball"), replace(record, object_id="b", noun="ball"),
             replace(record, object_id="c", noun="ball")]
    result, phrases = _run(balls, enters=6, key_frame="first")
    assert phrases.calls == [["Ball", "ball", "ball"]]  # one call for the clip, no grounder
    first, second = result.records
    start = min(first.masklet.masks)  # the first sampled frame
    assert first.masklet.key_frame == start and first.masklet.box == (5.0, 10.0, 25.0, 30.0)
    # the second ball is not there on its key frame: it takes the instance that enters later, from its entry
    assert min(second.masklet.masks) >= 6 and second.masklet.key_frame == min(second.masklet.masks)
    assert [r.reason for r in result.rejects] == [RejectReason.NO_BOX]  # a third ball: no instance left
    assert first.provenance[-1].backend == "scripted3" and first.provenance[-1].model == "scripted-sam3"


def test_the_instance_present_on_the_key_frame_with_the_best_score_wins(record) -> None:
    result, _ = _run([replace(record, noun="ball")], enters=0, key_frame="middle")
    assert result.records[0].masklet.box[0] == 60.0  # both present: the higher score (id 9)
    unknown, _ = _run([replace(record, noun="giraffe")], enters=0)
    assert [r.reason for r in unknown.rejects] == [RejectReason.NO_BOX]


def test_the_real_tiny_sam3_runs_through_the_segmentor(record, one_torch_thread) -> None:
    from agents.backends.factory import build_segmenter

    segmenter = build_segmenter({"kind": "sam3", "random_weights": True, "image_size": 56})
    result = asyncio.run(Segmentor(_NoGrounder(), segmenter, num_frames=4, min_mask_frames=1).run([record]))
    assert len(result.records) + len(result.rejects) == 1  # random weights: a masklet or a reason, never a crash
    for done in result.records:
        assert done.provenance[-1].backend == "sam3" and done.provenance[-1].model == segmenter.model
