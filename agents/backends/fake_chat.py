"""A FAKE chat backend: deterministic, schema-valid replies computed from what a model is shown, with no model.

A fake answers only from what a real model would be given: the rendered prompt's text, its images (JPEG bytes)
and the reply schema, plus `request.task`, which names what is asked (a real deployment routes by prompt too).
So an agent whose prompt drops an input gets an answer that lacks it, and a test notices.
`analyze` parses nouns from the quoted caption with a small vocabulary and "a/the <adjective>* <noun>"
patterns (only the subject when the prompt asks for a single one). `annotate` and `region_caption` look at the
images: the engine's synthetic clips (`engine.synthetic`) draw balls, boxes, stars, cars and kites in the named
colours of `engine.synthetic.COLORS` on grey, so the fake tells an object's colour from its pixels, its shape
from how its blob fills its box and hull, the region an agent outlined from the outline's pure colour, and
motion from how the object's blob moves between the frames it is shown (a blob that stays put is static).
`judge` compares the noun and colours of annotator A's texts with the region caption, all read from the prompt;
`refine` merges the appearance and motion notes of its prompt; `qa` asks about the objects its prompt lists.
`disagree_rate` makes the judge flip its verdict on purpose, chosen by a hash of the prompt so it is
reproducible (reviewer quality tests). Any other task gets the smallest reply that matches the request's JSON
schema. It says what it is: `kind == "fake"`, model `fake-chat` by default.
"""

from __future__ import annotations

