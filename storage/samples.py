"""Training samples: their JSON form (DESIGN.md section 5), their validation, and building them from engine records.

`sample_to_json`/`sample_from_json` are the `json` member of a WebDataset sample (`extra_frame_indices`, the mask
frames stored after the sampled frames, reads as empty from samples written before it existed). `validate_sample`
lists every reason a sample cannot train the model (missing, empty or grid-vanishing masks, a `<region>` count that
differs from the objects, malformed conversations, mask sizes that disagree, a mask frame that is neither a sampled
nor an extra frame, extra frames that are unsorted, repeated, among the sampled ones or maskless, more frames than
a shard can name); an empty list means valid. Masks are checked on the vision feature grid of the model the shards
are for, which every caller names (`grid`, see `vision_grid`: `image_size // patch_size`, 27 for SigLIP at 384 px,
8 for the tiny model's 64 px and patch 8): there is no default, so a shard for another image size is never checked
on a grid it will not be trained at. The builders turn accepted `ObjectRecord`s and `ClipQA`s into
detailed, short and QA samples with the paper's prompt shapes, choosing among a few fixed templates by a hash of
the sample key, so the same inputs always give the same samples. Single-frame mode annotates one frame (the key
frame when it is among the sampled frames, else the first sampled frame with a mask); multi-frame mode annotates
every sampled frame that has a mask.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from engine.errors import InvalidSampleError, RejectReason
from engine.ids import sample_key, stable_hash
from engine.masks import decode_rle, resize_to_grid
from engine.parsing import current_text_limit, text_problem
from engine.types import (
    REGION_TOKEN,
    VIDEO_TOKEN,
    ClipQA,
    Masklet,
    ObjectRecord,
    Provenance,
    Reject,
    RleMask,
    Sample,
    SampleObject,
    Turn,
)

SAMPLE_SCHEMA_VERSION = 1
SIGLIP_PATCH_SIZE = 14  # the patch of the release's vision tower (SigLIP so400m): 384 px -> a 27 x 27 grid
MAX_SAMPLE_FRAMES = 100  # stored frames are named `00.jpg` .. `99.jpg`: a sample needing more is rejected
TASKS = ("detailed", "short", "qa")
VIDEO_PREFIX = f"{VIDEO_TOKEN}\n"

# The paper's prompt shapes, a few wordings each; `{region}` becomes the `<region>` token.
DETAILED_TEMPLATES = (
    "Please describe in detail the object {region} in the video.",
    "Could you describe in detail the object {region} in the video?",
    "Watch carefully and describe in detail the object {region} in the video, its appearance and its motion.",
    "I would like you to describe in detail the object {region} in the video.",
)
SHORT_TEMPLATES = (
    "Please describe the object {region} in the video in brief.",
    "Could you describe the object {region} in the video in brief?",
    "What is it? Describe the object {region} in the video in brief.",
    "In a few words, describe the object {region} in the video in brief.",
)
Problem = tuple[RejectReason, str]


# ---------------------------------------------------------------- JSON


def _provenance_json(p: Provenance) -> dict[str, Any]:
    return {
        "agent": p.agent,
        "backend": p.backend,
        "model": p.model,
        "prompt_version": p.prompt_version,
        "latency_s": p.latency_s,
        "prompt_tokens": p.prompt_tokens,
        "completion_tokens": p.completion_tokens,
    }


def sample_to_json(sample: Sample) -> dict[str, Any]:
    """The `json` member of a WebDataset sample: plain JSON values, masks as COCO RLE keyed by frame index string."""
    return {
        "schema_version": SAMPLE_SCHEMA_VERSION,
        "key": sample.key,
        "task": sample.task,
        "clip_id": sample.clip_id,
        "video": sample.video_uri,
        "height": sample.height,
        "width": sample.width,
        "frame_indices": [int(i) for i in sample.frame_indices],
        "extra_frame_indices": [int(i) for i in sample.extra_frame_indices],
        "conversations": [{"from": t.role, "value": t.value} for t in sample.conversations],
        "objects": [
            {
                "id": o.object_id,
                "category": o.category,
                "masks": {str(int(frame)): mask.to_coco() for frame, mask in sorted(o.masks.items())},
            }
            for o in sample.objects
        ],
        "provenance": [_provenance_json(p) for p in sample.provenance],
        "extra": dict(sample.extra),
    }


def sample_from_json(data: Mapping[str, Any]) -> Sample:
    """The inverse of `sample_to_json`; a structurally broken document raises `InvalidSampleError`."""
    version = data.get("schema_version")
    if version != SAMPLE_SCHEMA_VERSION:
        raise InvalidSampleError(f"unsupported sample schema_version {version!r}")
    try:
        return Sample(
            key=str(data["key"]),
            task=data["task"],
            video_uri=str(data.get("video", "")),
            clip_id=str(data.get("clip_id", "")),
            height=int(data.get("height", 0)),
            width=int(data.get("width", 0)),
            frame_indices=tuple(int(i) for i in data.get("frame_indices", ())),
            extra_frame_indices=tuple(int(i) for i in data.get("extra_frame_indices") or ()),
            conversations=tuple(Turn(role=t["from"], value=t["value"]) for t in data["conversations"]),
            objects=tuple(
                SampleObject(
                    object_id=str(o["id"]),
                    category=str(o.get("category", "")),
                    masks={int(frame): RleMask.from_coco(rle) for frame, rle in o["masks"].items()},
                )
                for o in data["objects"]
            ),
            provenance=tuple(Provenance(**p) for p in data.get("provenance", ())),
            extra=dict(data.get("extra") or {}),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise InvalidSampleError(f"malformed sample JSON: {exc!r}") from exc


# ---------------------------------------------------------------- validation


def vision_grid(image_size: int, patch_size: int = SIGLIP_PATCH_SIZE) -> int:
    """Side of the vision feature grid of a model with square inputs of `image_size` and patches of `patch_size`.

    `image_size // patch_size`, as `model.configuration.VideoReferConfig.grid_size`: 27 for SigLIP at 384 px (the
    release), 8 for the tiny model (64 px, patch 8). The export knows its `sampling.image_size`; the patch is the
    vision tower's (14 for SigLIP).
    """
    image_size, patch_size = int(image_size), int(patch_size)
    if patch_size <= 0 or image_size < patch_size:
        raise ValueError(f"image size {image_size} and patch size {patch_size} give no vision grid")
    return image_size // patch_size


def require_grid(grid: int) -> int:
    """`grid` as an int when it is a positive integer (the side of a vision feature grid), else ValueError."""
    if isinstance(grid, bool) or not isinstance(grid, int | np.integer) or grid <= 0:
        raise ValueError(f"grid must be a positive int (the side of the vision feature grid), got {grid!r}")
    return int(grid)


def region_count(conversations: Sequence[Turn]) -> int:
    """Number of `<region>` tokens in the human turns."""
    return sum(t.value.count(REGION_TOKEN) for t in conversations if t.role == "human")


def conversation_problems(conversations: Sequence[Turn]) -> list[Problem]:
    """Malformed turns: empty, not alternating human/gpt, not opening with `<video>\\n`, not ending on gpt; a text
    above the process's text limit (`engine.parsing.text_limit`: `limits.max_text_chars` of the run) or holding
    control characters."""
    bad = RejectReason.MALFORMED_SAMPLE
    if not conversations:
        return [(bad, "no conversation turns")]
    problems: list[Problem] = []
    for index, turn in enumerate(conversations):
        expected = "human" if index % 2 == 0 else "gpt"
        if turn.role != expected:
            problems.append((bad, f"turn {index} is from {turn.role!r}, expected {expected!r}"))
        if not isinstance(turn.value, str) or not turn.value.strip():
            problems.append((bad, f"turn {index} is empty"))
    limit = current_text_limit()
    for index, turn in enumerate(conversations):
        if isinstance(turn.value, str) and (problem := text_problem(turn.value, limit)) is not None:
            reason = RejectReason.TEXT_TOO_LONG if len(turn.value) > limit else RejectReason.CONTROL_CHARACTERS
            problems.append((reason, f"turn {index} {problem}"))
    first = conversations[0].value if isinstance(conversations[0].value, str) else ""
    if not first.startswith(VIDEO_PREFIX):
        problems.append((bad, "the first human turn does not start with '<video>\\n'"))
    video_tokens = sum(t.value.count(VIDEO_TOKEN) for t in conversations if isinstance(t.value, str))
    if video_tokens != 1:
        problems.append((bad, f"{video_tokens} '<video>' tokens in the conversation, expected 1"))
    if conversations[-1].role != "gpt":
        problems.append((bad, "the last turn is not an answer from gpt"))
    return problems


def validate_sample(sample: Sample, *, grid: int) -> list[Problem]:
    """Every reason `sample` cannot train the model, as (reason code, message); an empty list means valid.

    Checks: task name; conversations (see `conversation_problems`); `<region>` count == number of objects; each
    object has masks, each mask decodes, matches the sample's height/width, is not empty and does not vanish on
    the `grid` x `grid` vision feature grid; when frames are pre-sampled, the stored frames are valid (see
    `frame_problems`) and every mask frame is a sampled or an extra frame. `grid` is required: the side of the
    grid of the model the sample is for (`vision_grid(image_size, patch_size)`).
    """
    grid = require_grid(grid)
    problems: list[Problem] = []
    if sample.task not in TASKS:
        problems.append((RejectReason.MALFORMED_SAMPLE, f"unknown task {sample.task!r}"))
    if not sample.key or "." in sample.key or "/" in sample.key:
        problems.append((RejectReason.MALFORMED_SAMPLE, f"sample key {sample.key!r} is empty or has '.' or '/'"))
    problems.extend(conversation_problems(sample.conversations))
    regions = region_count(sample.conversations)
    if regions != len(sample.objects):
        problems.append(
            (RejectReason.REGION_COUNT_MISMATCH, f"{regions} {REGION_TOKEN} tokens but {len(sample.objects)} objects")
        )
    if not sample.objects:
        problems.append((RejectReason.MISSING_MASK, "sample has no objects"))
    problems.extend(frame_problems(sample))
    stored = set(sample.stored_frame_indices)
    for number, obj in enumerate(sample.objects):
        problems.extend(_object_problems(number, obj, sample, stored, grid))
    return problems


def extra_frames_of(frame_indices: Sequence[int], objects: Sequence[SampleObject]) -> tuple[int, ...]:
    """The mask frames of `objects` not among `frame_indices`, ascending and distinct: a sample's extra frames."""
    sampled = {int(i) for i in frame_indices}
    return tuple(sorted({int(frame) for obj in objects for frame in obj.masks} - sampled))


