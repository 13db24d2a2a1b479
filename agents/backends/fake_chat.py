"""A FAKE chat backend: deterministic, schema-valid replies computed from the request, with no model at all.

It reads `request.task` and `request.context` (which real backends ignore) to answer what each agent asks:
`analyze` parses nouns from the caption with a small vocabulary and "a/the <adjective>* <noun>" patterns;
`annotate`, `region_caption`, `judge`, `refine` and `qa` build plain sentences from the noun and from hints.
When the video is a synthetic clip with a ground-truth sidecar (`engine.synthetic`), the fake uses it the
way a perfect model would use its eyes: colours, whether an object moves and where, and which object a
mask actually covers. `disagree_rate` makes the judge flip its verdict on purpose, chosen by a hash of the
request so it is reproducible (reviewer quality tests). Any other task gets the smallest reply that
matches the request's JSON schema. It says what it is: `kind == "fake"`, model `fake-chat` by default.
"""

from __future__ import annotations

import asyncio
import functools
import json
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from agents.backends.base import ChatReply, ChatRequest, ImagePart
from engine.config import FakeChatConfig
from engine.errors import BackendUnavailableError, ConfigError
from engine.ids import stable_hash


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


NOUN_VOCABULARY = _words(
    """
    man woman person boy girl child baby people player rider surfer skier skateboarder dancer worker
    dog cat horse bird fish cow sheep goat pig duck chicken elephant giraffe zebra bear lion tiger monkey
    deer rabbit mouse squirrel snake turtle frog butterfly insect animal
    car truck bus bicycle bike motorcycle scooter boat ship canoe kayak train tram airplane plane helicopter
    vehicle van taxi tractor
    ball box star cube circle square triangle ring disc disk block toy kite frisbee balloon drone robot
    cup bottle glass bowl plate phone laptop book bag backpack umbrella hat chair table sofa door window
    tree flower plant guitar piano drum camera skateboard surfboard ski racket bat bench sign lamp
    """
)
DETERMINERS = _words("a an the another two three four some his her their its one several")
ADJECTIVES = _words(
    """
    red orange yellow green blue purple pink brown black white gray grey silver golden gold dark light
    bright pale small large big little tiny huge tall short long young old striped spotted checkered
    wooden metal plastic shiny fluffy furry round square wet dry happy smiling running moving
    """
)
# Words that follow an article but do not name an object someone could outline.
NOT_OBJECTS = _words(
    """
    street road field sky water sea ocean river lake beach grass ground floor wall background scene video
    clip camera view day night time way room city park forest mountain snow rain sun air distance side
    left right middle center centre top bottom front back lot group couple pair bit game match race frame
    """
)
_WORD = re.compile(r"[a-z]+")
_PROMPT_CHARS_PER_TOKEN = 4
_TOKENS_PER_IMAGE = 64


def parse_nouns(caption: str) -> list[str]:
    """Nouns of a caption in order of appearance (vocabulary words and "a/the <adj>* <noun>" heads), once each."""
    words = _WORD.findall(caption.lower())
    nouns: list[str] = []
    index = 0
    while index < len(words):
        word = _singular(words[index])
        if word in NOUN_VOCABULARY:
            _add(nouns, word)
        elif words[index] in DETERMINERS:
            after = index + 1
            while after < len(words) and words[after] in ADJECTIVES:
                after += 1
            if after < len(words):
                head = _singular(words[after])
                if head not in NOT_OBJECTS and head not in DETERMINERS and len(head) > 2:
                    _add(nouns, head)
                index = after
        index += 1
    return nouns