import asyncio
import functools
import io
import itertools
import json
import re
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
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
    wooden metal plastic shiny fluffy furry round square wet dry happy smiling running moving single lone
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
        return handler(shown_prompt(request))

    def _analyze(self, shown: ShownPrompt) -> dict[str, Any]:
        marker = "Caption of a video clip:"
        caption = _between(shown.text, marker, "\n\n").strip('"') if marker in shown.text else shown.text
        nouns = parse_nouns(caption)
        # The single-subject prompt asks for one thing only; the other prompt asks for the others too.
        instructions = shown.text.replace(caption, "") if caption else shown.text
        if re.search(r"\bsingle\b", instructions, re.IGNORECASE):
            return {"subject": nouns[:1], "others": []}
        return {"subject": nouns[:1], "others": nouns[1:]}

    def _annotate(self, shown: ShownPrompt) -> dict[str, Any]:
        noun = _quoted_after("Object to describe:", shown.text) or "object"
        expression = _quoted_after("referred to as:", shown.text)
        outline = re.search(r"outlined in (\w+)", shown.text)
        outline_rgb = OUTLINE_COLORS.get(outline.group(1).lower()) if outline else None
        seen = watch_object(shown.images, noun=noun, expression=expression, outline_rgb=outline_rgb)
        described = f"{seen.color} {noun}".strip()
        if seen.first_seen:
            appearance = f"{_article(described)} {described} with a clear outline, first seen {seen.first_seen}."
        else:
            appearance = f"{_article(described)} {described} with a clear outline, fully visible in the frames."
        if seen.is_static:
            motion = f"The {noun} stays still in the same place throughout the clip."
        else:
            motion = f"The {noun} moves {seen.direction} across the frame."
        return {"appearance": appearance, "motion": motion, "is_static": seen.is_static}

    def _region_caption(self, shown: ShownPrompt) -> dict[str, Any]:
        contour = re.search(r"outlined with an? (\w+) contour", shown.text)
        outline_rgb = OUTLINE_COLORS.get(contour.group(1).lower()) if contour else None
        region = read_outlined_region(shown.images, outline_rgb) if outline_rgb is not None else None
        if region is None:
            return {"caption": "No outlined region can be made out in the image."}
        if region.color is None:
            return {"caption": f"A patch of background {region.where}, with no distinct object inside the outline."}
        described = f"{region.color} {region.shape or 'object'}"
        return {"caption": f"{_article(described)} {described} outlined {region.where}."}

    def _judge(self, shown: ShownPrompt) -> dict[str, Any]:
        noun = normalize(_quoted_after("asked about", shown.text))
        appearance = _between(shown.text, "Appearance:", "Motion:")
        region_caption = _between(shown.text, "and wrote:", "Do A and B", occurrence=-1)
        region_words = {_singular(word) for word in _WORD.findall(region_caption.lower())}
        named = bool(noun) and all(_singular(part) in region_words for part in noun.split())
        colors_a, colors_b = _color_words(appearance), _color_words(region_caption)
        same_color = not colors_a or not colors_b or bool(colors_a & colors_b)
        same = named and same_color
        shared = sorted(colors_a & colors_b)
        if same:
            reason = f"Both descriptions name a {noun}" + (f" that is {shared[0]}." if shared else ".")
        elif named:
            reason = f"Both name a {noun}, but A says {_or(colors_a)} and the region is {_or(colors_b)}."
        elif noun:
            reason = f"The region shows something other than a {noun}."
        else:
            reason = "Annotator A names no object to compare the region with."
        key = stable_hash("judge", self.config.seed, shown.text)
        if _unit_interval(key) < self.config.disagree_rate:
            same = not same
            reason = f"(fake judge disagreeing on purpose) {reason}"
        return {"same_object": same, "reason": reason}

    def _refine(self, shown: ShownPrompt) -> dict[str, Any]:
        noun = _quoted_after("describe the same", shown.text) or "object"
        appearance = _between(shown.text, "Appearance note:", "Motion note:")
        motion = _between(shown.text, "Motion note:", "\n\n")
        body = " ".join(part for part in (_sentence(appearance), _sentence(motion)) if part)
        return {"caption": body or f"The {noun} is visible in the clip."}

    def _qa(self, shown: ShownPrompt) -> dict[str, Any]:
        objects = listed_objects(shown.text)
        items: list[dict[str, Any]] = []
        for entry in objects:
            name, noun = entry.name, entry.noun
            colors = _color_words(entry.appearance)
            described = f"{min(colors)} {noun}" if colors else noun
            answer = f"{_article(described)} {described}."
            distractors = [word for word in ("dog", "car", "ball", "person", "box") if word != noun][:3]
            items.append({
                "question": f"What is {name}?",
                "answer": answer,
                "type": "basic",
                "objects": [name],
                "options": [answer, *(f"A {word}." for word in distractors)],
            })
            if entry.is_static:
                future, other = "It will stay where it is.", f"It will start moving like the {noun} before."
            else:
                heading = f" {entry.direction}" if entry.direction else ""
                future = f"It will keep moving{heading} as the {noun} is doing now."
                other = "It will stay where it is."
            items.append({
                "question": f"What will {name} most likely do next?",
                "answer": future,
                "type": "future",
                "objects": [name],
                "options": [future, other, "It will disappear.", "It will turn into something else."],
            })
        if len(objects) >= 2:
            first, second = objects[0].name, objects[1].name
            answer = f"{first} and {second} appear together in the same scene."
            items.append({
                "question": f"How are {first} and {second} related in the clip?",
                "answer": answer,
                "type": "reasoning",
                "objects": [first, second],
                "options": [answer, "They never appear together.", "They are the same object.", "They collide."],
            })
        elif objects:
            name = objects[0].name
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


# ---------------------------------------------------------------------- reading the prompt a model is given


@dataclass(frozen=True, slots=True)
class ShownPrompt:
    """What a model is given: the user prompt's text and its images, decoded to RGB arrays."""

    text: str
    images: tuple[np.ndarray, ...]


@dataclass(frozen=True, slots=True)
class ListedObject:
    """One object of the QA prompt's list, as the prompt describes it."""

    name: str
    noun: str
    appearance: str
    motion: str
    is_static: bool
    direction: str


