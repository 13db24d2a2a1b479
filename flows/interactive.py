"""Pointing at objects in a video and asking the model about them: the logic of `videorefer app` and `infer --box`.

`open_video` opens a video within the engine's limits (not a video, a file above `limits.max_video_bytes`, too many
pixels decoded at once for `limits.max_decoded_pixels`, longer than the app's `max_seconds`: a `VideoReferError`
whose message the page shows). An object is prompted on one frame with a box or with clicked points (`Prompt`) and
segmented by whatever `Segmenter` the factory built from the config; its masklet covers the frames the page shows
and the frames the model samples (one `SegmentPrompt` through `segment_many`, which every segmenter kind takes:
fake, SAM 2 and SAM 3 alike, boxes and points). `overlay` draws every object in its colour;
`parse_question` maps `<region>` (objects in order) or `<regionN>` (object N) references to objects; `model_masks`
picks the masks the model pools (single mode: the prompted frame; multi: every sampled frame with a mask);
`stream_answer` runs the model in a thread and yields the answer as it grows. The downloads are `masks_json` (the
VideoRefer-700K `annotation` list, which `videorefer infer --masks` reads back) and `training_sample` (a QA sample
of our shard format, `storage.samples.sample_to_json`). No gradio and no torch at import: the web adapter
(`flows.webapp`) and the CLI (`flows.cli_model`, `flows.cli_app`) call these.
"""

from __future__ import annotations

import queue
import re
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agents.backends.base import Segmenter, SegmentPrompt
from engine.errors import InvalidSampleError, NoMaskError, RejectReason, VideoTooLargeError
from engine.ids import sample_key
from engine.masks import decode_rle
from engine.render import MARK_COLORS, draw_contour, draw_label, tint_mask
from engine.types import REGION_TOKEN, Masklet, Provenance, RleMask, Sample, SampleObject, Turn
from engine.video import VideoInfo, check_pixel_budget, n_uniform_frames, probe, uniform_indices
from storage.samples import extra_frames_of, qa_question_text, select_mask_frames

Box = tuple[float, float, float, float]
Point = tuple[float, float]
Color = tuple[int, int, int]

_NUMBERED = re.compile(r"<region(\d+)>")


@dataclass(frozen=True, slots=True, kw_only=True)
class AppLimits:
    """What the app accepts: the engine's `limits` (file bytes, pixels decoded at once) plus its own length bounds.

    `max_frames` frames at most are shown and segmented (uniformly spread over a longer video, first and last
    included); a video longer than `max_seconds` is refused.
    """

    max_video_bytes: int = 32 * 1024**3
    max_decoded_pixels: int = 2**29
    max_text_chars: int = 20_000
    max_frames: int = 64
    max_seconds: float = 600.0


@dataclass(frozen=True, slots=True, kw_only=True)
class OpenedVideo:
    """A video the page works on: where it is, what it is called, its header, and the frames the app uses.

    `shown_frames` are the frames of the slider and of the overlay; `segment_frames` are those plus the frames
    the model samples (`uniform_indices` of `model_frames`), so every mask the model pools exists.
    """

    path: str
    name: str
    info: VideoInfo
    shown_frames: tuple[int, ...]
    segment_frames: tuple[int, ...]
    model_frames: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Prompt:
    """What the user gave on `key_frame`: a box (x0, y0, x1, y1 pixels) or points with labels (1 object, 0 not)."""

    key_frame: int
    box: Box | None = None
    points: tuple[Point, ...] = ()
    labels: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class PickedObject:
    """One object of the page: its number (as shown and as `<regionN>` names it), colour, prompt and masklet."""

    number: int
    color: Color
    prompt: Prompt
    masklet: Masklet


