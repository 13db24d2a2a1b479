"""Point 3 of issue 24: objects that enter later (re-detection, linking, masklet ends, cuts) on the grounder + box
segmenter path, with the fake grounder detecting from pixels and the fake segmenter returning the clip's truth."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import numpy as np
import pytest

from agents.analyzer import Analyzer
from agents.backends.base import Detection, SegmentPrompt
from agents.backends.fake_chat import FakeChatBackend
from agents.backends.fake_vision import FakeGrounder, FakeSegmenter
from agents.segmentor import Segmentor, find_cuts, redetect_frames
from engine.errors import RejectReason
from engine.masks import encode_rle
from engine.metrics import BOUND_TH
from engine.synthetic import make_clip
from engine.types import Masklet, RleMask
from engine.video import read_frames
from storage.truth import SidecarTruth
from tests.agents.conftest import as_clip

FRAMES = 16


@pytest.fixture(scope="module")
def entering(tmp_path_factory: pytest.TempPathFactory):
    """A clip whose second object enters on frame 8, and the analyzer's records of it (one per object)."""
    synthetic = make_clip(tmp_path_factory.mktemp("enter") / "enter.mp4", seed=3, num_frames=FRAMES, width=128,
                          height=96, num_objects=2, enters_at=8)
    records = asyncio.run(Analyzer(FakeChatBackend()).run([as_clip(synthetic)])).records
    assert sorted(r.noun for r in records) == sorted(o.name for o in synthetic.ground_truth.objects)
    return synthetic, list(records)


def _audit(records, synthetic):
    """The mask audit's scores (J, F, found) of the clip's truth objects, by name."""
    from flows.audit.masks import _score_clip

    video = SidecarTruth().find(str(synthetic.path))
    scores, _, _ = _score_clip("segment", "shard-000000", records, video, FRAMES, 0.5, BOUND_TH)
    return {s.truth_name: s for s in scores}


def test_an_object_that_enters_mid_clip_gets_a_masklet_from_its_entry(entering) -> None:
    synthetic, records = entering
    late = synthetic.ground_truth.objects[-1]
    segmentor = Segmentor(FakeGrounder(), FakeSegmenter(), num_frames=FRAMES, key_frame="first", redetect_every=4)
    result = asyncio.run(segmentor.run(records))
    assert result.rejects == ()
    masklet = next(r for r in result.records if r.noun == late.name).masklet
    assert min(masklet.masks) == 8 and masklet.key_frame == 8  # starts where the object enters
    scores = _audit(result.records, synthetic)
    assert scores[late.name].found and (scores[late.name].J + scores[late.name].F) / 2 > 0.95

    paper = Segmentor(FakeGrounder(), FakeSegmenter(), num_frames=FRAMES, key_frame="first", redetect_every=0)
    before = asyncio.run(paper.run(records))  # key frame only: the object is not there, nothing is found
    assert [r.reason for r in before.rejects] == [RejectReason.NO_BOX]
    missed = _audit(before.records, synthetic)[late.name]
    assert missed.object_id is None and missed.J == 0.5  # J = 0 on the 8 frames it is there, 1 on the empty ones


def test_detections_of_a_tracked_object_link_to_its_masklet_without_a_new_prompt(entering) -> None:
    synthetic, records = entering
    segmentor = Segmentor(FakeGrounder(), FakeSegmenter(), num_frames=FRAMES, key_frame="first", redetect_every=4)
    asyncio.run(segmentor.run(records))
    stats = segmentor.stats
    # the subject is found on frames 0, 4, 8, 12 and the late object on 8 and 12: two first detections, four links
    assert stats.detections == 6 and stats.linked == 4 and stats.new_masklets == 0 and stats.segmenter_calls == 1


class _ScriptedGrounder:
    kind, model = "scripted", "scripted-grounder"

    def __init__(self, boxes: dict[int, tuple[float, float, float, float]]) -> None:
        self.boxes = boxes

    def ground(self, *, video_uri, frame_index, frame, noun) -> Detection | None:
        box = self.boxes.get(frame_index)
        return None if box is None else Detection(box=box, score=0.9, label=noun)


class _ScriptedSegmenter:
    """A square of side 20 at the prompt box's corner on every frame, gone (empty) from frame `gone` on."""

    kind, model = "scripted", "scripted-segmenter"

    def __init__(self, *, height: int, width: int, gone: int | None) -> None:
        self.height, self.width, self.gone, self.prompts = height, width, gone, []

    def segment_many(self, *, video_uri, frame_indices, prompts, frames=None) -> list[Masklet]:
        self.prompts.extend(prompts)
        return [self._one(frame_indices, prompt) for prompt in prompts]

    def _one(self, frame_indices, prompt: SegmentPrompt) -> Masklet:
        x, y = int(prompt.box[0]), int(prompt.box[1])
        masks = {}
        for index in frame_indices:
            mask = np.zeros((self.height, self.width), bool)
            if self.gone is None or index < self.gone:
                mask[y : y + 20, x : x + 20] = True
            masks[index] = RleMask.from_coco(encode_rle(mask))
        return Masklet(masks=masks, key_frame=prompt.key_frame, box=prompt.box)