def shown_prompt(request: ChatRequest) -> ShownPrompt:
    """The first user message: the rendered prompt (a repair re-ask repeats the conversation after it)."""
    prompt = next((message for message in request.messages if message.role == "user"), None)
    parts = prompt.content if prompt is not None else ()
    text = "\n".join(part for part in parts if isinstance(part, str))
    images = tuple(image for part in parts if isinstance(part, ImagePart) if (image := _decode(part)) is not None)
    return ShownPrompt(text=text, images=images)


_QA_OBJECT = re.compile(r'^(<object\d+>) \(an? (.+?)(?:, referred to as "(.*)")?\):[ \t]*$', re.MULTILINE)
_STILL = re.compile(r"\b(still|static|stationary|motionless|does not move|doesn't move|not moving)\b", re.IGNORECASE)
_HEADING = re.compile(r"\b(to the (?:left|right)(?: and (?:upwards|downwards))?|upwards|downwards)\b")


def listed_objects(text: str) -> list[ListedObject]:
    """The objects of a QA prompt (`<objectK> (a noun, ...):` then its appearance and motion lines), in order."""
    heads = list(_QA_OBJECT.finditer(text))
    objects = []
    for index, head in enumerate(heads):
        block = text[head.end() : heads[index + 1].start() if index + 1 < len(heads) else len(text)]
        motion = _between(block, "motion:", "\n\n")
        heading = _HEADING.search(motion)
        objects.append(
            ListedObject(
                name=head.group(1),
                noun=head.group(2).strip() or "object",
                appearance=_between(block, "appearance:", "motion:"),
                motion=motion,
                is_static=bool(_STILL.search(motion)),
                direction=heading.group(1) if heading else "",
            )
        )
    return objects


def _quoted_after(marker: str, text: str) -> str:
    found = re.search(re.escape(marker) + r'\s*"([^"\n]*)"', text)
    return found.group(1).strip() if found else ""


def _between(text: str, start: str, end: str, *, occurrence: int = 0) -> str:
    """The text after the `occurrence`-th `start` marker (-1: the last) up to the next `end`, spaces collapsed."""
    starts = [match.end() for match in re.finditer(re.escape(start), text)]
    if not starts:
        return ""
    begin = starts[occurrence]
    stop = text.find(end, begin)
    return " ".join(text[begin : stop if stop >= 0 else len(text)].split())


COLOR_WORDS = _words("red orange yellow green blue purple pink brown black white gray grey silver golden gold")


def _color_words(text: str) -> frozenset[str]:
    return frozenset(word for word in _WORD.findall(text.lower()) if word in COLOR_WORDS)


def _or(colors: frozenset[str]) -> str:
    return " or ".join(sorted(colors)) or "uncoloured"


# ---------------------------------------------------------------------- reading the images a model is shown
#
# The engine's synthetic clips (`engine.synthetic`) draw objects of the named colours of `COLORS` on a grey
# background, each a ball, box, star, car or kite. The fake reads them the way a model's eyes would: it labels
# every pixel with the named colour of its hue (grey where it has little colour), takes each colour's largest
# blob as one object, tells the shape by how the blob fills its box and its hull and how wide it is, finds an
# outline drawn by an agent from the outline's pure colour, and sees motion in how a blob moves between frames.

