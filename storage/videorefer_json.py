"""The released VideoRefer-700K JSON format: import its items as validated `Sample`s and export samples back.

An item is `{"video", "conversations": [{"from", "value"}], "annotation": [{frame_str: {"segmentation": RLE}}],
optional "height"/"width", ...}` with one annotation dict per `<region>` token, in order (PAPER.md "Released
sample format"). Import converts polygons and uncompressed RLE to compressed RLE, and turns every item that would
crash or mislead a loader (null or missing segmentation, empty masks, a `<region>` count that differs from the
annotations, malformed conversations) into a `Reject` with a reason code. Masks are checked before they are
decoded (`engine.masks.validated_mask`: RLE counts cover exactly height x width, polygons inside the image, one
size per item that equals its declared height/width), frames are integers from 0, texts at most
`max_text_chars` long, and a local video must resolve inside the video root (or `allowed_roots`): `..`, an
absolute path elsewhere or a symlink out of the root is `path_not_allowed`, unless `allow_outside`. Keys the
format does not define are kept in `Sample.extra`, so `export_700k(import_700k(x))` gives `x` back for valid
items (RLE normalised).
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

from engine.errors import DATA_ERRORS, InvalidSampleError, PathNotAllowedError, RejectReason
from engine.ids import clip_id as make_clip_id
from engine.ids import sample_key, stable_hash
from engine.masks import validated_mask
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
    """Compressed RLE of a released segmentation: compressed RLE, uncompressed RLE or polygons (needs the size).

    Checked before anything decodes it (`engine.masks.validated_mask`): RLE counts must cover exactly height x
    width, polygons lie inside the image, and with `height`/`width` given an RLE must have that size.
    `InvalidSampleError` (an `InvalidMaskError` for bad masks) with the reason otherwise.
    """
    if segmentation is None or (isinstance(segmentation, dict | list | str) and not segmentation):
        raise InvalidSampleError("segmentation is null or empty", reason=RejectReason.MISSING_MASK)
    if isinstance(segmentation, Mapping):
        if "counts" not in segmentation or "size" not in segmentation:
            raise InvalidSampleError("RLE without size or counts", reason=RejectReason.MISSING_MASK)
        if height and width:
            return validated_mask(segmentation, height=int(height), width=int(width))
        return validated_mask(segmentation)
    if isinstance(segmentation, list):
        if not height or not width:
            raise InvalidSampleError("polygon segmentation without the item's height and width")
        return validated_mask(segmentation, height=int(height), width=int(width))
    raise InvalidSampleError(f"unsupported segmentation of type {type(segmentation).__name__}")


def _frame_index(frame: Any) -> int:
    try:
        index = int(frame)
    except (TypeError, ValueError) as exc:
        raise InvalidSampleError(f"frame key {frame!r} is not an integer") from exc
    if index < 0:
        raise InvalidSampleError(
            f"mask on frame {index}: frames are 0, 1, 2, ...", reason=RejectReason.FRAME_OUT_OF_RANGE
        )
    return index


def _check_video_path(video: str, video_root: str, allowed_roots: Sequence[str] | None, allow_outside: bool) -> None:
    """A local video must resolve inside the video root or `allowed_roots` (None: the video root alone)."""
    if allow_outside or "://" in video:
        return
    if "://" in video_root:  # a remote root: the item's path must stay below it
        normal = posixpath.normpath(video)
        if video.startswith("/") or normal == ".." or normal.startswith("../"):
            raise PathNotAllowedError(f"video {video!r} leaves the video root {video_root}")
        return
    from engine.paths import resolve_allowed

    roots = [video_root or "."] + list(allowed_roots or ())
    resolve_allowed(posixpath.join(video_root, video) if video_root else video, roots)


def _item_sample(
    item: Mapping[str, Any], position: int, video_root: str, task: Task | None, checks: Mapping[str, Any]
) -> Sample:
    if not isinstance(item, Mapping):
        raise InvalidSampleError(f"item {position} is not a JSON object")
    video = item.get("video")
    if not isinstance(video, str) or not video:
        raise InvalidSampleError("item has no video path")
    try:
        _check_video_path(video, video_root, checks["allowed_roots"], checks["allow_outside"])
    except PathNotAllowedError as exc:
        raise InvalidSampleError(str(exc), reason=exc.reason) from exc
    turns = item.get("conversations")
    if not isinstance(turns, list) or not all(isinstance(t, Mapping) and "from" in t and "value" in t for t in turns):
        raise InvalidSampleError("conversations must be a list of {from, value}")
    if not all(isinstance(t["from"], str) and isinstance(t["value"], str) for t in turns):
        raise InvalidSampleError("conversation `from` and `value` must be strings")
    limit = checks["max_text_chars"]
    longest = max((len(t["value"]) for t in turns), default=0)
    if limit is not None and longest > limit:
        raise InvalidSampleError(f"a conversation turn of {longest} characters, above {limit}",
                                 reason=RejectReason.TEXT_TOO_LONG)
    conversations = tuple(Turn(role=t["from"], value=t["value"]) for t in turns)
    annotation = item.get("annotation")
    if annotation is None or not isinstance(annotation, list) or not annotation:
        raise InvalidSampleError("item has no annotation", reason=RejectReason.MISSING_MASK)
    height, width = item.get("height"), item.get("width")
    for name, value in (("height", height), ("width", width)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
            raise InvalidSampleError(f"item {name} {value!r} is not a positive integer")
    video_uri = posixpath.join(video_root, video) if video_root and "://" not in video else video
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
                masks[_frame_index(frame)] = segmentation_to_rle(entry["segmentation"], height, width)
            except InvalidSampleError as exc:
                raise InvalidSampleError(f"object {number} frame {frame}: {exc}", reason=exc.reason) from exc
            except (ValueError, TypeError, KeyError) as exc:
                raise InvalidSampleError(f"object {number} frame {frame}: bad segmentation ({exc})") from exc
        object_id = stable_hash("700k_object", clip, number, sorted(masks))
        objects.append(SampleObject(object_id=object_id, category="", masks=masks))
    first_mask = next(iter(objects[0].masks.values()))
    sizes = sorted({(m.height, m.width) for obj in objects for m in obj.masks.values()})
    if len(sizes) > 1:
        raise InvalidSampleError(
            f"masks of different sizes {sizes} in one item", reason=RejectReason.MASK_SIZE_MISMATCH
        )
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
    items: Sequence[Mapping[str, Any]],
    *,
    grid: int,
    video_root: str = "",
    task: Task | None = None,
    allowed_roots: Sequence[str] | None = None,
    allow_outside: bool = False,
    max_text_chars: int | None = None,
) -> tuple[list[Sample], list[Reject]]:
    """Validated samples from released items, and a `Reject` (with reason code) for every unusable item.

    `grid` is the vision feature grid masks are checked on (`storage.samples.vision_grid`); `video_root` is
    joined to each item's relative `video`; `task` overrides the task inferred from the prompt. A local video must
    resolve inside `video_root` (the working folder when empty) or one of `allowed_roots`, unless `allow_outside`;
    `max_text_chars` bounds each conversation turn.
    """
    checks = {"allowed_roots": allowed_roots, "allow_outside": allow_outside, "max_text_chars": max_text_chars}
    samples: list[Sample] = []
    rejects: list[Reject] = []
    for position, item in enumerate(items):
        item_id = f"item{position}"
        video = item.get("video") if isinstance(item, Mapping) else None
        clip = make_clip_id(str(video), None, None) if isinstance(video, str) else ""
        try:
            sample = _item_sample(item, position, video_root, task, checks)
            # Frames are decoded at training time for imported items, so no frame-membership check (no indices).
            problems = validate_sample(sample, grid=grid)
        except InvalidSampleError as exc:
            rejects.append(Reject(stage=STAGE, item_id=item_id, clip_id=clip, reason=exc.reason, message=str(exc)))
            continue
        except DATA_ERRORS as exc:  # a case no check names: this item's data, never the whole import
            rejects.append(Reject(stage=STAGE, item_id=item_id, clip_id=clip, reason=RejectReason.ITEM_ERROR,
                                  message=f"{type(exc).__name__}: {exc}"))
            continue
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
_ROOT_FROM_JSON_DIR = posixpath.relpath(".", EXPORT_JSON_DIR)  # "../..": the dataset root, seen from export/json


def export_video_root(root: DatasetRoot) -> str:
    """The folder an export's items' `video` paths are relative to, as a path or URL (`_export.json`'s
    `video_root`; a relative one is relative to `export/json/`)."""
    stated = str(root.read_json(EXPORT_META)["video_root"])
    if not stated or _is_absolute(stated):
        return stated
    base = root.url_of(EXPORT_JSON_DIR)
    protocol, separator, path = base.rpartition("://")  # normpath would fold the `//` of `s3://`
    return f"{protocol}{separator}{posixpath.normpath(posixpath.join(path, stated))}"


def _is_absolute(video: str) -> bool:
    return "://" in video or video.startswith("/")


def video_root_of(items: Sequence[Mapping[str, Any]], dataset_root: DatasetRoot) -> tuple[str, list[dict[str, Any]]]:
    """The video root of a set of items and the items with `video` relative to it.

    Items whose videos are all relative (the engine names a video under the dataset root relative to the root)
    keep their paths and the root is the dataset root, stated as `../..`: relative to `export/json/`, the folder
    of the files, so the files stay the same on any root and after the root moves. Otherwise every local video
    is made absolute (relative ones joined to the dataset root) and the root is their deepest common folder; a
    URL among them (another file system) leaves every path as it is, under an empty root.
    """
    videos = [str(item.get("video", "")) for item in items]
    base = dataset_root.url_of("").rstrip("/")
    if not any(_is_absolute(v) for v in videos):
        return _ROOT_FROM_JSON_DIR, [dict(item) for item in items]
    if any("://" in v for v in videos) or not dataset_root.is_local:
        return "", [dict(item) for item in items]
    absolute = [v if v.startswith("/") else posixpath.join(base, v) for v in videos]
    root = posixpath.commonpath([posixpath.dirname(posixpath.normpath(v)) for v in absolute])
    relative = [posixpath.relpath(posixpath.normpath(v), root) for v in absolute]
    return root, [{**item, "video": video} for item, video in zip(items, relative, strict=True)]


@dataclass(frozen=True, slots=True, kw_only=True)
class ExportPart:
    """One shard's stored 700K items, as the merged files need them: how many, a digest of their bytes, and the
    summary of their videos that decides the export's video root (`video_summary`)."""

    shard_id: str
    items: int
    digest: str
    videos: Mapping[str, Any]


