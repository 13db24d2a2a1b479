"""The two narrow protocols every backend implements, and the request/reply records they exchange.

`ChatBackend`: text + images in, text (optionally JSON matching a schema) out; async, batched.
`Grounder` / `Segmenter`: a noun -> a box on one frame; a box or points on a key frame -> a masklet through the
clip (`segment_many`: all objects of one clip at once, one prompt each, on frames read once). `PhraseSegmenter`
(SAM 3): noun phrases -> every instance of each, tracked with stable ids.
Concrete backends (fake, replay, OpenAI-compatible, local transformers, Grounding DINO, SAM 2, SAM 3) live in
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


@dataclass(frozen=True, slots=True, kw_only=True)
class SegmentPrompt:
    """One object of a `Segmenter.segment_many` call, on its key frame (absolute index): a box (pixels, x0 y0 x1 y1),
    points (pixels, `(x, y, label)` with label 1 on the object and 0 off it), or both."""

    key_frame: int
    box: tuple[float, float, float, float] | None = None
    points: tuple[tuple[float, float, int], ...] = ()

    def __post_init__(self) -> None:
        if self.box is None and not self.points:
            raise ValueError("a segment prompt needs a box or at least one point")
        if any(label not in (0, 1) for _, _, label in self.points):
            raise ValueError("point labels are 1 (on the object) or 0 (off it)")


@dataclass(frozen=True, slots=True, kw_only=True)
class SegmenterStats:
    """What a segmenter has done so far (`segmenter.stats`), for benchmarks: calls, objects, frames, model states."""

    calls: int = 0  # segment / segment_many / segment_phrases calls
    objects: int = 0  # prompts (objects) segmented
    frame_reads: int = 0  # times the segmenter read video frames itself (0 when the caller passed them in)
    frames_read: int = 0  # frames those reads returned
    states_started: int = 0  # model inference sessions started (SAM 2: one per object, sharing the frame features)
    propagations: int = 0  # runs through the clip (forward then backward from a key frame)
    frames_encoded: int = 0  # frames through the image encoder (once per frame and call, whatever the objects)
    encoder_batches: int = 0  # image-encoder batches those frames took


def normalize_phrase(text: str) -> str:
    """A noun phrase as text-prompted segmenters key it: lower case, single spaces."""
    return " ".join(text.lower().split())


@dataclass(frozen=True, slots=True, kw_only=True)
class PhraseInstance:
    """One instance a text-prompted segmenter found for a phrase: its stable id within the call, its masks from the
    frame it was first found on (absolute index -> mask), and its detection score."""

    phrase: str
    instance_id: int
    masklet: Masklet
    first_frame: int
    score: float


@runtime_checkable
class Segmenter(Protocol):
    """A box on `key_frame` -> masks on every frame of `frame_indices` (absolute), propagated both ways.

    This is the interface other parts (the segmentor, `infer --box`, the web app) call: `segment_many(video_uri=...,
    frame_indices=[absolute frames], prompts=[SegmentPrompt(key_frame=k, box=(x0, y0, x1, y1), points=((x, y,
    1),))], frames={index: RGB uint8 array})` -> one `Masklet` per prompt (`masklet.masks`: absolute frame ->
    COCO RLE mask at the video's size). Build one with `agents.backends.factory.build_segmenter(config)`.

    `segment_many` does the same for several objects of one video at once and returns one masklet per prompt,
    in order, each as `segment` would return it for that object alone. `frames` (absolute index -> RGB uint8
    frame) are frames the caller has already decoded; the segmenter decodes only those it needs and lacks.
    An exception fails the whole call (every prompt of it).
    """

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

    def segment_many(
        self,
        *,
        video_uri: str,
        frame_indices: Sequence[int],
        prompts: Sequence[SegmentPrompt],
        frames: Mapping[int, np.ndarray] | None = None,
    ) -> list[Masklet]: ...


@runtime_checkable
class PhraseSegmenter(Protocol):
    """A segmenter that finds objects by text itself (SAM 3): every instance of each phrase on the frames of
    `frame_indices`, tracked with a stable id, including instances that appear after the first frame."""

    kind: str
    model: str

    def segment_phrases(
        self,
        *,
        video_uri: str,
        frame_indices: Sequence[int],
        phrases: Sequence[str],
        frames: Mapping[int, np.ndarray] | None = None,
    ) -> dict[str, list[PhraseInstance]]: ...