def frame_problems(sample: Sample) -> list[Problem]:
    """What is wrong with a sample's stored frames: extra frames without sampled frames, unsorted or repeated,
    among the sampled frames, or holding no mask; more than `MAX_SAMPLE_FRAMES` frames in all."""
    bad = RejectReason.MALFORMED_SAMPLE
    problems: list[Problem] = []
    extras = [int(i) for i in sample.extra_frame_indices]
    if extras and not sample.frame_indices:
        problems.append((bad, f"extra frames {extras} but no sampled frames"))
    if any(b <= a for a, b in zip(extras, extras[1:], strict=False)):
        problems.append((bad, f"extra frames {extras} are not ascending and distinct"))
    overlap = sorted(set(extras) & {int(i) for i in sample.frame_indices})
    if overlap:
        problems.append((bad, f"extra frames {overlap} are also sampled frames"))
    masked = {int(frame) for obj in sample.objects for frame in obj.masks}
    maskless = sorted(set(extras) - masked)
    if maskless:
        problems.append((bad, f"extra frames {maskless} hold no mask"))
    total = len(sample.frame_indices) + len(extras)
    if total > MAX_SAMPLE_FRAMES:
        message = (
            f"{total} frames ({len(sample.frame_indices)} sampled + {len(extras)} extra mask frames);"
            f" a shard holds at most {MAX_SAMPLE_FRAMES}"
        )
        problems.insert(0, (RejectReason.TOO_MANY_FRAMES, message))
    return problems


