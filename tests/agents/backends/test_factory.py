"""The backend factory: one explicit match on `kind`, configs or mappings in, ConfigError for anything unknown."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agents.backends.base import ChatBackend, Grounder, Segmenter
from agents.backends.factory import build_chat_backend, build_grounder, build_segmenter
from agents.backends.fake_chat import FakeChatBackend
from agents.backends.fake_vision import FakeGrounder, FakeSegmenter
from agents.backends.openai_chat import OpenAIChatBackend
from agents.backends.replay import ReplayChatBackend
from engine.config import (
    FakeChatConfig,
    FakeGrounderConfig,
    FakeSegmenterConfig,
    OpenAIChatConfig,
    ReplayChatConfig,
)
from engine.errors import ConfigError

REPO = Path(__file__).resolve().parents[3]


def test_chat_kinds_build_their_backends(tmp_path: Path) -> None:
    assert isinstance(build_chat_backend(FakeChatConfig()), FakeChatBackend)
    openai = build_chat_backend(OpenAIChatConfig(model="m", base_url="http://127.0.0.1:1/v1"))
    assert isinstance(openai, OpenAIChatBackend) and openai.model == "m"
    recording = build_chat_backend(
        ReplayChatConfig(cassette=str(tmp_path / "c.jsonl"), mode="record", inner=FakeChatConfig(model="fk"))
    )
    assert isinstance(recording, ReplayChatBackend) and isinstance(recording.inner, FakeChatBackend)
    assert recording.model == "fk"
    strict = build_chat_backend(
        ReplayChatConfig(cassette=str(tmp_path / "c.jsonl"), inner=OpenAIChatConfig(model="served"))
    )
    assert strict.inner is None and strict.model == "served"  # strict replay never builds its inner backend
    for backend in (openai, recording, strict):
        assert isinstance(backend, ChatBackend)


def test_mappings_are_validated_like_config_files() -> None:
    assert isinstance(build_chat_backend({"kind": "fake", "model": "x"}), FakeChatBackend)
    assert isinstance(build_grounder({"kind": "fake"}), FakeGrounder)
    assert isinstance(build_segmenter({"kind": "fake"}), FakeSegmenter)
    assert isinstance(build_grounder(FakeGrounderConfig()), Grounder)
    assert isinstance(build_segmenter(FakeSegmenterConfig()), Segmenter)


@pytest.mark.parametrize(
    ("builder", "config"),
    [
        (build_chat_backend, {"kind": "vllm-magic", "model": "m"}),
        (build_chat_backend, {"kind": "openai"}),  # model is required
        (build_grounder, {"kind": "owlv2"}),
        (build_segmenter, {"kind": "sam4"}),
        (build_segmenter, {"kind": "sam3"}),  # no model named
        (build_segmenter, "sam2"),
    ],
)
def test_unknown_kinds_and_bad_configs_are_config_errors(builder, config) -> None:
    with pytest.raises(ConfigError):
        builder(config)


def test_building_fakes_and_clients_loads_no_heavy_library() -> None:
    code = (
        "import sys\n"
        "from agents.backends.factory import build_chat_backend, build_grounder, build_segmenter\n"
        "build_chat_backend({'kind': 'fake'}); build_grounder({'kind': 'fake'}); build_segmenter({'kind': 'fake'})\n"
        "build_chat_backend({'kind': 'openai', 'model': 'm'})\n"
        "print(sorted(m for m in ('torch', 'transformers', 'sam2', 'openai') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]"
