"""The released VideoRefer-700K JSON format: import its items as validated `Sample`s and export samples back.

An item is `{"video", "conversations": [{"from", "value"}], "annotation": [{frame_str: {"segmentation": RLE}}],
optional "height"/"width", ...}` with one annotation dict per `<region>` token, in order (PAPER.md "Released
sample format"). Import converts polygons and uncompressed RLE to compressed RLE, and turns every item that would
crash or mislead a loader (null or missing segmentation, empty masks, a `<region>` count that differs from the
annotations, malformed conversations) into a `Reject` with a reason code. Keys the format does not define are
kept in `Sample.extra`, so `export_700k(import_700k(x))` gives `x` back for valid items (RLE normalised).
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping, Sequence
from typing import Any

from engine.errors import InvalidSampleError, RejectReason
from engine.ids import clip_id as make_clip_id
from engine.ids import sample_key, stable_hash
from engine.masks import decode_rle, encode_rle
from engine.types import Reject, RleMask, Sample, SampleObject, Task, Turn
from storage.root import EXPORT_JSON_DIR, DatasetRoot
from storage.samples import validate_sample

STAGE = "import_700k"
_KNOWN_KEYS = {"video", "conversations", "annotation", "height", "width"}


def infer_task(conversations: Sequence[Turn]) -> Task:
    """`short` or `detailed` from the paper's prompt shapes, `qa` for anything else."""
    first = conversations[0].value.lower() if conversations else ""
    if "in brief" in first:
        return "short"
    if "in detail" in first:
        return "detailed"
    return "qa"


def segmentation_to_rle(segmentation: Any, height: int | None, width: int | None) -> RleMask:
    """Compressed RLE of a released segmentation: compressed RLE, uncompressed RLE or polygons (needs the size)."""
    if segmentation is None or (isinstance(segmentation, dict | list | str) and not segmentation):
        raise InvalidSampleError("segmentation is null or empty", reason=RejectReason.MISSING_MASK)
    if isinstance(segmentation, Mapping):
        if "counts" not in segmentation or "size" not in segmentation:
            raise InvalidSampleError("RLE without size or counts", reason=RejectReason.MISSING_MASK)
        counts = segmentation["counts"]
        if isinstance(counts, str | bytes):
            return RleMask.from_coco(segmentation)
        return RleMask.from_coco(encode_rle(decode_rle(segmentation)))  # uncompressed (list) counts
    if isinstance(segmentation, list):
        if not height or not width:
            raise InvalidSampleError("polygon segmentation without the item's height and width")
        from pycocotools import mask as coco_mask

        polygons = (
            [list(map(float, p)) for p in segmentation]
            if isinstance(segmentation[0], list)
            else [list(map(float, segmentation))]
        )
        merged = coco_mask.merge(coco_mask.frPyObjects(polygons, int(height), int(width)))
        return RleMask.from_coco(encode_rle(coco_mask.decode(merged)))
    raise InvalidSampleError(f"unsupported segmentation of type {type(segmentation).__name__}")


