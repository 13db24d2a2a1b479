"""The two narrow protocols every backend implements, and the request/reply records they exchange.

`ChatBackend`: text + images in, text (optionally JSON matching a schema) out; async, batched.
`Grounder` / `Segmenter`: a noun -> a box on one frame; a box on a key frame -> a masklet through the clip.
Concrete backends (fake, replay, OpenAI-compatible, local transformers, Grounding DINO, SAM 2) live in
sibling modules and are built by `agents.backends.factory` from the config's `kind`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from engine.types import Masklet


@dataclass(frozen=True, slots=True, kw_only=True)
class ImagePart:
    """One image in a message, already JPEG-encoded (the OpenAI API takes it as a data URL)."""

    jpeg: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class ChatMessage:
    role: Literal["system", "user", "assistant"]
    content: tuple[str | ImagePart, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class ChatRequest:
    """One chat completion. `task` names what is asked (which agent, which step); real backends ignore it,
    and fakes answer only from the messages (prompt text and images), routed by it. `json_schema` asks for
    structured output matching that JSON schema."""

    messages: tuple[ChatMessage, ...]
    task: str = ""
    json_schema: Mapping[str, Any] | None = None
    schema_name: str = "reply"
    temperature: float | None = None
    max_tokens: int | None = None
    top_p: float | None = None  # None: the server's default


@dataclass(frozen=True, slots=True, kw_only=True)
class ChatReply:
    text: str
    model: str
    backend: str
    latency_s: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0


@runtime_checkable
class ChatBackend(Protocol):
    """Answers chat requests. `complete_batch` returns one reply or one exception per request, in order;
    only `BackendUnavailableError` / `ConfigError` are raised (they fail the run, not the item)."""

    kind: str
    model: str

    async def complete(self, request: ChatRequest) -> ChatReply: ...

    async def complete_batch(self, requests: Sequence[ChatRequest]) -> list[ChatReply | Exception]: ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class Detection:
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels of the frame
    score: float
    label: str


@runtime_checkable
class Grounder(Protocol):
    """Open-vocabulary detection of `noun` on one frame (`frame_index` is absolute in `video_uri`)."""

    kind: str
    model: str

    def ground(self, *, video_uri: str, frame_index: int, frame: np.ndarray, noun: str) -> Detection | None: ...


@runtime_checkable
class Segmenter(Protocol):
    """A box on `key_frame` -> masks on every frame of `frame_indices` (absolute), propagated both ways."""

    kind: str
    model: str

    def segment(
        self,
        *,
        video_uri: str,
        frame_indices: Sequence[int],
        key_frame: int,
        box: tuple[float, float, float, float],
    ) -> Masklet: ...