class FakeChatBackend:
    """Deterministic fake of a chat model (see the module docstring); implements `ChatBackend`."""

    kind = "fake"

    def __init__(self, config: FakeChatConfig | None = None) -> None:
        self.config = config or FakeChatConfig()
        if not 0.0 <= self.config.disagree_rate <= 1.0:
            raise ConfigError(f"disagree_rate must be in [0, 1], got {self.config.disagree_rate}")
        self.model = self.config.model
        self.requests_served = 0

    async def complete(self, request: ChatRequest) -> ChatReply:
        started = time.perf_counter()
        if self.config.latency_s > 0:
            await asyncio.sleep(self.config.latency_s)
        payload = self._answer(request)
        text = json.dumps(payload, ensure_ascii=False)
        self.requests_served += 1
        return ChatReply(
            text=text,
            model=self.model,
            backend=self.kind,
            latency_s=time.perf_counter() - started,
            prompt_tokens=_prompt_tokens(request),
            completion_tokens=len(text) // _PROMPT_CHARS_PER_TOKEN + 1,
        )

    async def complete_batch(self, requests: Sequence[ChatRequest]) -> list[ChatReply | Exception]:
        replies = await asyncio.gather(*(self.complete(request) for request in requests), return_exceptions=True)
        for reply in replies:
            if isinstance(reply, BackendUnavailableError):
                raise reply
        return list(replies)

    async def aclose(self) -> None:
        return None

    # ------------------------------------------------------------------ answers per task

    def _answer(self, request: ChatRequest) -> Any:
        context = request.context
        handlers = {
            "analyze": self._analyze,
            "annotate": self._annotate,
            "region_caption": self._region_caption,
            "judge": self._judge,
            "refine": self._refine,
            "qa": self._qa,
        }
        handler = handlers.get(request.task)
        if handler is None:
            return minimal_instance(request.json_schema or {"type": "object", "properties": {}})
        return handler(context, request)

    def _analyze(self, context: Mapping[str, Any], request: ChatRequest) -> dict[str, Any]:
        caption = str(context.get("caption") or _last_user_text(request))
        nouns = parse_nouns(caption)
        if context.get("single_subject"):
            return {"subject": nouns[:1], "others": []}
        return {"subject": nouns[:1], "others": nouns[1:]}

    def _annotate(self, context: Mapping[str, Any], request: ChatRequest) -> dict[str, Any]:
        noun = str(context.get("noun") or "object")
        truth = _truth_object(context.get("video_uri"), noun)
        color = context.get("color") or (truth.color if truth is not None else "")
        is_static = bool(context.get("is_static", truth.is_static if truth is not None else False))
        described = f"{color} {noun}".strip()
        appearance = f"A {described} with a clear outline, fully visible in the frames."
        if is_static:
            motion = f"The {noun} stays still in the same place throughout the clip."
        else:
            motion = f"The {noun} moves {_direction(truth, context.get('frame_indices'))} across the frame."
        return {"appearance": appearance, "motion": motion, "is_static": is_static}

    def _region_caption(self, context: Mapping[str, Any], request: ChatRequest) -> dict[str, Any]:
        seen = _object_under_mask(context.get("video_uri"), context.get("key_frame"), context.get("mask"))
        if seen is _NO_TRUTH:
            noun = str(context.get("noun_hint") or "object")
            return {"caption": f"A {noun} outlined in the frame."}
        if seen is None:
            return {"caption": "A patch of background with no distinct object inside the outline."}
        return {"caption": f"A {seen.color} {seen.name} outlined in the frame.".replace("  ", " ")}

    def _judge(self, context: Mapping[str, Any], request: ChatRequest) -> dict[str, Any]:
        noun = normalize(str(context.get("noun", "")))
        region_words = {_singular(word) for word in _WORD.findall(str(context.get("region_caption", "")).lower())}
        same = bool(noun) and all(_singular(part) in region_words for part in noun.split())
        reason = (
            f"Both descriptions name a {noun}." if same else f"The region shows something other than a {noun}."
        )
        key = stable_hash("judge", self.config.seed, context.get("item_id", ""), noun, context.get("region_caption"))
        if _unit_interval(key) < self.config.disagree_rate:
            same = not same
            reason = f"(fake judge disagreeing on purpose) {reason}"
        return {"same_object": same, "reason": reason}

    def _refine(self, context: Mapping[str, Any], request: ChatRequest) -> dict[str, Any]:
        noun = str(context.get("noun") or "object")
        parts = [_sentence(str(context.get(key, ""))) for key in ("appearance", "motion")]
        body = " ".join(part for part in parts if part)
        return {"caption": body or f"The {noun} is visible in the clip."}

    def _qa(self, context: Mapping[str, Any], request: ChatRequest) -> dict[str, Any]:
        objects = list(context.get("objects") or [])
        items: list[dict[str, Any]] = []
        for entry in objects:
            name, noun = entry["name"], entry.get("noun") or "object"
            distractors = [word for word in ("dog", "car", "ball", "person", "box") if word != noun][:3]
            items.append({
                "question": f"What is {name}?",
                "answer": f"A {noun}.",
                "type": "basic",
                "objects": [name],
                "options": [f"A {noun}.", *(f"A {word}." for word in distractors)],
            })
            moving = not entry.get("is_static", False)
            future = f"It will keep moving as the {noun} is doing now." if moving else "It will stay where it is."
            other = "It will stay where it is." if moving else f"It will start moving like the {noun} before."
            items.append({
                "question": f"What will {name} most likely do next?",
                "answer": future,
                "type": "future",
                "objects": [name],
                "options": [future, other, "It will disappear.", "It will turn into something else."],
            })
        if len(objects) >= 2:
            first, second = objects[0], objects[1]
            answer = f"{first['name']} and {second['name']} appear together in the same scene."
            items.append({
                "question": f"How are {first['name']} and {second['name']} related in the clip?",
                "answer": answer,
                "type": "reasoning",
                "objects": [first["name"], second["name"]],
                "options": [answer, "They never appear together.", "They are the same object.", "They collide."],
            })
        elif objects:
            name = objects[0]["name"]
            answer = f"Because {name} is the main object the clip follows."
            items.append({
                "question": f"Why is {name} the focus of the clip?",
                "answer": answer,
                "type": "reasoning",
                "objects": [name],
                "options": [answer, "Because it is hidden.", "Because it is blurred.", "Because it is absent."],
            })
        return {"items": items}