def json_list_bytes(items: Iterable[Any]) -> Iterator[bytes]:
    """The bytes of `root.write_json(list(items))` (indent 2, sorted keys, trailing newline), one item at a time,
    so a list of any length is written without holding it."""
    first = True
    for item in items:
        text = json.dumps(item, indent=2, sort_keys=True, ensure_ascii=False).replace("\n", "\n  ")
        yield (("[\n  " if first else ",\n  ") + text).encode("utf-8")
        first = False
    yield b"[]\n" if first else b"\n]\n"


def part_bytes(items: Sequence[Mapping[str, Any]]) -> tuple[bytes, str]:
    """A shard's part file (the same bytes `write_json` gives) and its digest."""
    data = b"".join(json_list_bytes(items))
    return data, hashlib.sha256(data).hexdigest()[:32]


def video_summary(items: Iterable[Mapping[str, Any]], dataset_root: DatasetRoot) -> dict[str, Any]:
    """What `video_root_of` needs to know of a shard's items, so the roots of many shards combine without
    reading their items again: any absolute path or URL, and the deepest folder of them all (local roots)."""
    videos = [str(item.get("video", "")) for item in items]
    base = dataset_root.url_of("").rstrip("/")
    summary: dict[str, Any] = {"absolute": any(_is_absolute(v) for v in videos),
                               "url": any("://" in v for v in videos), "folder": ""}
    if videos and summary["absolute"] and not summary["url"] and dataset_root.is_local:
        absolute = [v if v.startswith("/") else posixpath.join(base, v) for v in videos]
        summary["folder"] = posixpath.commonpath([posixpath.dirname(posixpath.normpath(v)) for v in absolute])
    return summary