def _object_problems(number: int, obj: SampleObject, sample: Sample, stored: set[int], grid: int) -> list[Problem]:
    name = f"object {number} ({obj.object_id})"
    if not obj.masks:
        return [(RejectReason.MISSING_MASK, f"{name} has no masks")]
    problems: list[Problem] = []
    for frame, rle in sorted(obj.masks.items()):
        where = f"{name} on frame {frame}"
        if rle is None:
            problems.append((RejectReason.MISSING_MASK, f"{where}: mask is null"))
            continue
        if sample.frame_indices and frame not in stored:
            message = f"{where}: frame is neither a sampled frame nor an extra frame"
            problems.append((RejectReason.MALFORMED_SAMPLE, message))
        if sample.height and sample.width and (rle.height, rle.width) != (sample.height, sample.width):
            problems.append(
                (
                    RejectReason.MALFORMED_SAMPLE,
                    f"{where}: mask size {rle.height}x{rle.width} != sample size {sample.height}x{sample.width}",
                )
            )
        verdict = _mask_verdict(rle.counts, rle.height, rle.width, grid)
        if verdict == "inconsistent":
            message = f"{where}: RLE counts do not cover {rle.height}x{rle.width} pixels"
            problems.append((RejectReason.MALFORMED_SAMPLE, message))
        elif verdict == "empty":
            problems.append((RejectReason.EMPTY_MASKLET, f"{where}: mask is empty"))
        elif verdict == "vanishes":
            problems.append((RejectReason.MASK_VANISHES_ON_GRID, f"{where}: mask vanishes on the {grid}x{grid} grid"))
    return problems


