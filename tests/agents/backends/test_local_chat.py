"""LocalChatBackend on tiny random models built offline: chat template, left-padded batches, images, tokens.

Random weights produce garbage text; these tests check the plumbing: one reply per request in order,
batches of `batch_size`, greedy decoding is deterministic, images reach the vision model, tokens are counted.
"""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import numpy as np
import pytest

from agents.backends.base import ChatMessage, ChatRequest, ImagePart
from agents.backends.local_chat import LocalChatBackend
from agents.backends.tiny_models import build_tiny_text_model, build_tiny_vision_model
from engine.config import LocalChatConfig
from engine.errors import ConfigError


@pytest.fixture(scope="module")
def text_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_text_model(tmp_path_factory.mktemp("models") / "tiny-text")


@pytest.fixture(scope="module")
def vision_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_vision_model(tmp_path_factory.mktemp("models") / "tiny-vision")


def _jpeg(seed: int) -> bytes:
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 255, (24, 40, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


def _request(*content, schema=None, max_tokens=None) -> ChatRequest:
    return ChatRequest(
        messages=(
            ChatMessage(role="system", content=("You describe videos.",)),
            ChatMessage(role="user", content=content),
        ),
        json_schema=schema,
        max_tokens=max_tokens,
    )


def test_text_model_answers_a_batch_in_order_and_counts_tokens(text_model: Path) -> None:
    backend = LocalChatBackend(LocalChatConfig(model=str(text_model), batch_size=2, max_new_tokens=6))
    requests = [
        _request("a dog runs"),
        _request("the red ball rolls to the left while a blue box slides to the right"),
        _request("a dog runs", schema={"type": "object", "properties": {"subject": {"type": "string"}}}),
        _request("a dog runs", max_tokens=2),
        _request("a dog runs"),
    ]
    replies = asyncio.run(backend.complete_batch(requests))
    assert len(replies) == 5 and not any(isinstance(r, Exception) for r in replies)
    assert backend.batches_run == 3  # 5 requests in batches of 2
    assert all(r.backend == "local" and r.model == str(text_model) for r in replies)
    # Left padding: the same prompt gives the same greedy reply whether it was padded in its batch or not.
    assert replies[0].text == replies[4].text
    # Longer prompts (and the schema instruction) cost more prompt tokens; max_tokens caps the reply.
    assert replies[1].prompt_tokens > replies[0].prompt_tokens and replies[2].prompt_tokens > replies[0].prompt_tokens
    assert all(1 <= r.completion_tokens <= 6 for r in replies if r.text) and replies[3].completion_tokens <= 2
    assert backend.prompt_tokens == sum(r.prompt_tokens for r in replies)
    assert backend.completion_tokens == sum(r.completion_tokens for r in replies)


def test_text_model_refuses_images_as_a_config_error(text_model: Path) -> None:
    backend = LocalChatBackend(LocalChatConfig(model=str(text_model)))
    with pytest.raises(ConfigError, match="modality"):
        asyncio.run(backend.complete_batch([_request("look", ImagePart(jpeg=_jpeg(0)))]))


def test_vision_model_sees_the_images_of_each_request(vision_model: Path) -> None:
    backend = LocalChatBackend(
        LocalChatConfig(model=str(vision_model), modality="vision", batch_size=4, max_new_tokens=4)
    )
    one, two = _jpeg(1), _jpeg(2)
    requests = [
        _request(ImagePart(jpeg=one), "describe the object"),
        _request(ImagePart(jpeg=one), ImagePart(jpeg=two), "describe the object"),
        _request("describe the object"),
    ]
    replies = asyncio.run(backend.complete_batch(requests))
    assert len(replies) == 3 and not any(isinstance(r, Exception) for r in replies)
    # Each image expands to (32 / 8)^2 = 16 tokens of the prompt.
    assert replies[0].prompt_tokens - replies[2].prompt_tokens == 16
    assert replies[1].prompt_tokens - replies[2].prompt_tokens == 32
    again = asyncio.run(backend.complete(requests[0]))
    assert again.text == replies[0].text


def test_a_directory_without_a_model_is_a_config_error(tmp_path: Path) -> None:
    backend = LocalChatBackend(LocalChatConfig(model=str(tmp_path / "nothing-here")))
    with pytest.raises(ConfigError, match="cannot load"):
        asyncio.run(backend.complete(_request("hello")))