# The pure colours agents draw outlines in, by the name their prompts give.
OUTLINE_COLORS: Mapping[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
}
_CHROMA_MIN = 50  # max - min channel value under which a pixel is background grey
_MIN_BLOB_PIXELS = 12
_MIN_BLOB_FRACTION = 0.002  # of the frame: smaller colour specks are noise, not objects
_MIN_CORE_FRACTION = 0.15  # of a colour patch left after peeling off its edge: less is a seam between colours
_OUTLINE_DISTANCE = 60  # RGB distance to the pure outline colour of an outline pixel (after JPEG)
_MIN_OUTLINE_PIXELS = 8
_GREY_CHROMA = 18  # chroma (YCrCb, off 128) under which a pixel inside an outline is grey
_MIN_OWN_SHARE = 0.25  # a pixel inside an outline is explained by a colour when it holds this much of it
_MIN_SUPPORT = 0.3  # of the pixels inside an outline: a colour explaining this many is the object's
_BACKGROUND_LUMA = 120.0  # the synthetic clips' grey background
_SHADE = 0.72  # the synthetic patterns darken part of an object to this fraction of its colour
_LUMA_SLACK = 12.0  # codec noise on brightness
_MAX_LOOK_COST = 60.0  # a blob that fits no shape (hidden behind others) should not take one from a blob that does
_STATIC_SPREAD = 1.3  # union of a blob's masks over the frames / its largest mask; more means it moved
_MIN_SHIFT_PX = 1.0
# How each synthetic shape fills its bounding box, its convex hull, and log(width / height), fitted (as
# a + b / side) to decoded frames of `engine.synthetic` clips (H.264, then JPEG) for blobs whose bounding box
# is about 12 and about 45 pixels a side: small shapes lose their points and notches to the pixel grid.
# "outlined": the shape as an outline drawn over its rim leaves it; "plain": its colour's blob.
SHAPE_LOOKS: Mapping[str, Mapping[str, tuple[tuple[float, float, float], tuple[float, float, float]]]] = {
    "plain": {
        "ball": ((0.76, 0.946, -0.03), (0.785, 0.974, 0.0)),
        "box": ((0.86, 0.93, 0.05), (0.972, 0.98, 0.11)),
        "car": ((0.694, 0.891, 0.362), (0.678, 0.836, 0.433)),
        "kite": ((0.656, 0.914, -0.327), (0.551, 0.942, -0.356)),
        "star": ((0.651, 0.861, -0.04), (0.466, 0.665, 0.03)),
    },
    "outlined": {
        "ball": ((0.78, 0.955, -0.01), (0.777, 0.976, 0.0)),
        "box": ((0.93, 0.97, 0.12), (0.993, 0.998, 0.111)),
        "car": ((0.635, 0.836, 0.461), (0.651, 0.811, 0.482)),
        "kite": ((0.585, 0.915, -0.305), (0.521, 0.94, -0.352)),
        "star": ((0.563, 0.774, 0.016), (0.417, 0.601, 0.04)),
    },
}
SHAPES_SEEN = tuple(SHAPE_LOOKS["plain"])
_LOOK_SIDES = (12.0, 45.0)
_LOOK_SPREAD = (0.035, 0.025, 0.06)


@dataclass(frozen=True, slots=True, eq=False)
class Blob:
    """One object as seen on one frame: its colour name, its pixels, and where it is."""

    color: str
    mask: np.ndarray
    area: int
    centre: tuple[float, float]


@dataclass(frozen=True, slots=True)
class WatchedObject:
    """What the fake annotator saw of the object it was asked about over the frames it was shown."""

    color: str = ""
    first_seen: str = ""
    is_static: bool = False
    direction: str = "steadily"


@dataclass(frozen=True, slots=True)
class OutlinedRegion:
    """What the fake region captioner saw inside an outline: colour (None: background), shape, place."""

    color: str | None
    shape: str | None
    where: str
    area: int


def color_labels(image: np.ndarray) -> tuple[np.ndarray, tuple[str, ...]]:
    """Per pixel, the index of its named colour in the returned names (-1: grey background)."""
    import cv2  # lazy: only the fake's eyes need OpenCV

    from engine.synthetic import COLORS

    names = tuple(COLORS)
    hues = np.array([_hue(COLORS[name]) for name in names], dtype=np.float32)
    hue = cv2.cvtColor(image, cv2.COLOR_RGB2HSV_FULL)[..., 0].astype(np.float32)
    distance = np.abs(hue[..., None] - hues)
    labels = np.minimum(distance, 256 - distance).argmin(axis=-1)
    chroma = image.max(axis=-1).astype(np.int16) - image.min(axis=-1).astype(np.int16)
    labels[chroma < _CHROMA_MIN] = -1
    return labels, names