@functools.lru_cache(maxsize=4096)
def _mask_verdict(counts: str, height: int, width: int, grid: int) -> str | None:
    # What is wrong with one mask on one grid, if anything: a pure function of the mask, memoised because the
    # samples of one clip (its detailed, short and QA samples) carry the same masks and the export validates
    # each sample; decoding a mask was most of the validation's time (benchmarks/export_throughput.py).
    try:  # engine.masks checks the runs (non-negative, covering height x width) before pycocotools decodes them
        mask = decode_rle(RleMask(height=height, width=width, counts=counts))
    except ValueError:
        return "inconsistent"
    if not mask.any():
        return "empty"
    return "vanishes" if vanishes_on_grid(mask, grid) else None


@functools.lru_cache(maxsize=64)
def _grid_support(size: int, grid: int) -> np.ndarray:
    # Source pixels with a non-zero bilinear weight in some grid cell, read off `resize_to_grid` itself (resizing
    # an identity matrix to `grid` x `size` yields its row weights), so this follows engine.masks exactly.
    weights = resize_to_grid(np.eye(size), grid, size)
    return np.flatnonzero(weights.sum(axis=0) > 0)


def vanishes_on_grid(mask: np.ndarray, grid: int) -> bool:
    """`engine.masks.grid_occupancy(mask, grid) == 0`, without the full-resolution matrix products.

    The weights are non-negative, so some cell is above zero exactly when a set pixel lies on a supported row
    and a supported column; checking that subgrid costs a few microseconds instead of milliseconds per mask.
    """
    rows = _grid_support(mask.shape[0], grid)
    cols = _grid_support(mask.shape[1], grid)
    return not bool(mask[np.ix_(rows, cols)].any())


def rle_runs(counts: str) -> list[int] | None:
    """The run lengths of COCO compressed RLE counts, or None when the string is not valid RLE.

    pycocotools decodes corrupt counts silently into garbage masks, so they are parsed here first.
    """
    runs: list[int] = []
    position = 0
    while position < len(counts):
        value, shift, more = 0, 0, True
        while more:
            if position >= len(counts):
                return None
            char = ord(counts[position]) - 48
            if not 0 <= char < 64:
                return None
            value |= (char & 0x1F) << (5 * shift)
            more = bool(char & 0x20)
            position += 1
            shift += 1
            if not more and char & 0x10:
                value |= -1 << (5 * shift)
        if len(runs) > 2:
            value += runs[-2]
        runs.append(value)
    return runs