def _item_sample(item: Mapping[str, Any], position: int, video_root: str, task: Task | None) -> Sample:
    if not isinstance(item, Mapping):
        raise InvalidSampleError(f"item {position} is not a JSON object")
    video = item.get("video")
    if not isinstance(video, str) or not video:
        raise InvalidSampleError("item has no video path")
    turns = item.get("conversations")
    if not isinstance(turns, list) or not all(isinstance(t, Mapping) and "from" in t and "value" in t for t in turns):
        raise InvalidSampleError("conversations must be a list of {from, value}")
    conversations = tuple(Turn(role=t["from"], value=t["value"]) for t in turns)
    annotation = item.get("annotation")
    if annotation is None or not isinstance(annotation, list) or not annotation:
        raise InvalidSampleError("item has no annotation", reason=RejectReason.MISSING_MASK)
    height, width = item.get("height"), item.get("width")
    video_uri = posixpath.join(video_root, video) if video_root else video
    clip = make_clip_id(video_uri, None, None)
    objects = []
    for number, frames in enumerate(annotation):
        if not isinstance(frames, Mapping) or not frames:
            raise InvalidSampleError(f"object {number} has no annotated frames", reason=RejectReason.MISSING_MASK)
        masks: dict[int, RleMask] = {}
        for frame, entry in frames.items():
            if not isinstance(entry, Mapping) or "segmentation" not in entry:
                raise InvalidSampleError(
                    f"object {number} frame {frame}: segmentation missing", reason=RejectReason.MISSING_MASK
                )
            try:
                masks[int(frame)] = segmentation_to_rle(entry["segmentation"], height, width)
            except InvalidSampleError as exc:
                raise InvalidSampleError(f"object {number} frame {frame}: {exc}", reason=exc.reason) from exc
            except (ValueError, TypeError, KeyError) as exc:
                raise InvalidSampleError(f"object {number} frame {frame}: bad segmentation ({exc})") from exc
        object_id = stable_hash("700k_object", clip, number, sorted(masks))
        objects.append(SampleObject(object_id=object_id, category="", masks=masks))
    first_mask = next(iter(objects[0].masks.values()))
    chosen_task = task or infer_task(conversations)
    extra = {key: value for key, value in item.items() if key not in _KNOWN_KEYS}
    return Sample(
        key=sample_key(chosen_task, "700k", video, turns, annotation),
        task=chosen_task,
        video_uri=video_uri,
        conversations=conversations,
        objects=tuple(objects),
        clip_id=clip,
        height=int(height) if height else first_mask.height,
        width=int(width) if width else first_mask.width,
        extra={
            "source_format": "videorefer-700k",
            "video": video,
            "has_size": height is not None or width is not None,
            "item_extra": extra,
        },
    )


def import_700k(
    items: Sequence[Mapping[str, Any]], *, grid: int, video_root: str = "", task: Task | None = None
) -> tuple[list[Sample], list[Reject]]:
    """Validated samples from released items, and a `Reject` (with reason code) for every unusable item.

    `grid` is the vision feature grid masks are checked on (`storage.samples.vision_grid`); `video_root` is
    joined to each item's relative `video`; `task` overrides the task inferred from the prompt.
    """
    samples: list[Sample] = []
    rejects: list[Reject] = []
    for position, item in enumerate(items):
        item_id = f"item{position}"
        try:
            sample = _item_sample(item, position, video_root, task)
        except InvalidSampleError as exc:
            video = item.get("video") if isinstance(item, Mapping) else None
            clip = make_clip_id(str(video), None, None) if isinstance(video, str) else ""
            rejects.append(Reject(stage=STAGE, item_id=item_id, clip_id=clip, reason=exc.reason, message=str(exc)))
            continue
        # Frames are decoded at training time for imported items, so no frame-membership check (no frame indices).
        problems = validate_sample(sample, grid=grid)
        if problems:
            message = "; ".join(text for _, text in problems)
            rejects.append(
                Reject(stage=STAGE, item_id=item_id, clip_id=sample.clip_id, reason=problems[0][0], message=message)
            )
            continue
        samples.append(sample)
    return samples, rejects


def export_700k(samples: Sequence[Sample], *, video_root: str = "") -> list[dict[str, Any]]:
    """Samples as released-format items; `video` is the imported relative path, or `video_uri` made relative to
    `video_root` when given."""
    items = []
    for sample in samples:
        extra = dict(sample.extra)
        video = extra.get("video")
        if not isinstance(video, str):
            video = sample.video_uri
            if video_root and video.startswith(video_root.rstrip("/") + "/"):
                video = video[len(video_root.rstrip("/")) + 1 :]
        item: dict[str, Any] = {
            "video": video,
            "conversations": [{"from": t.role, "value": t.value} for t in sample.conversations],
            "annotation": [
                {str(frame): {"segmentation": mask.to_coco()} for frame, mask in sorted(o.masks.items())}
                for o in sample.objects
            ],
        }
        if extra.get("has_size", extra.get("source_format") != "videorefer-700k"):
            item["height"], item["width"] = sample.height, sample.width
        item.update(extra.get("item_extra") or {})
        items.append(item)
    return items