def find_blobs(image: np.ndarray, labels: np.ndarray, names: Sequence[str]) -> dict[str, Blob]:
    """Each named colour's largest connected patch on the frame, when it is big enough to be an object."""
    import cv2

    smallest = max(_MIN_BLOB_PIXELS, _MIN_BLOB_FRACTION * labels.size)
    blobs = {}
    for index, name in enumerate(names):
        colored = (labels == index).astype(np.uint8)
        count, components, stats, _ = cv2.connectedComponentsWithStats(colored, connectivity=8)
        if count <= 1:
            continue
        # Where two colours meet, the codec mixes them into a thin seam of a third: a patch with (next to) no
        # core left after peeling one pixel off its edge is such a seam, not an object.
        core = np.bincount(components[cv2.erode(colored, np.ones((3, 3), np.uint8)).astype(bool)], minlength=count)
        areas = stats[:, cv2.CC_STAT_AREA]
        solid = [k for k in range(1, count) if areas[k] >= smallest and core[k] >= _MIN_CORE_FRACTION * areas[k]]
        if solid:
            # The pattern's darker stripes and dots can drop out of a colour; an object has no holes.
            blobs[name] = _blob(name, _fill_holes(components == max(solid, key=lambda k: areas[k])))
    return blobs


def seen_whole(mask: np.ndarray, in_front: np.ndarray) -> np.ndarray:
    """A blob completed where something else may hide it: the pixels of `in_front` inside the blob's hull."""
    import cv2

    ys, xs = np.nonzero(mask)
    hull = cv2.convexHull(np.stack([xs, ys], axis=1).astype(np.int32))
    inside = np.zeros(mask.shape, np.uint8)
    cv2.fillConvexPoly(inside, hull, 1)
    return mask | (inside.astype(bool) & in_front)


def watch_object(
    images: Sequence[np.ndarray], *, noun: str, expression: str, outline_rgb: tuple[int, int, int] | None
) -> WatchedObject:
    """Colour, first place and motion of the object named `noun` (outlined, if `outline_rgb`) over the frames."""
    if not images:
        return WatchedObject()
    seen: list[Blob | None] = []
    if outline_rgb is not None:
        for image in images:
            found = _outlined_blob(image, outline_rgb)
            seen.append(found[0] if found is not None and found[0] is not None else None)
    else:
        per_frame, coloured = [], []
        for image in images:
            labels, names = color_labels(image)
            per_frame.append(find_blobs(image, labels, names))
            coloured.append(labels >= 0)
        color = _color_of(noun, expression, per_frame, coloured)
        seen = [blobs.get(color) for blobs in per_frame] if color else []
    present = [blob for blob in seen if blob is not None]
    if not present:
        return WatchedObject()
    color = max(Counter(blob.color for blob in present).items(), key=lambda item: (item[1], item[0]))[0]
    present = [blob for blob in present if blob.color == color]
    height, width = images[0].shape[:2]
    first_seen = _where(present[0].centre, width=width, height=height)
    if len(present) < 2:
        return WatchedObject(color=color, first_seen=first_seen)
    union = np.logical_or.reduce([blob.mask for blob in present]).sum()
    if union <= _STATIC_SPREAD * max(blob.area for blob in present):
        return WatchedObject(color=color, first_seen=first_seen, is_static=True, direction="")
    return WatchedObject(color=color, first_seen=first_seen, direction=_heading(present[0].centre, present[-1].centre))


def read_outlined_region(
    images: Sequence[np.ndarray], outline_rgb: tuple[int, int, int]
) -> OutlinedRegion | None:
    """What is inside the outline of the frame where the outlined object is largest; None without an outline."""
    best: tuple[tuple[bool, int], OutlinedRegion] | None = None
    for image in images:
        found = _outlined_blob(image, outline_rgb)
        if found is None:
            continue
        blob, region_mask, others = found
        height, width = image.shape[:2]
        if blob is None:
            where = _where(_centre(region_mask), width=width, height=height)
            region = OutlinedRegion(color=None, shape=None, where=where, area=int(region_mask.sum()))
        else:
            masks = {blob.color: blob.mask, **{other.color: other.mask for other in others}}
            shapes = assign_shapes(masks, outlined=blob.color)
            where = _where(blob.centre, width=width, height=height)
            region = OutlinedRegion(color=blob.color, shape=shapes.get(blob.color), where=where, area=blob.area)
        rank = (region.color is not None, region.area)
        if best is None or rank > best[0]:
            best = (rank, region)
    return best[1] if best is not None else None