def rle_is_consistent(rle: RleMask) -> bool:
    """True when the runs are non-negative and cover exactly height x width pixels."""
    runs = rle_runs(rle.counts)
    return runs is not None and all(run >= 0 for run in runs) and sum(runs) == rle.height * rle.width


def check_sample(sample: Sample, *, grid: int) -> None:
    """Raise `InvalidSampleError` (with the first problem's reason) when `sample` is not valid."""
    problems = validate_sample(sample, grid=grid)
    if problems:
        reason, _ = problems[0]
        raise InvalidSampleError("; ".join(message for _, message in problems), reason=reason)


def reject_for(sample: Sample, problems: Sequence[Problem], *, stage: str = "export") -> Reject:
    """The reject record of an invalid sample: the first problem's reason, every message."""
    return Reject(
        stage=stage,
        item_id=sample.key,
        clip_id=sample.clip_id,
        reason=problems[0][0],
        message="; ".join(message for _, message in problems),
    )


# ---------------------------------------------------------------- builders


def pick_template(key: str, templates: Sequence[str]) -> str:
    """One of `templates`, chosen by a hash of the sample key (stable across runs and machines)."""
    return templates[int(stable_hash("template", key), 16) % len(templates)]


def use_multi_frame(ratio: float, seed: int, *parts: Any) -> bool:
    """Deterministic coin with probability `ratio` for the item named by `parts` (half single, half multi)."""
    return int(stable_hash("multi_frame", seed, *parts), 16) / 16**16 < ratio


def select_mask_frames(masklet: Masklet, frame_indices: Sequence[int], *, multi_frame: bool) -> dict[int, RleMask]:
    """The masks a sample carries: every sampled frame with a non-empty mask, or one of them in single-frame mode.

    With no pre-sampled frames every mask frame is a candidate. Single-frame mode takes the key frame when it is
    a candidate, else the first candidate.
    """
    sampled = set(frame_indices)
    candidates = [
        frame
        for frame in sorted(masklet.masks)
        if (not sampled or frame in sampled) and decode_rle(masklet.masks[frame]).any()
    ]
    if not candidates:
        return {}
    if multi_frame:
        return {frame: masklet.masks[frame] for frame in candidates}
    chosen = masklet.key_frame if masklet.key_frame in candidates else candidates[0]
    return {chosen: masklet.masks[chosen]}


def _sample_object(record: ObjectRecord, frame_indices: Sequence[int], multi_frame: bool) -> SampleObject:
    if record.masklet is None:
        raise InvalidSampleError(f"object {record.object_id} has no masklet", reason=RejectReason.MISSING_MASK)
    masks = select_mask_frames(record.masklet, frame_indices, multi_frame=multi_frame)
    if not masks:
        raise InvalidSampleError(
            f"object {record.object_id} has no non-empty mask on the sampled frames", reason=RejectReason.MISSING_MASK
        )
    return SampleObject(object_id=record.object_id, category=record.category or record.noun, masks=masks)


def _size(record: ObjectRecord, obj: SampleObject) -> tuple[int, int]:
    if record.clip.height and record.clip.width:
        return record.clip.height, record.clip.width
    first = next(iter(obj.masks.values()))
    return first.height, first.width


def _caption_sample(
    task: str,
    record: ObjectRecord,
    caption: str | None,
    templates: Sequence[str],
    *,
    frame_indices: Sequence[int],
    multi_frame: bool,
    seed: int,
) -> Sample:
    if not caption or not caption.strip():
        raise InvalidSampleError(f"object {record.object_id} has no {task} caption")
    obj = _sample_object(record, frame_indices, multi_frame)
    frames = [int(i) for i in frame_indices]
    key = sample_key(task, record.object_id, frames, sorted(obj.masks), seed, caption)
    question = VIDEO_PREFIX + pick_template(key, templates).format(region=REGION_TOKEN)
    height, width = _size(record, obj)
    return Sample(
        key=key,
        task=task,  # type: ignore[arg-type]  # one of TASKS by construction
        video_uri=record.clip.video_uri,
        conversations=(Turn(role="human", value=question), Turn(role="gpt", value=caption.strip())),
        objects=(obj,),
        frame_indices=tuple(frames),
        clip_id=record.clip.clip_id,
        height=height,
        width=width,
        provenance=record.provenance,
        extra={"mode": "multi" if multi_frame else "single", "noun": record.noun},
    )


