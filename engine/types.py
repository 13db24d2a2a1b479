"""The frozen records that flow through every stage of the data engine and into the exported samples.

One unit of work per level: a `Clip` (a span of a source video with its caption), an `ObjectRecord`
(one noun of one clip, carried from the analyzer to the refiner and enriched stage by stage with
`dataclasses.replace`), and a `Sample` (one training conversation with its objects and masks, its sampled
video frames and the extra frames that hold its other masks).
Each enrichment appends a `Provenance`. Bad items become `Reject`s with a reason code.
Masks are COCO RLE (`RleMask`), keyed by absolute frame index of the source video.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from engine.errors import RejectReason

Task = Literal["detailed", "short", "qa"]
QAType = Literal["basic", "reasoning", "future"]

_FROZEN = {"frozen": True, "slots": True, "kw_only": True}


@dataclass(**_FROZEN)
class Provenance:
    """Who produced a field: agent, backend kind, model name/revision, prompt version, cost."""

    agent: str
    backend: str
    model: str
    prompt_version: str = ""
    latency_s: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass(**_FROZEN)
class RleMask:
    """One binary mask in COCO compressed RLE (string counts)."""

    height: int
    width: int
    counts: str

    def to_coco(self) -> dict[str, Any]:
        return {"size": [self.height, self.width], "counts": self.counts}

    @classmethod
    def from_coco(cls, rle: Mapping[str, Any]) -> RleMask:
        height, width = rle["size"]
        counts = rle["counts"]
        if isinstance(counts, bytes):
            counts = counts.decode("ascii")
        if not isinstance(counts, str):
            raise TypeError("RleMask.from_coco expects compressed (string) counts; use engine.masks to convert")
        return cls(height=int(height), width=int(width), counts=counts)


@dataclass(**_FROZEN)
class Masklet:
    """An object's masks through a clip, keyed by absolute frame index, with the prompt that made it."""

    masks: Mapping[int, RleMask]
    key_frame: int
    box: tuple[float, float, float, float] | None = None  # x0, y0, x1, y1 on the key frame, pixels
    score: float = 1.0

    @property
    def frame_indices(self) -> tuple[int, ...]:
        return tuple(sorted(self.masks))


@dataclass(**_FROZEN)
class Clip:
    """A time span of a source video with its caption (and, for the QA path, given objects)."""

    clip_id: str
    video_uri: str
    caption: str
    start_s: float | None = None
    end_s: float | None = None
    fps: float = 0.0
    width: int = 0
    height: int = 0
    num_frames: int = 0
    source: str = ""
    given_objects: tuple[GivenObject, ...] = ()


@dataclass(**_FROZEN)
class GivenObject:
    """An object that a source already ships with masks and a referring expression (MeViS, Ref-YTVOS, A2D)."""

    name: str
    expression: str
    masklet: Masklet
    category: str = ""


@dataclass(**_FROZEN)
class Descriptions:
    """The annotator's two texts for one object, and whether it stays still through the clip."""

    appearance: str
    motion: str
    is_static: bool = False


@dataclass(**_FROZEN)
class Review:
    """The reviewer's verdict: region caption of the masked object and the judge's decision."""

    region_caption: str
    accepted: bool
    reason: str = ""


@dataclass(**_FROZEN)
class QAPair:
    """One generated multiple-choice or open question about one or more objects of a clip."""

    question: str
    answer: str
    qa_type: QAType
    object_ids: tuple[str, ...]
    options: tuple[str, ...] = ()


@dataclass(**_FROZEN)
class ObjectRecord:
    """One object of one clip: the unit each engine stage reads, enriches and writes."""

    object_id: str
    clip: Clip
    noun: str
    is_subject: bool = True
    category: str = ""
    expression: str = ""
    descriptions: Descriptions | None = None
    masklet: Masklet | None = None
    review: Review | None = None
    detailed_caption: str | None = None
    short_caption: str | None = None
    provenance: tuple[Provenance, ...] = ()

    @property
    def clip_id(self) -> str:
        return self.clip.clip_id


@dataclass(**_FROZEN)
class ClipQA:
    """The QA path's output for one clip: its described given objects and the questions generated about them."""

    clip: Clip
    objects: tuple[ObjectRecord, ...]
    qa: tuple[QAPair, ...]
    provenance: tuple[Provenance, ...] = ()

    @property
    def clip_id(self) -> str:
        return self.clip.clip_id


@dataclass(**_FROZEN)
class Reject:
    """An item a stage could not use, with a stable reason code and a human message."""

    stage: str
    item_id: str
    clip_id: str
    reason: RejectReason
    message: str = ""

    def __post_init__(self) -> None:
        # A message may quote the input that was refused: it is kept to a bounded length.
        if len(self.message) > 2000:
            from engine.parsing import bounded

            object.__setattr__(self, "message", bounded(self.message))


@dataclass(**_FROZEN)
class Turn:
    """One conversation turn in the released format: `from` is "human" or "gpt"."""

    role: Literal["human", "gpt"]
    value: str


@dataclass(**_FROZEN)
class SampleObject:
    """One object of a training sample: its masks per absolute frame index."""

    object_id: str
    category: str
    masks: Mapping[int, RleMask]


@dataclass(**_FROZEN)
class Sample:
    """One training conversation: a clip, its `<region>` objects in order, and the pre-sampled frames.

    `frame_indices` are the video's sampled frames (the release's uniform rule; they repeat on short videos).
    `extra_frame_indices` are the mask frames not among them (sorted, distinct): the release pools every mask
    frame, so those frames are stored too. A stored sample's images are one per `frame_indices` entry, then one
    per `extra_frame_indices` entry, in that order (`stored_frame_indices`).
    """

    key: str
    task: Task
    video_uri: str
    conversations: tuple[Turn, ...]
    objects: tuple[SampleObject, ...]
    frame_indices: tuple[int, ...] = ()
    extra_frame_indices: tuple[int, ...] = ()
    clip_id: str = ""
    height: int = 0
    width: int = 0
    provenance: tuple[Provenance, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def stored_frame_indices(self) -> tuple[int, ...]:
        """The frame index of each stored image, in order: the sampled frames, then the extra mask frames."""
        return (*self.frame_indices, *self.extra_frame_indices)


REGION_TOKEN = "<region>"
VIDEO_TOKEN = "<video>"