def shape_looks(mask: np.ndarray) -> tuple[tuple[float, float, float], float]:
    """How a blob fills its bounding box, how it fills its convex hull, and log(width / height); and its side
    (the geometric mean of its bounding box's width and height)."""
    import cv2

    ys, xs = np.nonzero(mask)
    width, height = int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)
    hull = cv2.convexHull(np.stack([xs, ys], axis=1).astype(np.int32))
    # The hull runs through pixel centres; half its perimeter (plus one) adds back the pixels' outer halves.
    hull_area = cv2.contourArea(hull) + cv2.arcLength(hull, True) / 2 + 1
    area = float(len(xs))
    looks = (area / (width * height), min(1.0, area / hull_area), float(np.log(width / height)))
    return looks, float(np.sqrt(width * height))


def assign_shapes(masks: Mapping[str, np.ndarray], *, outlined: str | None = None) -> dict[str, str]:
    """Colour -> shape, each shape given to at most one blob, the assignment that fits all blobs best; the
    blob of colour `outlined` is judged as an outline drawn over its rim leaves it."""
    colors = sorted(masks, key=lambda color: -int(masks[color].sum()))[: len(SHAPES_SEEN)]
    costs = {}
    for color in colors:
        looks, side = shape_looks(masks[color])
        typical = SHAPE_LOOKS["outlined" if color == outlined else "plain"]
        costs[color] = {shape: _look_cost(looks, side, typical[shape]) for shape in SHAPES_SEEN}
    best: tuple[float, tuple[str, ...]] | None = None
    for shapes in itertools.permutations(SHAPES_SEEN, len(colors)):
        total = sum(costs[color][shape] for color, shape in zip(colors, shapes, strict=True))
        if best is None or total < best[0]:
            best = (total, shapes)
    return dict(zip(colors, best[1], strict=True)) if best is not None else {}


def _color_of(
    noun: str, expression: str, per_frame: Sequence[Mapping[str, Blob]], coloured: Sequence[np.ndarray]
) -> str:
    """Which colour's blob is the object: the colour its expression names, the blob shaped like the noun, or
    the only blob there is; "" when nothing says."""
    present = {color for blobs in per_frame for color in blobs}
    named = sorted(_color_words(expression) & present)
    if named:
        return named[0]
    if noun in SHAPES_SEEN and present:
        # Each colour judged on the frame where it is biggest (least hidden by the others).
        largest = {}
        for color in sorted(present):
            views = [(blobs[color], seen) for blobs, seen in zip(per_frame, coloured, strict=True) if color in blobs]
            blob, seen = max(views, key=lambda view: view[0].area)
            largest[color] = seen_whole(blob.mask, seen & ~blob.mask)
        shapes = assign_shapes(largest)
        return next((color for color, shape in shapes.items() if shape == noun), "")
    return next(iter(present)) if len(present) == 1 else ""


