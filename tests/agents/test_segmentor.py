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

    def segment_many(self, *, video_uri, frame_indices, prompts, frames=None) -> list[Masklet]:
        return [self.segment(video_uri=video_uri, frame_indices=frame_indices, key_frame=p.key_frame, box=p.box)
                for p in prompts]


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


class _CountingSegmenter(FakeSegmenter):
    """The fake segmenter, recording each segment_many call's prompts and whether frames were passed in."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, int, bool]] = []

    def segment_many(self, *, video_uri, frame_indices, prompts, frames=None) -> list[Masklet]:
        self.calls.append((video_uri, len(prompts), frames is not None and set(frame_indices) <= set(frames)))
        return super().segment_many(video_uri=video_uri, frame_indices=frame_indices, prompts=prompts, frames=frames)


def test_objects_of_a_clip_are_segmented_together_on_one_frame_read(cases, monkeypatch) -> None:
    import agents.frames

    reads: list[str] = []
    real_read = agents.frames.read_frames
    monkeypatch.setattr(agents.frames, "read_frames", lambda uri, wanted: reads.append(uri) or real_read(uri, wanted))
    multi = [case.clip for case in cases if len(case.synthetic.ground_truth.objects) > 1][:2]
    records = _records(multi)
    interleaved = records[::2] + records[1::2]  # a clip's objects need not be adjacent
    segmenter = _CountingSegmenter()
    agent = Segmentor(FakeGrounder(), segmenter, num_frames=6, seed=3)
    result = asyncio.run(agent.run(interleaved))
    assert [r.object_id for r in result.records] == [r.object_id for r in interleaved]  # input order kept
    assert sorted(reads) == sorted(clip.video_uri for clip in multi)  # one frame read per clip
    assert sorted(segmenter.calls) == sorted(
        (clip.video_uri, sum(r.clip_id == clip.clip_id for r in records), True) for clip in multi
    )
    assert agent.stats.clips == 2 and agent.stats.frame_reads == 2 and agent.stats.objects == len(records)
    assert segmenter.stats.calls == 2 and segmenter.stats.objects == len(records)
    alone = [asyncio.run(_segmentor(seed=3).run([record])).records[0] for record in interleaved]
    assert [r.masklet for r in result.records] == [r.masklet for r in alone]


def test_a_clip_keeps_each_objects_own_reject_reason(cases) -> None:
    case = next(c for c in cases if len(c.synthetic.ground_truth.objects) > 1)
    records = _records([case.clip])
    mixed = [replace(records[0], noun="elephant"), *records[1:]]  # no box for the first object
    broken = Segmentor(FakeGrounder(), _ScriptedSegmenter(area=500, frames=6, error=RuntimeError("CUDA error")),
                       num_frames=6)
    result = asyncio.run(broken.run(mixed))
    assert result.records == ()
    reasons = [RejectReason.NO_BOX] + [RejectReason.BACKEND_ERROR] * (len(mixed) - 1)
    assert [r.reason for r in result.rejects] == reasons
    assert [r.item_id for r in result.rejects] == [r.object_id for r in mixed]
    fine = asyncio.run(_segmentor().run(mixed))
    assert [r.object_id for r in fine.records] == [r.object_id for r in mixed[1:]]
    assert [r.reason for r in fine.rejects] == [RejectReason.NO_BOX]


def test_a_clip_with_three_objects_reads_and_encodes_its_frames_once(tmp_path, monkeypatch, one_torch_thread) -> None:
    """Fault: every object used to read the clip twice and run the image encoder on every frame again. Through
    the transformers SAM 2 (tiny random weights, 128 px): one frame read and every sampled frame encoded once for
    the clip, and each object's masks are those it gets when it is segmented alone (each tracked from its own key
    frame)."""
    import agents.backends.sam2_segmenter as sam2_module
    import agents.frames
    import agents.segmentor as segmentor_module
    import engine.video
    from agents.backends.sam2_segmenter import Sam2Segmenter
    from engine.config import Sam2Config
    from engine.synthetic import make_clip
    from engine.types import Clip

    synthetic = make_clip(tmp_path / "three.mp4", seed=11, num_frames=12, width=128, height=96, num_objects=3)
    truth = synthetic.ground_truth
    clip = Clip(clip_id="clip-with-three-objects", video_uri=str(synthetic.path), caption=truth.caption,
                fps=truth.fps, width=truth.width, height=truth.height, num_frames=truth.num_frames)
    records = _records([clip])
    assert len(records) == 3
    counts = {"reads": 0}
    real_read = engine.video.read_frames

    def counting_read(*args, **kwargs):
        counts["reads"] += 1
        return real_read(*args, **kwargs)

    for module in (engine.video, agents.frames, segmentor_module, sam2_module):
        monkeypatch.setattr(module, "read_frames", counting_read, raising=False)
    segmenter = Sam2Segmenter(Sam2Config(device="cpu", random_weights=True, encoder_batch=4))

    def segmentor(seed: int) -> Segmentor:
        return Segmentor(FakeGrounder(), segmenter, num_frames=6, seed=seed, min_mask_area_px=0, min_mask_frames=1)

    sampled = sorted(set(sample_clip_frames(clip, 6)))
    def distinct_keys(seed: int) -> bool:
        return len({segmentor(seed).choose_key_frame(r.object_id, sampled) for r in records}) == 3

    seed = next(n for n in range(100) if distinct_keys(n))  # every object tracked from a key frame of its own
    together = asyncio.run(segmentor(seed).run(records))
    stats = segmenter.stats
    assert counts == {"reads": 1} and stats.calls == 1 and stats.frame_reads == 0
    assert stats.frames_encoded == len(sampled) and stats.encoder_batches == 2  # 6 frames in batches of 4
    assert together.rejects == () and len({r.masklet.key_frame for r in together.records}) == 3
    provenance = together.records[0].provenance[-1]  # what the data report shows: the segmenter by kind and model
    assert provenance.backend == "fake+sam2" and provenance.model == "fake-grounder+sam2-tiny-random-128px"
    alone = [asyncio.run(segmentor(seed).run([record])) for record in records]
    assert [r.masklet for r in together.records] == [result.records[0].masklet for result in alone]
    assert counts == {"reads": 4}