def _combined_root(parts: Sequence[ExportPart], dataset_root: DatasetRoot) -> str:
    if not any(part.videos.get("absolute") for part in parts):
        return _ROOT_FROM_JSON_DIR
    if any(part.videos.get("url") for part in parts) or not dataset_root.is_local:
        return ""
    return posixpath.commonpath([str(part.videos["folder"]) for part in parts if part.items])


def _relative_to(items: Sequence[Mapping[str, Any]], video_root: str, dataset_root: DatasetRoot) -> Iterator[Any]:
    if video_root in (_ROOT_FROM_JSON_DIR, ""):
        yield from items
        return
    base = dataset_root.url_of("").rstrip("/")
    for item in items:
        video = str(item.get("video", ""))
        absolute = video if video.startswith("/") else posixpath.join(base, video)
        yield {**item, "video": posixpath.relpath(posixpath.normpath(absolute), video_root)}


def _file_names(name: str, total: int, max_items: int) -> list[str]:
    count = max(1, -(-total // max_items))
    return [f"{name}.json"] if count == 1 else [f"{name}-{n:06d}.json" for n in range(count)]


def write_export_parts(
    root: DatasetRoot, parts: Sequence[ExportPart], read_part: Callable[[str], Sequence[Mapping[str, Any]]], *,
    name: str = "train", max_items: int = 200_000,
) -> list[str]:
    """Write one export's merged files from its shards' parts, streaming shard by shard; return the files
    written (empty when nothing changed).

    The files are those of `write_export_files` (the same bytes): `export/json/<name>.json`, or
    `<name>-NNNNNN.json` of at most `max_items` items each, and `_export.json` (`{"format": "videorefer-700k",
    "video_root", "files", "items", "parts"}`), where `parts` keeps a digest of what each file was made of (its
    shards' item ranges and digests, and the video root). A file whose digest is unchanged and which is still
    there is not written again; `read_part(shard_id)` is called only for the shards of files that are, one shard
    at a time, so memory does not grow with the number of items. With no items every file is removed.
    """
    if max_items <= 0:
        raise ValueError("max_items must be positive")
    parts = [part for part in parts if part.items]
    total = sum(part.items for part in parts)
    names = _file_names(name, total, max_items) if total else []
    stale = [existing for existing in root.listdir(EXPORT_JSON_DIR) if existing not in names and
             _is_export_file(existing, name)]
    if not total:
        for existing in stale:
            root.delete(f"{EXPORT_JSON_DIR}/{existing}")
        root.delete(EXPORT_META)
        return []
    video_root = _combined_root(parts, root)
    slices: list[list[tuple[ExportPart, int, int]]] = [[] for _ in names]  # per file: (part, start, end) in part
    offset = 0
    for part in parts:
        position = 0
        while position < part.items:
            number = (offset + position) // max_items
            take = min(part.items - position, (number + 1) * max_items - (offset + position))
            slices[number].append((part, position, position + take))
            position += take
        offset += part.items
    digests = {
        file_name: stable_hash(video_root, [(p.shard_id, p.digest, a, b) for p, a, b in pieces])
        for file_name, pieces in zip(names, slices, strict=True)
    }
    previous: dict[str, Any] = {}
    if root.exists(EXPORT_META):
        with suppress(ValueError, UnicodeDecodeError):
            previous = root.read_json(EXPORT_META)
    meta = {"format": "videorefer-700k", "video_root": video_root, "files": names, "items": total,
            "parts": digests}
    written = []
    for file_name, pieces in zip(names, slices, strict=True):
        relative = f"{EXPORT_JSON_DIR}/{file_name}"
        if (previous.get("parts") or {}).get(file_name) == digests[file_name] and root.exists(relative):
            continue

        def items(pieces: Sequence[tuple[ExportPart, int, int]] = pieces) -> Iterator[Any]:
            for part, start, end in pieces:
                yield from _relative_to(list(read_part(part.shard_id))[start:end], video_root, root)

        with root.open_atomic(relative) as handle:
            for chunk in json_list_bytes(items()):
                handle.write(chunk)
        written.append(relative)
    for existing in stale:
        root.delete(f"{EXPORT_JSON_DIR}/{existing}")
    if stale or previous != meta:
        root.write_json(EXPORT_META, meta)
        written.append(EXPORT_META)
    return written


def _is_export_file(existing: str, name: str) -> bool:
    stem = existing.removesuffix(".json")
    number = stem[len(name) + 1 :]
    return existing.endswith(".json") and (stem == name or stem.startswith(f"{name}-") and number.isdigit())


def write_export_files(
    root: DatasetRoot, items: Sequence[Mapping[str, Any]], *, name: str = "train", max_items: int = 200_000
) -> list[str]:
    """Write one export's released-format items: `export/json/<name>.json`, or `<name>-NNNNNN.json` parts of at
    most `max_items` items when there are more, plus `export/json/_export.json` stating the video root.

    Each item's `video` is relative to that root (`video_root_of`; `export_video_root` resolves it): a reader
    joins it and `video`, e.g. `videorefer import-700k --json <root>/export/json/train.json --videos <root>`.
    `_export.json` is `{"format": "videorefer-700k", "video_root", "files", "items", "parts"}`. Files of an
    earlier write under the same name that the new one does not have are removed; with no items nothing is
    written. Returns the paths written (relative to the root). The engine's export writes from its shards'
    parts with `write_export_parts`, which this wraps for one in-memory list.
    """
    listed = [dict(item) for item in items]
    _data, digest = part_bytes(listed)
    part = ExportPart(shard_id="items", items=len(listed), digest=digest, videos=video_summary(listed, root))
    return write_export_parts(root, [part], lambda _shard: listed, name=name, max_items=max_items)


def read_700k(root: DatasetRoot, relative: str) -> list[dict[str, Any]]:
    """The items of a released-format JSON file inside a root (or a directory given as a root)."""
    items = root.read_json(relative)
    if not isinstance(items, list):
        raise InvalidSampleError(f"{relative} is not a JSON list of items")
    return items
