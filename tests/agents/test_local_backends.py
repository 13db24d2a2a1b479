"""Agents against tiny random local transformers models: garbage replies become INVALID_REPLY rejects, no crash.

Random weights never write valid JSON, so every item must end as a reject after exactly one repair re-ask.
In the mixed chain the analyzer asks an OpenAI-compatible stub that answers correctly, so real object records
reach the local vision model, as in a configuration that mixes a server LLM with a local VLM.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import replace
from pathlib import Path

import pytest

from agents.analyzer import Analyzer
from agents.annotator import Annotator
from agents.backends.fake_chat import parse_nouns
from agents.backends.fake_vision import FakeGrounder, FakeSegmenter
from agents.backends.openai_chat import OpenAIChatBackend
from agents.backends.stub_server import StubOpenAIServer
from agents.qa import QAGenerator
from agents.refiner import Refiner
from agents.reviewer import Reviewer
from agents.segmentor import Segmentor
from engine.config import LocalChatConfig, OpenAIChatConfig
from engine.errors import RejectReason
from engine.types import Descriptions, GivenObject
from tests.agents.conftest import user_text

local_chat = pytest.importorskip("agents.backends.local_chat")
tiny_models = pytest.importorskip("agents.backends.tiny_models")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tiny-models")


def _local(directory: Path, modality: str) -> local_chat.LocalChatBackend:
    return local_chat.LocalChatBackend(
        LocalChatConfig(model=str(directory), modality=modality, max_new_tokens=12, batch_size=4)
    )


@pytest.fixture(scope="module")
def text_backend(tiny_dir: Path) -> local_chat.LocalChatBackend:
    return _local(tiny_models.build_tiny_text_model(tiny_dir / "text"), "text")


@pytest.fixture(scope="module")
def vision_backend(tiny_dir: Path) -> local_chat.LocalChatBackend:
    return _local(tiny_models.build_tiny_vision_model(tiny_dir / "vision"), "vision")


def test_text_model_garbage_becomes_invalid_reply_rejects(text_backend, clips) -> None:
    result = asyncio.run(Analyzer(text_backend).run(clips[:2]))
    assert result.records == ()
    expected = [(clip.clip_id, RejectReason.INVALID_REPLY) for clip in clips[:2]]
    assert [(r.item_id, r.reason) for r in result.rejects] == expected
    assert all("after one repair" in r.message for r in result.rejects)


def _analyzer_responder(payload) -> str:
    text = user_text(payload)
    nouns = parse_nouns(re.search(r'Caption of a video clip:\s*"(.*)"', text).group(1))
    return json.dumps({"subject": nouns[:1], "others": nouns[1:]})


def test_mixed_chain_server_analyzer_then_local_models_for_every_agent(text_backend, vision_backend, clips) -> None:
    with StubOpenAIServer(responder=_analyzer_responder) as server:
        analyzer_backend = OpenAIChatBackend(OpenAIChatConfig(base_url=server.base_url, model="stub-model"))
        analyzed = asyncio.run(Analyzer(analyzer_backend).run(clips[:1]))
    assert analyzed.rejects == () and analyzed.records

    annotated = asyncio.run(Annotator(vision_backend, num_frames=1).run(analyzed.records))
    assert annotated.records == ()
    assert {r.reason for r in annotated.rejects} == {RejectReason.INVALID_REPLY}
    assert [r.item_id for r in annotated.rejects] == [r.object_id for r in analyzed.records]

    # The refiner needs no frames: fixed descriptions stand in for the annotator's.
    described = [replace(r, descriptions=Descriptions(appearance="red", motion="rolls")) for r in analyzed.records]
    refined = asyncio.run(Refiner(text_backend).run(described))
    assert refined.records == () and {r.reason for r in refined.rejects} == {RejectReason.INVALID_REPLY}

    segmented = asyncio.run(Segmentor(FakeGrounder(), FakeSegmenter(), num_frames=4).run(described[:1]))
    reviewed = asyncio.run(Reviewer(vision_backend, text_backend).run(segmented.records))
    assert reviewed.records == () and [r.reason for r in reviewed.rejects] == [RejectReason.INVALID_REPLY]

    given = GivenObject(name="o", expression="the shape", masklet=segmented.records[0].masklet)
    qa_clip = replace(clips[0], given_objects=(given,))
    qa = asyncio.run(QAGenerator(vision_backend, text_backend, num_frames=1).run([qa_clip]))
    assert qa.records == () and {r.reason for r in qa.rejects} == {RejectReason.INVALID_REPLY}
