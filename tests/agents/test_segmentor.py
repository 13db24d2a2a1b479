"""The segmentor: key frame choice, grounding, masklets checked against ground truth, and its reject reasons."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import numpy as np
import pytest

from agents.analyzer import Analyzer
from agents.backends.base import Detection
from agents.backends.fake_chat import FakeChatBackend
from agents.backends.fake_vision import FakeGrounder, FakeSegmenter
from agents.frames import sample_clip_frames
from agents.segmentor import Segmentor
from engine.errors import BackendUnavailableError, ConfigError, RejectReason
from engine.masks import decode_rle, encode_rle
from engine.types import Masklet, ObjectRecord, RleMask


def _records(clips) -> list[ObjectRecord]:
    return list(asyncio.run(Analyzer(FakeChatBackend()).run(clips)).records)


def _segmentor(**kwargs) -> Segmentor:
    return Segmentor(FakeGrounder(), FakeSegmenter(), **{"num_frames": 6, **kwargs})


def test_masklets_match_the_ground_truth_and_keep_ids(cases) -> None:
    records = _records([case.clip for case in cases])
    result = asyncio.run(_segmentor(seed=3).run(records))
    assert result.rejects == ()
    assert [r.object_id for r in result.records] == [r.object_id for r in records]
    for record in result.records:
        case = next(c for c in cases if c.clip.clip_id == record.clip_id)
        truth = next(o for o in case.synthetic.ground_truth.objects if o.name == record.noun)
        masklet = record.masklet
        assert masklet.key_frame in masklet.masks and masklet.key_frame in sample_clip_frames(record.clip, 6)
        for index, mask in masklet.masks.items():
            shown, drawn = decode_rle(mask), decode_rle(truth.masks[index])
            iou = np.logical_and(shown, drawn).sum() / np.logical_or(shown, drawn).sum()
            assert iou > 0.99
        assert record.provenance[-1].agent == "segmentor" and record.provenance[-1].backend == "fake+fake"


def test_random_key_frame_is_reproducible_and_seeded(clips) -> None:
    records = _records(clips)
    first = asyncio.run(_segmentor(seed=1).run(records))
    again = asyncio.run(_segmentor(seed=1).run(records))
    other = asyncio.run(_segmentor(seed=2).run(records))
    keys = [r.masklet.key_frame for r in first.records]
    assert keys == [r.masklet.key_frame for r in again.records]
    assert keys != [r.masklet.key_frame for r in other.records]


@pytest.mark.parametrize(("policy", "position"), [("first", 0), ("middle", 3), (-1, 5), (99, 5)])
def test_fixed_key_frame_policies(clips, policy, position) -> None:
    record = _records(clips[:1])[0]
    result = asyncio.run(_segmentor(key_frame=policy).run([record]))
    sampled = sorted(set(sample_clip_frames(record.clip, 6)))
    assert result.records[0].masklet.key_frame == sampled[position]


def test_unknown_noun_gets_no_box(clips) -> None:
    record = replace(_records(clips[:1])[0], noun="elephant")
    result = asyncio.run(_segmentor().run([record]))
    assert result.records == () and result.rejects[0].reason == RejectReason.NO_BOX


class _ScriptedSegmenter:
    """A segmenter returning masks of a chosen area on a chosen number of frames (or raising)."""

    kind = "scripted"
    model = "scripted-segmenter"

    def __init__(self, *, area: int, frames: int, error: Exception | None = None) -> None:
        self.area, self.frames, self.error = area, frames, error

    def segment(self, *, video_uri, frame_indices, key_frame, box) -> Masklet:
        if self.error is not None:
            raise self.error
        mask = np.zeros((96, 128), dtype=bool)
        mask.flat[: self.area] = True
        empty = RleMask.from_coco(encode_rle(np.zeros((96, 128), dtype=bool)))
        present = RleMask.from_coco(encode_rle(mask))
        indices = sorted(frame_indices)
        masks = {i: present if n < self.frames else empty for n, i in enumerate(indices)}
        return Masklet(masks=masks, key_frame=key_frame)


@pytest.mark.parametrize(
    ("segmenter", "reason"),
    [
        (_ScriptedSegmenter(area=0, frames=6), RejectReason.EMPTY_MASKLET),
        (_ScriptedSegmenter(area=10, frames=6), RejectReason.EMPTY_MASKLET),  # below min_mask_area_px
        (_ScriptedSegmenter(area=500, frames=1), RejectReason.DEGENERATE_MASKLET),
        (_ScriptedSegmenter(area=500, frames=6, error=RuntimeError("CUDA out of memory")), RejectReason.BACKEND_ERROR),
    ],
)
def test_unusable_masklets_are_rejected_with_their_reason(clips, segmenter, reason) -> None:
    records = _records(clips[:2])
    agent = Segmentor(FakeGrounder(), segmenter, num_frames=6, min_mask_area_px=16, min_mask_frames=2)
    result = asyncio.run(agent.run(records))
    assert result.records == ()
    assert [r.reason for r in result.rejects] == [reason] * len(records)
    assert [r.item_id for r in result.rejects] == [r.object_id for r in records]


def test_small_masks_are_dropped_frame_by_frame(clips) -> None:
    record = _records(clips[:1])[0]
    agent = Segmentor(FakeGrounder(), _ScriptedSegmenter(area=500, frames=3), num_frames=6, min_mask_frames=2)
    (segmented,) = asyncio.run(agent.run([record])).records
    assert len(segmented.masklet.masks) == 3


def test_unavailable_backend_fails_the_run(clips) -> None:
    class DownGrounder:
        kind, model = "down", "down"

        def ground(self, **kwargs) -> Detection | None:
            raise BackendUnavailableError("grounding server unreachable")

    with pytest.raises(BackendUnavailableError):
        asyncio.run(Segmentor(DownGrounder(), FakeSegmenter()).run(_records(clips[:1])))


def test_bad_settings_fail_fast() -> None:
    with pytest.raises(ConfigError):
        Segmentor(FakeGrounder(), FakeSegmenter(), key_frame="last")
    with pytest.raises(ConfigError):
        Segmentor(FakeGrounder(), FakeSegmenter(), num_frames=0)