def write_export_json(root: DatasetRoot, name: str, samples: Sequence[Sample]) -> str:
    """Write samples as `export/json/<name>.json` in the released format; returns the relative path."""
    relative = f"{EXPORT_JSON_DIR}/{name}.json"
    root.write_json(relative, export_700k(samples))
    return relative


EXPORT_META = f"{EXPORT_JSON_DIR}/_export.json"


def _is_absolute(video: str) -> bool:
    return "://" in video or video.startswith("/")


def video_root_of(items: Sequence[Mapping[str, Any]], dataset_root: DatasetRoot) -> tuple[str, list[dict[str, Any]]]:
    """The video root of a set of items and the items with `video` relative to it.

    Items whose videos are all relative (the engine names a video under the dataset root relative to the root)
    keep their paths and the root is the dataset root. Otherwise every local video is made absolute (relative
    ones joined to the dataset root) and the root is their deepest common folder; a URL among them (another
    file system) leaves every path as it is, under an empty root.
    """
    videos = [str(item.get("video", "")) for item in items]
    base = dataset_root.url_of("").rstrip("/")
    if not any(_is_absolute(v) for v in videos):
        return base, [dict(item) for item in items]
    if any("://" in v for v in videos) or not dataset_root.is_local:
        return "", [dict(item) for item in items]
    absolute = [v if v.startswith("/") else posixpath.join(base, v) for v in videos]
    root = posixpath.commonpath([posixpath.dirname(posixpath.normpath(v)) for v in absolute])
    relative = [posixpath.relpath(posixpath.normpath(v), root) for v in absolute]
    return root, [{**item, "video": video} for item, video in zip(items, relative, strict=True)]


def write_export_files(
    root: DatasetRoot, items: Sequence[Mapping[str, Any]], *, name: str = "train", max_items: int = 200_000
) -> list[str]:
    """Write one export's released-format items: `export/json/<name>.json`, or `<name>-NNNNNN.json` parts of at
    most `max_items` items when there are more, plus `export/json/_export.json` stating the video root.

    Each item's `video` is relative to that root (`video_root_of`): a reader joins `video_root` and `video`,
    e.g. `videorefer import-700k --json export/json/train.json --videos <video_root>`. `_export.json` is
    `{"format": "videorefer-700k", "video_root", "files", "items"}`. Files of an earlier write under the same
    name are removed first; with no items nothing is written. Returns the paths written, relative to the root.
    """
    if max_items <= 0:
        raise ValueError("max_items must be positive")
    for existing in root.listdir(EXPORT_JSON_DIR):
        stem, part = existing.removesuffix(".json"), existing.removesuffix(".json")[len(name) + 1 :]
        if existing.endswith(".json") and (stem == name or stem.startswith(f"{name}-") and part.isdigit()):
            root.delete(f"{EXPORT_JSON_DIR}/{existing}")
    root.delete(EXPORT_META)
    if not items:
        return []
    video_root, relative = video_root_of(items, root)
    chunks = [relative[i : i + max_items] for i in range(0, len(relative), max_items)]
    names = [f"{name}.json"] if len(chunks) == 1 else [f"{name}-{n:06d}.json" for n in range(len(chunks))]
    written = []
    for file_name, chunk in zip(names, chunks, strict=True):
        root.write_json(f"{EXPORT_JSON_DIR}/{file_name}", chunk)
        written.append(f"{EXPORT_JSON_DIR}/{file_name}")
    meta = {"format": "videorefer-700k", "video_root": video_root, "files": names, "items": len(relative)}
    root.write_json(EXPORT_META, meta)
    return [*written, EXPORT_META]


def read_700k(root: DatasetRoot, relative: str) -> list[dict[str, Any]]:
    """The items of a released-format JSON file inside a root (or a directory given as a root)."""
    items = root.read_json(relative)
    if not isinstance(items, list):
        raise InvalidSampleError(f"{relative} is not a JSON list of items")
    return items
