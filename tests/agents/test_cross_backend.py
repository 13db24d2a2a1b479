"""Every agent against the other chat backends: record then strict replay, and a real HTTP OpenAI-compatible stub."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import pytest

from agents.analyzer import Analyzer
from agents.annotator import Annotator
from agents.backends.base import ChatBackend
from agents.backends.factory import build_chat_backend
from agents.backends.fake_chat import parse_nouns
from agents.backends.fake_vision import FakeGrounder, FakeSegmenter
from agents.backends.openai_chat import OpenAIChatBackend
from agents.backends.stub_server import StubOpenAIServer
from agents.qa import QAGenerator
from agents.refiner import Refiner
from agents.reviewer import Reviewer
from agents.segmentor import Segmentor
from agents.short_captions import ShortCaptioner
from engine.config import FakeChatConfig, OpenAIChatConfig, ReplayChatConfig
from engine.errors import RejectReason, ReplayMissError
from engine.ids import stable_hash
from engine.types import Clip, GivenObject, Masklet
from tests.agents.conftest import user_text


async def run_chain(backend: ChatBackend, clips: list[Clip], qa_clips: list[Clip]) -> dict[str, Any]:
    """The five agents in order, plus the short-caption and QA paths, all asking `backend`."""
    segmentor = Segmentor(FakeGrounder(), FakeSegmenter(), num_frames=6, seed=2)
    analyzed = await Analyzer(backend).run(clips)
    annotated = await Annotator(backend, num_frames=3).run(analyzed.records)
    segmented = await segmentor.run(annotated.records)
    reviewed = await Reviewer(backend, backend).run(segmented.records)
    refined = await Refiner(backend).run(reviewed.records)
    short = await ShortCaptioner(backend, segmentor).run(clips)
    qa = await QAGenerator(backend, backend, num_frames=3).run(qa_clips)
    await backend.aclose()
    return {
        "analyzed": analyzed, "annotated": annotated, "segmented": segmented, "reviewed": reviewed,
        "refined": refined, "short": short, "qa": qa,
    }


def _qa_clips(cases) -> list[Clip]:
    out = []
    for case in cases[:2]:
        given = tuple(
            GivenObject(
                name=f"obj{i}", expression=f"the {obj.color} {obj.name}", category=obj.name,
                masklet=Masklet(masks={f: obj.masks[f] for f in (0, 5)}, key_frame=0),
            )
            for i, obj in enumerate(case.synthetic.ground_truth.objects)
        )
        out.append(replace(case.clip, given_objects=given))
    return out


def _content(result: dict[str, Any]) -> dict[str, Any]:
    """What the agents produced, without costs and latencies (which replay does not reproduce)."""
    return {
        "refined": [(r.object_id, r.descriptions, r.review, r.detailed_caption) for r in result["refined"].records],
        "short": [(r.object_id, r.short_caption, r.masklet) for r in result["short"].records],
        "qa": [(r.clip_id, r.qa, [o.descriptions for o in r.objects]) for r in result["qa"].records],
        "rejects": sorted((s, r.item_id, r.reason) for s, v in result.items() for r in v.rejects),
    }


def test_record_then_strict_replay_reproduces_every_agent(cases, tmp_path) -> None:
    clips = [case.clip for case in cases]
    cassette = str(tmp_path / "cassette.jsonl")
    recorder = build_chat_backend(ReplayChatConfig(cassette=cassette, mode="record", inner=FakeChatConfig()))
    recorded = asyncio.run(run_chain(recorder, clips, _qa_clips(cases)))
    assert recorded["refined"].records and recorded["short"].records and recorded["qa"].records

    player = build_chat_backend(ReplayChatConfig(cassette=cassette, mode="strict", inner=FakeChatConfig()))
    replayed = asyncio.run(run_chain(player, clips, _qa_clips(cases)))
    assert _content(replayed) == _content(recorded)
    assert {p.backend for r in replayed["refined"].records for p in r.provenance} >= {"replay"}

    unseen = Clip(clip_id="unseen", video_uri=clips[0].video_uri, caption="a horse jumps over a fence")
    with pytest.raises(ReplayMissError):
        asyncio.run(Analyzer(player).run([unseen]))


# ---------------------------------------------------------------------------- the OpenAI-compatible stub


def _valid_reply(name: str, text: str) -> dict[str, Any]:
    if name == "AnalyzerReply":
        nouns = parse_nouns(re.search(r'Caption of a video clip:\s*"(.*)"', text).group(1))
        return {"subject": nouns[:1], "others": nouns[1:]}
    if name == "AnnotatorReply":
        noun = re.search(r'Object to describe: "(.*?)"', text).group(1)
        return {"appearance": f"A {noun} in plain view.", "motion": f"The {noun} moves along.", "is_static": False}
    if name == "RegionCaptionReply":
        return {"caption": "A shape outlined in red."}
    if name == "JudgeReply":
        return {"same_object": True, "reason": "The outlined shape fits the description."}
    if name == "RefinerReply":
        appearance = re.search(r"Appearance note: (.*)", text).group(1)
        return {"caption": f"{appearance} It moves along."}
    if name == "QAReply":
        names = sorted(set(re.findall(r"<object\d+>", text)))
        return {"items": [
            {"question": f"What is {n}?", "answer": "A shape.", "type": "basic", "objects": [n], "options": []}
            for n in names
        ]}
    raise AssertionError(f"unexpected schema {name}")


def stub_responder(payload: Mapping[str, Any]) -> str:
    """Schema-valid JSON per reply schema; some first answers wrapped in prose or cut, and 'robot' never valid."""
    name = payload["response_format"]["json_schema"]["name"]
    text = user_text(payload)
    if "robot" in text:
        return "Sorry, I can only talk about robots in prose."
    body = json.dumps(_valid_reply(name, text))
    if len(payload["messages"]) > 2:  # the agent's repair re-ask: answer properly this time
        return body
    bucket = int(stable_hash(text), 16) % 4
    if bucket == 0:
        return f"Here is the JSON you asked for:\n```json\n{body[:-1]},}}\n```"  # repairable without a re-ask
    if bucket == 1:
        return "Let me think about the objects first."  # needs the re-ask
    return body


def test_every_agent_through_the_openai_backend_and_a_stub_server(cases) -> None:
    clips = [case.clip for case in cases]
    robot = Clip(clip_id="robot", video_uri=clips[0].video_uri, caption="a robot walks", fps=12.0, num_frames=12)
    with StubOpenAIServer(responder=stub_responder) as server:
        config = OpenAIChatConfig(base_url=server.base_url, model="stub-model", max_retries=1, backoff_base_s=0.01)
        backend = OpenAIChatBackend(config)
        result = asyncio.run(run_chain(backend, [*clips, robot], _qa_clips(cases)))
        repairs = [r for r in server.requests if len(r["messages"]) > 2]
    analyzer_rejects = [(r.item_id, r.reason) for r in result["analyzed"].rejects]
    assert analyzer_rejects == [("robot", RejectReason.INVALID_REPLY)]
    assert len(result["refined"].records) == len(result["analyzed"].records)  # everything else got through
    assert len(result["short"].records) == len(clips) and len(result["qa"].records) == 2
    assert repairs, "some replies needed the one repair re-ask"
    provenance = result["refined"].records[0].provenance
    assert {p.backend for p in provenance if p.agent != "segmentor"} == {"openai"}
    assert all(p.model == "stub-model" and p.prompt_tokens > 0 for p in provenance if p.agent != "segmentor")
