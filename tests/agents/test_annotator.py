"""The annotator: frames of each clip decoded once, shown as JPEG images; static objects and bad videos rejected."""

from __future__ import annotations

import asyncio

import agents.frames
from agents.analyzer import Analyzer
from agents.annotator import Annotator
from agents.backends.base import ImagePart
from agents.backends.fake_chat import FakeChatBackend, ScriptedChatBackend
from engine.errors import RejectReason
from engine.types import Clip, ObjectRecord


def _records(clips) -> list[ObjectRecord]:
    return list(asyncio.run(Analyzer(FakeChatBackend()).run(clips)).records)


def test_descriptions_follow_the_ground_truth(cases) -> None:
    records = _records([case.clip for case in cases])
    result = asyncio.run(Annotator(FakeChatBackend(), num_frames=4).run(records))
    moving = [r for r in records if not _truth(cases, r).is_static]
    assert [r.object_id for r in result.records] == [r.object_id for r in moving]
    for record in result.records:
        truth = _truth(cases, record)
        assert f"{truth.color} {record.noun}" in record.descriptions.appearance
        assert record.noun in record.descriptions.motion and not record.descriptions.is_static
        assert [p.agent for p in record.provenance] == ["analyzer", "annotator"]


def test_static_objects_are_rejected(static_case) -> None:
    records = _records([static_case.clip])
    result = asyncio.run(Annotator(FakeChatBackend(), num_frames=4).run(records))
    static_nouns = {obj.name for obj in static_case.synthetic.ground_truth.objects if obj.is_static}
    rejected = {r.item_id: r for r in result.rejects}
    for record in records:
        if record.noun in static_nouns:
            assert rejected[record.object_id].reason == RejectReason.STATIC_OBJECT
    assert result.rejects and len(result.records) + len(result.rejects) == len(records)


def test_each_clip_is_decoded_once_and_sends_num_frames_jpegs(cases, monkeypatch) -> None:
    reads: list[str] = []
    real_read = agents.frames.read_frames

    def counting_read(path, indices):
        reads.append(str(path))
        return real_read(path, indices)

    monkeypatch.setattr(agents.frames, "read_frames", counting_read)
    records = _records([case.clip for case in cases])
    backend = ScriptedChatBackend(lambda r, a: '{"appearance": "a thing", "motion": "it moves", "is_static": false}')
    result = asyncio.run(Annotator(backend, num_frames=5).run(records))
    assert len(result.records) == len(records)
    assert sorted(reads) == sorted({record.clip.video_uri for record in records})
    for request in backend.requests:
        images = [part for part in request.messages[-1].content if isinstance(part, ImagePart)]
        assert len(images) == 5 and all(image.jpeg[:2] == b"\xff\xd8" for image in images)


def test_bad_video_rejects_its_objects_and_the_rest_goes_on(cases, tmp_path) -> None:
    good = _records([cases[0].clip])
    broken_file = tmp_path / "broken.mp4"
    broken_file.write_text("not a video")
    bad_clips = [
        Clip(clip_id="missing", video_uri=str(tmp_path / "missing.mp4"), caption="a dog runs"),
        Clip(clip_id="broken", video_uri=str(broken_file), caption="a cat sits"),
    ]
    bad = _records(bad_clips)
    result = asyncio.run(Annotator(FakeChatBackend(), num_frames=4).run([*bad, *good]))
    assert {r.clip_id: r.reason for r in result.rejects if r.clip_id in ("missing", "broken")} == {
        "missing": RejectReason.VIDEO_NOT_FOUND,
        "broken": RejectReason.BAD_VIDEO,
    }
    assert len(result.records) == len([r for r in good if not _truth(cases, r).is_static])


def _truth(cases, record):
    case = next(case for case in cases if case.clip.clip_id == record.clip_id)
    return next(obj for obj in case.synthetic.ground_truth.objects if obj.name == record.noun)