def _outlined_blob(
    image: np.ndarray, outline_rgb: tuple[int, int, int]
) -> tuple[Blob | None, np.ndarray, list[Blob]] | None:
    """The outlined object (None: the outline holds only background), the outlined region, and the other blobs
    of the frame; None when no outline of that colour is drawn."""
    import cv2

    distance = np.linalg.norm(image.astype(np.float32) - np.asarray(outline_rgb, dtype=np.float32), axis=-1)
    strong = distance < _OUTLINE_DISTANCE
    if strong.sum() < _MIN_OUTLINE_PIXELS:
        return None
    kernel = np.ones((3, 3), np.uint8)
    # JPEG leaves gaps in a thin line; closing them first lets the outline enclose its region.
    ring = _largest_component(cv2.morphologyEx(strong.astype(np.uint8), cv2.MORPH_CLOSE, kernel).astype(bool))
    region = _fill_holes(ring)
    inside = region & ~strong if (region & ~strong).any() else region
    labels, names = color_labels(image)
    color = _color_inside(image, inside, outline_rgb, names)
    body = cv2.erode(region.astype(np.uint8), kernel).astype(bool)  # the outline runs just outside the object
    body = body if body.any() else region
    # Colours right around the outline are the outline's bleed, not objects.
    labels[cv2.dilate(region.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)] = -1
    others = [blob for blob in find_blobs(image, labels, names).values() if blob.color != color]
    return (_blob(color, body) if color is not None and body.any() else None), region, others


def _color_inside(
    image: np.ndarray, inside: np.ndarray, outline_rgb: tuple[int, int, int], names: Sequence[str]
) -> str | None:
    """The named colour of what fills an outline (None: the grey background).

    JPEG keeps colour at half resolution, so the outline's colour bleeds into the pixels it encloses; in the
    chroma plane such a pixel is a mix of the object's colour and the outline's, while its brightness stays
    the object's own. A colour that explains (as such a mix, with a real share of its own, and as bright as
    that colour lit or in shade) enough of the pixels is the object's. When none does, what is inside has
    the outline's own hue: an object of that colour, darker (or brighter) than the grey background, or
    background tinted by the outline."""
    import cv2

    from engine.synthetic import COLORS

    ycc = cv2.cvtColor(image, cv2.COLOR_RGB2YCrCb).astype(np.float32)
    chroma, luma = ycc[..., 1:][inside] - 128.0, ycc[..., 0][inside]
    outline = _chroma(outline_rgb)
    own = min(names, key=lambda name: _hue_distance(_hue(outline_rgb), _hue(COLORS[name])))
    coloured = np.linalg.norm(chroma, axis=1) >= _GREY_CHROMA
    explained_by = {}
    for name in names:
        if name == own:
            continue
        shares = chroma @ np.linalg.inv(np.stack([_chroma(COLORS[name]), outline], axis=1)).T
        mixed = (shares[:, 0] >= _MIN_OWN_SHARE) & (shares[:, 1] >= -0.2) & (shares.sum(axis=1) <= 1.3)
        lit = _luma(COLORS[name])
        bright_enough = (luma >= _SHADE * lit - _LUMA_SLACK) & (luma <= lit + _LUMA_SLACK)
        explained_by[name] = mixed & coloured & bright_enough
    best = max(explained_by, key=lambda name: (int(explained_by[name].sum()), name))
    if explained_by[best].sum() >= _MIN_SUPPORT * len(chroma):
        return best
    own_luma = _luma(COLORS[own])
    split = (own_luma + _BACKGROUND_LUMA) / 2
    owned = coloured & ((luma < split) if own_luma < _BACKGROUND_LUMA else (luma > split))
    return own if 2 * owned.sum() > len(chroma) else None


def _blob(color: str, mask: np.ndarray) -> Blob:
    return Blob(color=color, mask=mask, area=int(mask.sum()), centre=_centre(mask))


def _centre(mask: np.ndarray) -> tuple[float, float]:
    ys, xs = np.nonzero(mask)
    return (float(xs.mean()) + 0.5, float(ys.mean()) + 0.5) if len(xs) else (0.0, 0.0)


def _largest_component(mask: np.ndarray) -> np.ndarray:
    import cv2

    count, components, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if count <= 1:
        return np.zeros(mask.shape, dtype=bool)
    return components == 1 + int(stats[1:, cv2.CC_STAT_AREA].argmax())


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """The mask with every area it encloses filled in (flooding the outside from a one-pixel border)."""
    import cv2

    padded = np.pad(mask.astype(np.uint8), 1)
    cv2.floodFill(padded, None, (0, 0), 2)
    return (padded != 2)[1:-1, 1:-1]