def _one_record(entering):
    _, records = entering
    return [replace(records[0], noun="thing")]


def test_a_masklet_ends_where_its_object_leaves_but_not_where_the_detector_misses(entering) -> None:
    records = _one_record(entering)
    clip = records[0].clip
    box = (10.0, 10.0, 30.0, 30.0)
    left = Segmentor(_ScriptedGrounder({0: box, 4: box}), _ScriptedSegmenter(height=clip.height, width=clip.width,
                     gone=None), num_frames=FRAMES, key_frame="first", redetect_every=4, min_mask_area_px=1)
    # not found on frame 8 while its mask is still there: a missed detection, the masklet goes on
    missed = asyncio.run(left.run(records)).records[0].masklet
    assert sorted(missed.masks) == list(range(FRAMES))
    gone = Segmentor(_ScriptedGrounder({0: box, 4: box}), _ScriptedSegmenter(height=clip.height, width=clip.width,
                     gone=7), num_frames=FRAMES, key_frame="first", redetect_every=4, min_mask_area_px=1)
    ended = asyncio.run(gone.run(records)).records[0].masklet
    assert sorted(ended.masks) == list(range(7))


def test_a_detection_no_masklet_explains_starts_a_new_masklet(entering) -> None:
    records = _one_record(entering)
    clip = records[0].clip
    segmenter = _ScriptedSegmenter(height=clip.height, width=clip.width, gone=None)
    grounder = _ScriptedGrounder({0: (10.0, 10.0, 30.0, 30.0), 8: (80.0, 50.0, 100.0, 70.0)})  # elsewhere on frame 8
    segmentor = Segmentor(grounder, segmenter, num_frames=FRAMES, key_frame="first", redetect_every=4)
    [record] = asyncio.run(segmentor.run(records)).records
    assert segmentor.stats.new_masklets == 1 and segmentor.stats.segmenter_calls == 2
    assert [p.key_frame for p in segmenter.prompts] == [0, 8]
    assert record.masklet.key_frame == 0 and record.masklet.box == (10.0, 10.0, 30.0, 30.0)  # the key-frame object


def test_cuts_are_found_and_grounded_again(tmp_path) -> None:
    first = make_clip(tmp_path / "a.mp4", seed=1, num_frames=6, width=64, height=48, num_objects=1)
    second = make_clip(tmp_path / "b.mp4", seed=2, num_frames=6, width=64, height=48, num_objects=1)
    pixels = list(read_frames(str(first.path), list(range(6)))) + list(read_frames(str(second.path), list(range(6))))
    frames = {i: np.clip(frame.astype(int) + (120 if i >= 6 else 0), 0, 255).astype(np.uint8)
              for i, frame in enumerate(pixels)}  # the second shot is much brighter
    assert find_cuts(list(range(12)), frames, 48.0) == [6]
    assert find_cuts(list(range(6)), frames, 48.0) == []
    assert redetect_frames(list(range(12)), 5, [6]) == [0, 5, 6, 10]
    assert redetect_frames(list(range(12)), 0, []) == []


def test_a_masklet_stops_at_a_cut_unless_its_object_is_found_after_it(entering, monkeypatch) -> None:
    import agents.segmentor as segmentor_module

    monkeypatch.setattr(segmentor_module, "find_cuts", lambda indices, frames, threshold: [8])  # a cut before frame 8
    records = _one_record(entering)
    clip = records[0].clip
    box = (10.0, 10.0, 30.0, 30.0)

    def run(found_on):
        segmenter = _ScriptedSegmenter(height=clip.height, width=clip.width, gone=None)  # its mask never vanishes
        segmentor = Segmentor(_ScriptedGrounder(dict.fromkeys(found_on, box)), segmenter, num_frames=FRAMES,
                              key_frame="first", redetect_every=0, min_mask_area_px=1)
        return asyncio.run(segmentor.run(records)).records[0].masklet, segmentor.stats

    before_only, stats = run([0])
    assert sorted(before_only.masks) == list(range(8)) and stats.cuts == 1  # not found after the cut: it stops
    both, stats = run([0, 8])
    assert sorted(both.masks) == list(range(FRAMES)) and stats.linked == 1  # found again after it: one masklet