@dataclass(frozen=True, slots=True, kw_only=True)
class Question:
    """A question resolved against the picked objects: the human turn (one `<region>` per object, in order)."""

    text: str
    objects: tuple[PickedObject, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Answered:
    """A question and the model's answer with the masks it saw: what a training sample is made of."""

    question: Question
    answer: str
    mode: str
    frame_indices: tuple[int, ...]
    masks: tuple[Mapping[int, RleMask], ...]
    provenance: tuple[Provenance, ...] = field(default_factory=tuple)


# ------------------------------------------------------------------------------------------ video


def open_video(path: str | Path, limits: AppLimits, *, model_frames: int, name: str | None = None) -> OpenedVideo:
    """Probe `path` within `limits` (no frame decoded) and choose the frames shown, segmented and sampled.

    Raises the engine's typed errors: `VideoNotFoundError`, `NotARegularFileError`, `BadVideoError` (not a video),
    `EmptyVideoError`, `VideoTooLargeError` (file bytes, side or frame count, pixels decoded at once, length).
    """
    info = probe(path, max_bytes=limits.max_video_bytes)
    if limits.max_seconds and info.duration_s > limits.max_seconds:
        raise VideoTooLargeError(
            f"the video is {info.duration_s:.1f} s long; the app takes videos up to {limits.max_seconds:g} s"
        )
    shown = n_uniform_frames(info.num_frames, max(1, limits.max_frames))
    sampled = uniform_indices(info.num_frames, model_frames)
    segment = sorted(set(shown) | set(sampled))
    check_pixel_budget(info, len(segment), limits.max_decoded_pixels)
    return OpenedVideo(
        path=str(path), name=name or Path(path).name, info=info, shown_frames=tuple(shown),
        segment_frames=tuple(segment), model_frames=model_frames,
    )


def nearest_shown(video: OpenedVideo, frame: int) -> int:
    """The shown frame closest to `frame` (the slider moves over shown frames only)."""
    return min(video.shown_frames, key=lambda shown: (abs(shown - frame), shown))


# ------------------------------------------------------------------------------------------ objects


def box_from_corners(first: Point, second: Point) -> Box:
    """The box spanned by two clicked corners, in any order; a box without area is a `ValueError`."""
    x0, x1 = sorted((float(first[0]), float(second[0])))
    y0, y1 = sorted((float(first[1]), float(second[1])))
    if x1 - x0 < 1 or y1 - y0 < 1:
        raise ValueError(f"the two corners ({first}, {second}) span no area: click two opposite corners")
    return (x0, y0, x1, y1)


def segment(segmenter: Segmenter, video: OpenedVideo, prompt: Prompt) -> Masklet:
    """The masklet of one prompted object over `video.segment_frames`, from the segmenter the config built."""
    frames = sorted(set(video.segment_frames) | {prompt.key_frame})
    if prompt.box is None and not prompt.points:
        raise ValueError("a prompt needs a box or at least one point")
    labels = prompt.labels or (1,) * len(prompt.points)
    if len(labels) != len(prompt.points):
        raise ValueError(f"{len(prompt.points)} points but {len(labels)} labels")
    points = tuple((float(x), float(y), int(label)) for (x, y), label in zip(prompt.points, labels, strict=True))
    request = SegmentPrompt(key_frame=prompt.key_frame, box=prompt.box, points=points)
    return segmenter.segment_many(video_uri=video.path, frame_indices=frames, prompts=[request])[0]


def add_object(objects: Sequence[PickedObject], prompt: Prompt, masklet: Masklet) -> tuple[PickedObject, ...]:
    """`objects` and a new one, numbered one above the highest number so far, in the next free colour."""
    number = max((o.number for o in objects), default=0) + 1
    color = MARK_COLORS[(number - 1) % len(MARK_COLORS)]
    return (*objects, PickedObject(number=number, color=color, prompt=prompt, masklet=masklet))


def remove_object(objects: Sequence[PickedObject], number: int) -> tuple[PickedObject, ...]:
    """`objects` without object `number` (the others keep their numbers and colours)."""
    return tuple(o for o in objects if o.number != number)


def overlay(
    frame: np.ndarray,
    frame_index: int,
    objects: Sequence[PickedObject],
    *,
    pending: Sequence[Point] = (),
    alpha: float = 0.5,
) -> np.ndarray:
    """`frame` with every object's mask on `frame_index` tinted and outlined in its colour and numbered, and the
    pending clicks (points or a first box corner) drawn as white dots."""
    out = frame
    for obj in objects:
        mask = obj.masklet.masks.get(frame_index)
        if mask is None:
            continue
        binary = decode_rle(mask).astype(bool)
        if not binary.any():
            continue
        out = tint_mask(out, binary, obj.color, alpha)
        out = draw_contour(out, binary, obj.color, 2)
        out = draw_label(out, binary, str(obj.number), obj.color)
    if pending:
        import cv2

        out = out.copy()
        radius = max(3, min(out.shape[:2]) // 60)
        for x, y in pending:
            cv2.circle(out, (int(round(x)), int(round(y))), radius, (255, 255, 255), -1)
            cv2.circle(out, (int(round(x)), int(round(y))), radius, (0, 0, 0), 1)
    return out


# ------------------------------------------------------------------------------------------ asking


def parse_question(question: str, objects: Sequence[PickedObject], *, max_chars: int = 20_000) -> Question:
    """Resolve the `<region>` references of `question` against the picked objects.

    `<regionN>` names object N (as numbered on the page); plain `<region>` markers name the objects in list
    order and must be one per object; a question without markers is about every object (they are introduced
    first, as in the released QA data). Mixing the two forms, an unknown number, a repeated object or a count
    that does not match is an `InvalidSampleError` with a message for the page.
    """
    text = question.strip()
    if not text:
        raise InvalidSampleError("the question is empty", reason=RejectReason.MALFORMED_SAMPLE)
    if len(text) > max_chars:
        raise InvalidSampleError(f"the question has {len(text)} characters, above the limit of {max_chars}",
                                 reason=RejectReason.TEXT_TOO_LONG)
    numbered = [int(n) for n in _NUMBERED.findall(text)]
    plain = text.count(REGION_TOKEN)
    by_number = {o.number: o for o in objects}
    if numbered and plain:
        raise InvalidSampleError("use either <region> (objects in order) or <region1>, <region2>, ..., not both",
                                 reason=RejectReason.REGION_COUNT_MISMATCH)
    if numbered:
        unknown = [n for n in numbered if n not in by_number]
        if unknown:
            raise InvalidSampleError(f"no object {unknown[0]} on the page (objects: {sorted(by_number)})",
                                     reason=RejectReason.REGION_COUNT_MISMATCH)
        if len(set(numbered)) != len(numbered):
            raise InvalidSampleError("each object may be named once", reason=RejectReason.REGION_COUNT_MISMATCH)
        chosen = tuple(by_number[n] for n in numbered)
        text = _NUMBERED.sub(REGION_TOKEN, text)
    else:
        if not objects and plain:
            raise InvalidSampleError("the question names <region> but no object is picked: click on one first",
                                     reason=RejectReason.REGION_COUNT_MISMATCH)
        if plain and plain != len(objects):
            raise InvalidSampleError(
                f"the question has {plain} <region> for {len(objects)} objects: write one <region> per object, "
                "or <region1>, <region2>, ... to pick objects by number",
                reason=RejectReason.REGION_COUNT_MISMATCH,
            )
        chosen = tuple(objects)
    return Question(text=qa_question_text(text, len(chosen)) if chosen else text, objects=chosen)


def model_masks(masklet: Masklet, sampled: Sequence[int], mode: str) -> dict[int, RleMask]:
    """The masks of one object that the model pools: in single mode the prompted (key) frame's mask, in multi mode
    the mask of every sampled frame where the object is visible (the key frame's when it is on none of them)."""
    if mode not in ("single", "multi"):
        raise ValueError(f"mode must be single or multi, got {mode!r}")
    key = masklet.key_frame
    key_mask = masklet.masks.get(key)
    key_visible = key_mask is not None and bool(decode_rle(key_mask).any())
    if mode == "multi":
        chosen = select_mask_frames(masklet, sampled, multi_frame=True)
        if chosen:
            return chosen
    if key_visible:
        return {key: key_mask}
    chosen = select_mask_frames(masklet, (), multi_frame=False)
    if not chosen:
        raise NoMaskError("the object has an empty mask on every frame: prompt it again")
    return chosen


def sampled_frames(video: OpenedVideo) -> list[int]:
    """The frames the model samples from the whole video (the release's rule)."""
    return uniform_indices(video.info.num_frames, video.model_frames)


def stream_answer(ask: Callable[[Callable[[str], Any]], str]) -> Iterator[str]:
    """Run `ask(callback)` in a thread and yield the answer so far each time `callback` receives a piece; the last
    value is the full answer `ask` returned. An exception of `ask` is raised here, in the caller's thread."""
    pieces: queue.Queue[tuple[str, Any]] = queue.Queue()

    def run() -> None:
        try:
            pieces.put(("done", ask(lambda chunk: pieces.put(("chunk", chunk)))))
        except BaseException as exc:  # handed to the consumer's thread below
            pieces.put(("error", exc))

    worker = threading.Thread(target=run, daemon=True, name="videorefer-answer")
    worker.start()
    text = ""
    while True:
        kind, value = pieces.get()
        if kind == "chunk":
            text += value
            yield text
        elif kind == "error":
            worker.join()
            raise value
        else:
            worker.join()
            yield str(value).strip()
            return


# ------------------------------------------------------------------------------------------ downloads


def masks_json(objects: Sequence[PickedObject]) -> list[dict[str, Any]]:
    """Every object's masklet as the VideoRefer-700K `annotation` list: `[{frame: {"segmentation": RLE}}, ...]`."""
    return [
        {str(frame): {"segmentation": mask.to_coco()} for frame, mask in sorted(obj.masklet.masks.items())}
        for obj in objects
    ]


def training_sample(video: OpenedVideo, answered: Answered) -> Sample:
    """The question and answer as a QA training sample of our format (`storage.samples.sample_to_json`), with the
    masks the model saw and the frames it sampled; `video` is the file's name (place it beside the sample)."""
    if not answered.answer.strip():
        raise InvalidSampleError("the answer is empty", reason=RejectReason.MALFORMED_SAMPLE)
    frames = tuple(int(i) for i in answered.frame_indices)
    objects = tuple(
        SampleObject(object_id=f"object{obj.number}", category="", masks=dict(masks))
        for obj, masks in zip(answered.question.objects, answered.masks, strict=True)
    )
    key = sample_key("qa", video.name, answered.question.text, answered.answer, frames, answered.mode,
                     [sorted(o.masks) for o in objects])
    return Sample(
        key=key,
        task="qa",
        video_uri=video.name,
        conversations=(Turn(role="human", value=answered.question.text), Turn(role="gpt", value=answered.answer)),
        objects=objects,
        frame_indices=frames,
        extra_frame_indices=extra_frames_of(frames, objects),
        clip_id=key,
        height=video.info.height,
        width=video.info.width,
        provenance=answered.provenance,
        extra={"mode": answered.mode, "source": "videorefer app"},
    )