def _look_cost(
    looks: tuple[float, float, float],
    side: float,
    typical: tuple[tuple[float, float, float], tuple[float, float, float]],
) -> float:
    small, large = typical
    # Between the two measured sizes the looks change with 1 / side.
    along = (1 / _LOOK_SIDES[0] - 1 / min(max(side, _LOOK_SIDES[0]), _LOOK_SIDES[1])) / (
        1 / _LOOK_SIDES[0] - 1 / _LOOK_SIDES[1]
    )
    expected = [(1 - along) * a + along * b for a, b in zip(small, large, strict=True)]
    cost = sum(((v - e) / spread) ** 2 for v, e, spread in zip(looks, expected, _LOOK_SPREAD, strict=True))
    return min(cost, _MAX_LOOK_COST)


@functools.lru_cache(maxsize=32)
def _hue(rgb: tuple[int, int, int]) -> float:
    """The hue of an RGB colour on OpenCV's 0..255 circle."""
    import cv2

    return float(cv2.cvtColor(np.uint8([[rgb]]), cv2.COLOR_RGB2HSV_FULL)[0, 0, 0])


def _hue_of(name: str) -> float:
    from engine.synthetic import COLORS

    return _hue(COLORS[name])


@functools.lru_cache(maxsize=32)
def _chroma(rgb: tuple[int, int, int]) -> np.ndarray:
    """(Cr, Cb) of an RGB colour, centred on grey."""
    import cv2

    return cv2.cvtColor(np.uint8([[rgb]]), cv2.COLOR_RGB2YCrCb)[0, 0, 1:].astype(np.float32) - 128.0


@functools.lru_cache(maxsize=32)
def _luma(rgb: tuple[int, int, int]) -> float:
    import cv2

    return float(cv2.cvtColor(np.uint8([[rgb]]), cv2.COLOR_RGB2YCrCb)[0, 0, 0])


def _hue_distance(a: float, b: float) -> float:
    return min(abs(a - b), 256 - abs(a - b))


def _where(centre: tuple[float, float], *, width: int, height: int) -> str:
    vertical = ("top", "middle", "bottom")[min(2, int(3 * centre[1] / max(1, height)))]
    horizontal = ("left", "centre", "right")[min(2, int(3 * centre[0] / max(1, width)))]
    if vertical == "middle":
        return "in the centre of the frame" if horizontal == "centre" else f"on the {horizontal} of the frame"
    if horizontal == "centre":
        return f"at the {vertical} of the frame"
    return f"in the {vertical} {horizontal} of the frame"


def _heading(start: tuple[float, float], end: tuple[float, float]) -> str:
    dx, dy = end[0] - start[0], end[1] - start[1]
    if max(abs(dx), abs(dy)) < _MIN_SHIFT_PX:
        return "back and forth"
    horizontal = "to the right" if dx > 0 else "to the left"
    vertical = "downwards" if dy > 0 else "upwards"
    if abs(dx) >= 2 * abs(dy):
        return horizontal
    if abs(dy) >= 2 * abs(dx):
        return vertical
    return f"{horizontal} and {vertical}"


def _decode(part: ImagePart) -> np.ndarray | None:
    from PIL import Image, UnidentifiedImageError  # lazy, as in agents.frames

    try:
        with Image.open(io.BytesIO(part.jpeg)) as image:
            return np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError):
        return None


# ---------------------------------------------------------------------- small helpers


def _singular(word: str) -> str:
    if word in NOUN_VOCABULARY:
        return word
    for suffix, replacement in (("ies", "y"), ("es", ""), ("s", "")):
        if word.endswith(suffix) and word[: -len(suffix)] + replacement in NOUN_VOCABULARY:
            return word[: -len(suffix)] + replacement
    return word


def _article(phrase: str) -> str:
    return "An" if phrase[:1].lower() in "aeiou" else "A"


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