def detailed_sample(record: ObjectRecord, *, frame_indices: Sequence[int], multi_frame: bool, seed: int = 0) -> Sample:
    """A detailed-caption sample of one accepted object (needs its masklet and refined `detailed_caption`)."""
    return _caption_sample(
        "detailed",
        record,
        record.detailed_caption,
        DETAILED_TEMPLATES,
        frame_indices=frame_indices,
        multi_frame=multi_frame,
        seed=seed,
    )


def short_sample(
    record: ObjectRecord, *, frame_indices: Sequence[int], seed: int = 0, multi_frame: bool = False
) -> Sample:
    """A short-caption sample (single-frame by default, as in the paper); the caption is the object's
    `short_caption`, or the clip's own caption when none was written."""
    caption = record.short_caption or record.clip.caption
    return _caption_sample(
        "short", record, caption, SHORT_TEMPLATES, frame_indices=frame_indices, multi_frame=multi_frame, seed=seed
    )


def qa_question_text(question: str, num_objects: int, options: Sequence[str] = ()) -> str:
    """The human turn of a QA sample: the question with one `<region>` per object, options as (A) ... lines.

    A question that already holds one `<region>` per object is kept; otherwise the objects are introduced first,
    named `<object0>`, `<object1>`, ... as in the released data when there are several.
    """
    text = question.strip()
    if text.count(REGION_TOKEN) != num_objects:
        text = text.replace(REGION_TOKEN, "").strip()
        if num_objects == 1:
            text = f"Look at the object {REGION_TOKEN} in the video. {text}"
        else:
            named = ", ".join(f"<object{i}> {REGION_TOKEN}" for i in range(num_objects))
            text = f"There are {num_objects} objects in the video: {named}. {text}"
    if options:
        letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
        text += "\nOptions:\n" + "\n".join(f"({letters[i]}) {option}" for i, option in enumerate(options))
    return VIDEO_PREFIX + text


def qa_samples(
    clip_qa: ClipQA, *, frame_indices: Sequence[int], multi_frame: bool, seed: int = 0
) -> tuple[list[Sample], list[Reject]]:
    """One sample per question of a clip; a question whose objects are unknown or maskless becomes a Reject."""
    by_id = {o.object_id: o for o in clip_qa.objects}
    frames = [int(i) for i in frame_indices]
    samples: list[Sample] = []
    rejects: list[Reject] = []
    for pair in clip_qa.qa:
        key = sample_key("qa", clip_qa.clip.clip_id, list(pair.object_ids), pair.question, frames, multi_frame, seed)
        try:
            missing = [i for i in pair.object_ids if i not in by_id]
            if missing or not pair.object_ids:
                raise InvalidSampleError(f"question refers to unknown objects {missing or '(none)'}")
            if not pair.answer.strip() or not pair.question.strip():
                raise InvalidSampleError("empty question or answer")
            records = [by_id[i] for i in pair.object_ids]
            objects = tuple(_sample_object(r, frames, multi_frame) for r in records)
        except InvalidSampleError as exc:
            rejects.append(
                Reject(stage="export", item_id=key, clip_id=clip_qa.clip.clip_id, reason=exc.reason, message=str(exc))
            )
            continue
        height, width = _size(records[0], objects[0])
        samples.append(
            Sample(
                key=key,
                task="qa",
                video_uri=clip_qa.clip.video_uri,
                conversations=(
                    Turn(role="human", value=qa_question_text(pair.question, len(objects), pair.options)),
                    Turn(role="gpt", value=pair.answer.strip()),
                ),
                objects=objects,
                frame_indices=tuple(frames),
                clip_id=clip_qa.clip.clip_id,
                height=height,
                width=width,
                provenance=clip_qa.provenance,
                extra={"mode": "multi" if multi_frame else "single", "qa_type": pair.qa_type},
            )
        )
    return samples, rejects