def minimal_instance(schema: Mapping[str, Any], definitions: Mapping[str, Any] | None = None) -> Any:
    """The smallest value that satisfies a (simple) JSON schema: what a fake says to an unknown task."""
    definitions = definitions if definitions is not None else schema.get("$defs", {})
    if "$ref" in schema:
        return minimal_instance(definitions[schema["$ref"].split("/")[-1]], definitions)
    if "enum" in schema:
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            return minimal_instance(schema[key][0], definitions)
    kind = schema.get("type", "object")
    if isinstance(kind, list):
        kind = kind[0]
    if kind == "object":
        return {name: minimal_instance(sub, definitions) for name, sub in schema.get("properties", {}).items()}
    if kind == "array":
        return [minimal_instance(schema.get("items", {}), definitions) for _ in range(schema.get("minItems", 0))]
    return {"string": "fake", "boolean": False, "integer": 0, "number": 0.0, "null": None}.get(kind, "fake")


def normalize(text: str) -> str:
    return " ".join(text.lower().split())


# ---------------------------------------------------------------------- ground truth of synthetic clips

_NO_TRUTH = object()


def _ground_truth(video_uri: str | None) -> Any:
    if not video_uri:
        return None
    from engine.synthetic import sidecar_path  # lazy: only fakes look at synthetic sidecars

    try:
        stamp = sidecar_path(video_uri).stat().st_mtime_ns
    except OSError:
        return None
    return _cached_ground_truth(video_uri, stamp)


@functools.lru_cache(maxsize=64)
def _cached_ground_truth(video_uri: str, stamp: int) -> Any:
    # The sidecar's mtime is part of the key so that a rewritten sidecar is read again.
    from engine.synthetic import load_ground_truth

    return load_ground_truth(video_uri)


def _truth_object(video_uri: Any, noun: str) -> Any:
    truth = _ground_truth(str(video_uri)) if video_uri else None
    if truth is None:
        return None
    for obj in truth.objects:
        if normalize(noun) in (normalize(obj.name), normalize(obj.category)):
            return obj
    return None


def _object_under_mask(video_uri: Any, key_frame: Any, mask: Any) -> Any:
    """The ground-truth object that best overlaps `mask` on `key_frame`; None if none; _NO_TRUTH if unknown."""
    truth = _ground_truth(str(video_uri)) if video_uri else None
    if truth is None or mask is None or key_frame is None:
        return _NO_TRUTH
    from engine.masks import decode_rle

    shown = decode_rle(mask)
    best, best_iou = None, 0.0
    for obj in truth.objects:
        truth_mask = obj.masks.get(int(key_frame))
        if truth_mask is None:
            continue
        drawn = decode_rle(truth_mask)
        union = np.logical_or(shown, drawn).sum()
        overlap = float(np.logical_and(shown, drawn).sum() / union) if union else 0.0
        if overlap > best_iou:
            best, best_iou = obj, overlap
    return best if best_iou >= 0.3 else None


