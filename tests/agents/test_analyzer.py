"""The analyzer: caption nouns become object records with stable ids; clips without nouns are rejected."""

from __future__ import annotations

import asyncio

import pytest

from agents.analyzer import Analyzer
from agents.backends.fake_chat import FakeChatBackend, ScriptedChatBackend
from engine.errors import BackendUnavailableError, RejectReason
from engine.ids import object_id
from engine.types import Clip


def test_nouns_of_synthetic_captions_match_the_drawn_objects(cases) -> None:
    result = asyncio.run(Analyzer(FakeChatBackend()).run([case.clip for case in cases]))
    assert result.rejects == ()
    for case in cases:
        records = [r for r in result.records if r.clip_id == case.clip.clip_id]
        names = list(dict.fromkeys(obj.name for obj in case.synthetic.ground_truth.objects))
        assert [r.noun for r in records] == names
        assert [r.is_subject for r in records] == [True] + [False] * (len(names) - 1)
        assert all(r.object_id == object_id(case.clip.clip_id, r.noun, None) for r in records)
        assert all(r.provenance[0].agent == "analyzer" and r.provenance[0].prompt_version for r in records)


def test_single_subject_mode_keeps_only_the_subject(clips) -> None:
    result = asyncio.run(Analyzer(FakeChatBackend(), single_subject=True).run(clips))
    assert len(result.records) == len(clips)
    assert all(r.is_subject for r in result.records)
    assert result.records[0].provenance[0].prompt_version.startswith("analyzer_single_subject-")


def test_clips_without_nouns_are_rejected() -> None:
    clips = [
        Clip(clip_id="c1", video_uri="x.mp4", caption="   "),
        Clip(clip_id="c2", video_uri="x.mp4", caption="the sky over the sea at night"),
        Clip(clip_id="c3", video_uri="x.mp4", caption="a cat sleeps on a sofa"),
    ]
    result = asyncio.run(Analyzer(FakeChatBackend()).run(clips))
    assert [r.noun for r in result.records] == ["cat", "sofa"]
    assert {(r.item_id, r.reason) for r in result.rejects} == {
        ("c1", RejectReason.NO_NOUNS),
        ("c2", RejectReason.NO_NOUNS),
    }


def test_ids_are_stable_across_runs_and_batches(clips) -> None:
    first = asyncio.run(Analyzer(FakeChatBackend()).run(clips))
    second = asyncio.run(Analyzer(FakeChatBackend(), batch_size=2).run(clips))
    assert [r.object_id for r in first.records] == [r.object_id for r in second.records]


def test_malformed_replies_are_repaired_or_rejected(clips) -> None:
    def script(request, attempt):
        prompt = request.messages[1].content[-1]  # the caption reaches the model only inside the prompt
        if f'"{clips[0].caption}"' in prompt:
            return '{"subject": ["ball"], "others": [' if attempt == 0 else '{"subject": ["ball"], "others": []}'
        if f'"{clips[1].caption}"' in prompt:
            return "no idea"
        return '{"subject": ["kite"], "others": []}'

    result = asyncio.run(Analyzer(ScriptedChatBackend(script)).run(clips[:3]))
    assert {r.clip_id for r in result.records} == {clips[0].clip_id, clips[2].clip_id}
    assert [(r.item_id, r.reason) for r in result.rejects] == [(clips[1].clip_id, RejectReason.INVALID_REPLY)]


def test_unreachable_backend_fails_the_run_instead_of_rejecting(clips) -> None:
    down = ScriptedChatBackend(lambda request, attempt: BackendUnavailableError("connection refused after retries"))
    with pytest.raises(BackendUnavailableError):
        asyncio.run(Analyzer(down).run(clips))