def _direction(truth: Any, frame_indices: Any) -> str:
    boxes = getattr(truth, "boxes", None) or {}
    frames = sorted(int(i) for i in (frame_indices or boxes) if int(i) in boxes)
    if len(frames) < 2:
        return "steadily"
    (x0, y0, x1, y1), (u0, v0, u1, v1) = boxes[frames[0]], boxes[frames[-1]]
    dx, dy = (u0 + u1 - x0 - x1) / 2, (v0 + v1 - y0 - y1) / 2
    horizontal = "to the right" if dx > 0 else "to the left"
    vertical = "downwards" if dy > 0 else "upwards"
    if abs(dx) >= 2 * abs(dy):
        return horizontal
    if abs(dy) >= 2 * abs(dx):
        return vertical
    return f"{horizontal} and {vertical}"


# ---------------------------------------------------------------------- small helpers


def _singular(word: str) -> str:
    if word in NOUN_VOCABULARY:
        return word
    for suffix, replacement in (("ies", "y"), ("es", ""), ("s", "")):
        if word.endswith(suffix) and word[: -len(suffix)] + replacement in NOUN_VOCABULARY:
            return word[: -len(suffix)] + replacement
    return word


def _add(nouns: list[str], noun: str) -> None:
    if noun not in nouns:
        nouns.append(noun)


def _unit_interval(hex_digest: str) -> float:
    return int(hex_digest[:13], 16) / float(16**13)


def _sentence(text: str) -> str:
    text = " ".join(text.split())
    if text and text[-1] not in ".!?":
        text += "."
    return text


def _last_user_text(request: ChatRequest) -> str:
    for message in reversed(request.messages):
        if message.role == "user":
            return " ".join(part for part in message.content if isinstance(part, str))
    return ""


def _prompt_tokens(request: ChatRequest) -> int:
    chars = images = 0
    for message in request.messages:
        for part in message.content:
            if isinstance(part, ImagePart):
                images += 1
            else:
                chars += len(part)
    return chars // _PROMPT_CHARS_PER_TOKEN + images * _TOKENS_PER_IMAGE


class ScriptedChatBackend:
    """A FAKE backend that answers from a script, for testing how agents handle bad replies and failures.

    `script(request, attempt)` returns the reply text or an exception to return for that request;
    `attempt` counts how many times a request with the same first user message was seen before (0 first,
    1 for the repair re-ask, which repeats the conversation), so a script can be broken once, then fixed.
    """

    kind = "fake"

    def __init__(self, script: Callable[[ChatRequest, int], str | Exception], *, model: str = "scripted-fake") -> None:
        self.script = script
        self.model = model
        self.requests: list[ChatRequest] = []
        self._attempts: dict[str, int] = {}

    async def complete(self, request: ChatRequest) -> ChatReply:
        reply = await self._reply(request)
        if isinstance(reply, Exception):
            raise reply
        return reply

    async def complete_batch(self, requests: Sequence[ChatRequest]) -> list[ChatReply | Exception]:
        replies = [await self._reply(request) for request in requests]
        for reply in replies:
            if isinstance(reply, BackendUnavailableError):
                raise reply
        return replies

    async def aclose(self) -> None:
        return None

    async def _reply(self, request: ChatRequest) -> ChatReply | Exception:
        self.requests.append(request)
        first_user = next((m for m in request.messages if m.role == "user"), None)
        key = stable_hash(_message_text(first_user) if first_user else "")
        attempt = self._attempts.get(key, 0)
        self._attempts[key] = attempt + 1
        answer = self.script(request, attempt)
        if isinstance(answer, Exception):
            return answer
        return ChatReply(
            text=answer,
            model=self.model,
            backend=self.kind,
            prompt_tokens=_prompt_tokens(request),
            completion_tokens=len(answer) // _PROMPT_CHARS_PER_TOKEN + 1,
        )


def _message_text(message: Any) -> str:
    return "".join(part if isinstance(part, str) else f"<image {len(part.jpeg)}>" for part in message.content)
