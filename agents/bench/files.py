"""VideoRefer-Bench files on disk: readers of the published Bench-D / Bench-Q JSON, and the prediction JSONL store.

The readers follow the released files (`DAMO-NLP-SG/VideoRefer-Bench`): a JSON list whose entries carry `id`,
`video` (a video file or a folder of frames, relative to a data root), `annotation` (one dict per object, keys
are frame indices as strings, values `{"segmentation": RLE}`, masks on 32 uniformly sampled frames) and
`frame_idx` (the one annotated frame used in single-frame mode). Bench-D adds `caption` (the reference
description); Bench-Q adds `Question` (with `<objectN><region>` marks), `type`, `options` (`"(A) ..."`) and
`Answer`. A malformed entry or a missing video becomes a `Reject` with a reason and the rest of the file is read;
the file's entry ids (`BenchFile.entry_ids`) and the types of rejected Bench-Q entries are kept, so every entry
is counted when scoring. A null segmentation is kept as `None` (the runners give it as an all-zero mask, as the
release does). Every mask is checked before anything decodes it (`engine.masks.validated_mask`: RLE counts cover
exactly height x width, polygons inside the image) and against the entry's video, probed from its header: a mask
of another size than the frames is `mask_size_mismatch`, one on a frame the video lacks `frame_out_of_range`.

`PredictionStore` is the resumable JSONL file both runners (our model, an OpenAI-compatible VLM) and the judge
write: one record per finished item, flushed and fsynced per line, so an interrupted run re-run with the same
arguments skips what is already there. Nothing here imports torch or openai.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from engine.errors import ConfigError, RejectReason
from engine.parsing import ParseError, bounded, loads_json, preview, structure_problem
from engine.types import REGION_TOKEN, Reject, RleMask
from engine.video import list_frame_files

Mode = Literal["single", "multi"]
MODES: tuple[Mode, ...] = ("single", "multi")

# Bench-Q question types as published, and the short keys our reports use (the paper's column order).
Q_TYPES: dict[str, str] = {
    "Basic Questions": "basic",
    "Sequential Questions": "sequential",
    "Relationship Questions": "relationship",
    "Reasoning Questions": "reasoning",
    "Future Predictions": "future",
}

_OPTION_LETTER = re.compile(r"^\s*\(([A-Za-z])\)")
_OBJECT_NAME = re.compile(r"<object(\d+)>")

_FROZEN = {"frozen": True, "slots": True, "kw_only": True}


@dataclass(**_FROZEN)
class BenchObject:
    """One referred object: its masks keyed by absolute frame index; `None` is an annotated frame without a mask."""

    masks: Mapping[int, RleMask | None]
    name: str = ""  # "<object3>" in Bench-Q questions, "" in Bench-D

    @property
    def frame_indices(self) -> tuple[int, ...]:
        return tuple(sorted(self.masks))


@dataclass(**_FROZEN)
class BenchDItem:
    """One Bench-D entry: describe the object; the reference caption is what the judge compares against."""

    item_id: str
    video: str
    video_path: Path
    caption: str
    frame_idx: int
    objects: tuple[BenchObject, ...]

    @property
    def annotated_frames(self) -> tuple[int, ...]:
        return _union_frames(self.objects)


@dataclass(**_FROZEN)
class BenchQItem:
    """One Bench-Q entry: a multiple-choice question about one or more objects (`<region>` marks in order)."""

    item_id: str
    video: str
    video_path: Path
    question: str
    qa_type: str  # the published type name, e.g. "Basic Questions"
    options: tuple[str, ...]  # "(A) A helmet", ...
    answer: str  # the published answer, e.g. "(A) A helmet"
    answer_letter: str  # "A"
    frame_idx: int
    objects: tuple[BenchObject, ...]

    @property
    def annotated_frames(self) -> tuple[int, ...]:
        return _union_frames(self.objects)

    @property
    def option_letters(self) -> tuple[str, ...]:
        return tuple(m.group(1).upper() for option in self.options if (m := _OPTION_LETTER.match(option)))

    @property
    def type_key(self) -> str:
        """Short type key (`basic`, `sequential`, ...); an unknown published type is kept as its own key."""
        return Q_TYPES.get(self.qa_type, self.qa_type)


BenchItem = BenchDItem | BenchQItem


@dataclass(**_FROZEN)
class BenchFile:
    """What a reader returns: the usable items in file order and the entries it had to reject."""

    kind: Literal["d", "q"]
    path: Path
    data_root: Path
    items: tuple[BenchItem, ...]
    rejects: tuple[Reject, ...]
    reject_types: Mapping[str, str] = field(default_factory=dict)  # Bench-Q: id -> published type ("" unknown)

    def entry_ids(self, limit: int | None = None) -> list[str]:
        """Ids of the file's entries in file order (readable or not), the first `limit` of them."""
        return list(self.order[:limit] if limit is not None else self.order)

    order: tuple[str, ...] = ()


# ---------------------------------------------------------------- readers


def read_bench_d(path: str | Path, data_root: str | Path | None = None) -> BenchFile:
    """Read a VideoRefer-Bench-D JSON file; videos are resolved against `data_root` (default: the file's folder)."""
    return _read(path, data_root, kind="d")


def read_bench_q(path: str | Path, data_root: str | Path | None = None) -> BenchFile:
    """Read a VideoRefer-Bench-Q JSON file; videos/frame folders are resolved against `data_root`."""
    return _read(path, data_root, kind="q")


def _read(path: str | Path, data_root: str | Path | None, *, kind: Literal["d", "q"]) -> BenchFile:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"benchmark file not found: {path}")
    root = Path(data_root) if data_root is not None else path.parent
    if not root.is_dir():
        raise ConfigError(f"--data-root is not a directory: {root}")
    try:
        entries = loads_json(path.read_bytes(), f"benchmark file {path}")
    except (ParseError, OSError) as exc:
        raise ConfigError(str(exc)) from None
    if not isinstance(entries, list):
        raise ConfigError(f"benchmark file {path} must hold a JSON list of entries, got {type(entries).__name__}")
    items: list[BenchItem] = []
    rejects: list[Reject] = []
    reject_types: dict[str, str] = {}
    order: list[str] = []
    for position, entry in enumerate(entries):
        given = _entry_id(entry, position)
        # A second entry with the same id still counts (and is rejected): it is named by its position.
        item_id = given if given not in order else f"{given}@{position}"
        order.append(item_id)
        video = str(entry.get("video", "")) if isinstance(entry, dict) else ""
        try:
            if item_id != given:
                raise _Malformed(f"duplicate id {preview(given, 80)}")
            if (hostile := structure_problem(entry)) is not None:
                raise _Malformed(f"the entry {hostile}", RejectReason.HOSTILE_STRUCTURE)
            item = _parse_d(entry, item_id, root) if kind == "d" else _parse_q(entry, item_id, root)
        except _Malformed as exc:
            rejects.append(Reject(stage=f"bench_{kind}_read", item_id=item_id, clip_id=video[:1000],
                                  reason=exc.reason, message=f"entry {position}: {bounded(exc, 1000)}"))
            raw_type = entry.get("type") if isinstance(entry, dict) else None
            reject_types[item_id] = raw_type if isinstance(raw_type, str) else ""
            continue
        items.append(item)
    return BenchFile(kind=kind, path=path, data_root=root, items=tuple(items), rejects=tuple(rejects),
                     reject_types=reject_types, order=tuple(order))


class _Malformed(Exception):
    def __init__(self, message: str, reason: RejectReason = RejectReason.MALFORMED_SAMPLE) -> None:
        super().__init__(message)
        self.reason = reason


def _entry_id(entry: Any, position: int) -> str:
    if isinstance(entry, dict) and entry.get("id") is not None:
        return str(entry["id"])
    return f"entry{position}"  # no id in the file: its position is the only stable handle


def _parse_d(entry: Any, item_id: str, root: Path) -> BenchDItem:
    if not isinstance(entry, dict):
        raise _Malformed(f"expected an object, got {type(entry).__name__}")
    caption = entry.get("caption")
    if not isinstance(caption, str) or not caption.strip():
        raise _Malformed("missing or empty 'caption'")
    video, video_path = _video(entry, root)
    objects = _objects(entry, names=())
    _check_masks_against_video(video_path, objects)
    return BenchDItem(item_id=item_id, video=video, video_path=video_path, caption=caption.strip(),
                      frame_idx=_frame_idx(entry, objects), objects=objects)


def _parse_q(entry: Any, item_id: str, root: Path) -> BenchQItem:
    if not isinstance(entry, dict):
        raise _Malformed(f"expected an object, got {type(entry).__name__}")
    question = entry.get("Question")
    if not isinstance(question, str) or REGION_TOKEN not in question:
        raise _Malformed(f"missing 'Question' or it has no {REGION_TOKEN}")
    options = entry.get("options")
    if not isinstance(options, list) or not options or not all(isinstance(o, str) for o in options):
        raise _Malformed("'options' must be a non-empty list of strings")
    answer = entry.get("Answer")
    letter = parse_option_letter(answer) if isinstance(answer, str) else None
    if letter is None:
        raise _Malformed(f"'Answer' has no option letter: {answer!r}")
    qa_type = entry.get("type")
    if not isinstance(qa_type, str) or not qa_type:
        raise _Malformed("missing 'type'")
    video, video_path = _video(entry, root)
    names = tuple(f"<object{n}>" for n in _OBJECT_NAME.findall(question))
    objects = _objects(entry, names=names)
    _check_masks_against_video(video_path, objects)
    if question.count(REGION_TOKEN) != len(objects):
        raise _Malformed(f"{question.count(REGION_TOKEN)} {REGION_TOKEN} marks but {len(objects)} annotated objects",
                         RejectReason.REGION_COUNT_MISMATCH)
    item = BenchQItem(item_id=item_id, video=video, video_path=video_path, question=question, qa_type=qa_type,
                      options=tuple(options), answer=answer, answer_letter=letter,
                      frame_idx=_frame_idx(entry, objects), objects=objects)
    if letter not in item.option_letters:
        raise _Malformed(f"answer letter {letter} is not among the options {item.option_letters}")
    return item


def parse_option_letter(text: str) -> str | None:
    """The letter of a published option or answer string: `(A)` anywhere, else a leading `A)` / `A.` / `A`."""
    match = re.search(r"\(([A-Za-z])\)", text) or re.match(r"^\s*([A-Za-z])(?:[).:]|\s|$)", text)
    return match.group(1).upper() if match else None


def _video(entry: dict[str, Any], root: Path) -> tuple[str, Path]:
    video = entry.get("video")
    if not isinstance(video, str) or not video:
        raise _Malformed("missing 'video'")
    video_path = root / video
    if not video_path.exists():
        raise _Malformed(f"video not found: {video_path}", RejectReason.VIDEO_NOT_FOUND)
    if video_path.is_dir() and not list_frame_files(video_path):
        raise _Malformed(f"frame folder has no images: {video_path}", RejectReason.EMPTY_VIDEO)
    return video, video_path


def _objects(entry: dict[str, Any], *, names: Sequence[str]) -> tuple[BenchObject, ...]:
    annotation = entry.get("annotation")
    if not isinstance(annotation, list) or not annotation:
        raise _Malformed("'annotation' must be a non-empty list (one dict per object)")
    size = _entry_size(entry, annotation)
    objects = []
    for number, per_frame in enumerate(annotation):
        if not isinstance(per_frame, dict) or not per_frame:
            raise _Malformed(f"object {number}: annotation must be a non-empty dict of frame index -> mask")
        masks: dict[int, RleMask | None] = {}
        for key, value in per_frame.items():
            try:
                frame = int(key)
            except (TypeError, ValueError):
                raise _Malformed(f"object {number}: frame key {key!r} is not an integer") from None
            if frame < 0:
                raise _Malformed(f"object {number}: mask on frame {frame}", RejectReason.FRAME_OUT_OF_RANGE)
            masks[frame] = _segmentation(value, size, where=f"object {number} frame {frame}")
        name = names[number] if number < len(names) else ""
        objects.append(BenchObject(masks=masks, name=name))
    return tuple(objects)


def _frame_idx(entry: dict[str, Any], objects: Sequence[BenchObject]) -> int:
    raw = entry.get("frame_idx")
    if raw is None:  # absent in a few hand-made files: the first annotated frame is the natural choice
        return min(_union_frames(objects))
    try:
        return int(raw)
    except (TypeError, ValueError):
        raise _Malformed(f"'frame_idx' is not an integer: {raw!r}") from None


def _entry_size(entry: dict[str, Any], annotation: list[Any]) -> tuple[int, int] | None:
    """Image size for polygon masks: the entry's height/width, else the size of any RLE in the entry."""
    if isinstance(entry.get("height"), int) and isinstance(entry.get("width"), int):
        return entry["height"], entry["width"]
    for per_frame in annotation:
        if not isinstance(per_frame, dict):
            continue
        for value in per_frame.values():
            seg = value.get("segmentation") if isinstance(value, dict) else None
            if isinstance(seg, dict) and isinstance(seg.get("size"), list) and len(seg["size"]) == 2:
                return int(seg["size"][0]), int(seg["size"][1])
    return None


def _segmentation(value: Any, size: tuple[int, int] | None, *, where: str) -> RleMask | None:
    from engine.errors import InvalidMaskError
    from engine.masks import validated_mask

    seg = value.get("segmentation", value if "counts" in value else None) if isinstance(value, dict) else value
    if seg is None:
        return None  # released files carry null masks; the original evaluation treats them as empty
    if isinstance(seg, dict) and not {"counts", "size"} <= seg.keys():
        raise _Malformed(f"{where}: segmentation is neither RLE nor a polygon with a known image size")
    if isinstance(seg, list) and size is None:
        raise _Malformed(f"{where}: a polygon segmentation needs the entry's image size")
    if isinstance(seg, list):
        seg = [p for p in seg if isinstance(p, list) and len(p) >= 6]
        if not seg:
            raise _Malformed(f"{where}: segmentation is neither RLE nor a polygon with a known image size")
    try:
        # Uncompressed RLE and polygons are converted once here, so every consumer sees compressed RLE.
        return validated_mask(seg, height=size[0] if isinstance(seg, list) else None,
                              width=size[1] if isinstance(seg, list) else None)
    except InvalidMaskError as exc:
        raise _Malformed(f"{where}: {exc}", exc.reason) from None
    except (TypeError, ValueError, KeyError) as exc:
        raise _Malformed(f"{where}: unreadable segmentation ({exc})") from None


def _check_masks_against_video(video_path: Path, objects: Sequence[BenchObject]) -> None:
    """Masks must have the video's frame size and lie on its frames (the header says both; nothing is decoded).

    A video whose header cannot be read is left to the runners, which reject it when they read its frames; a
    FIFO or device is refused here (a runner would block or spin on it).
    """
    from engine.errors import NotARegularFileError, VideoReferError
    from engine.video import probe

    try:
        info = probe(video_path)
    except NotARegularFileError as exc:
        raise _Malformed(f"video {video_path}: {exc}", exc.reason) from None
    except VideoReferError:
        return
    for number, obj in enumerate(objects):
        for frame, mask in sorted(obj.masks.items()):
            if frame >= info.num_frames:
                raise _Malformed(f"object {number}: mask on frame {frame}, the video has {info.num_frames} frames",
                                 RejectReason.FRAME_OUT_OF_RANGE)
            if mask is not None and (mask.height, mask.width) != (info.height, info.width):
                raise _Malformed(
                    f"object {number} frame {frame}: mask is {mask.width}x{mask.height}, the video's frames are "
                    f"{info.width}x{info.height}", RejectReason.MASK_SIZE_MISMATCH)


def _union_frames(objects: Sequence[BenchObject]) -> tuple[int, ...]:
    return tuple(sorted({frame for obj in objects for frame in obj.masks}))


def item_record(item: BenchItem) -> dict[str, Any]:
    """The fields of an item that every prediction record carries, so scoring needs only the JSONL file."""
    if isinstance(item, BenchDItem):
        return {"id": item.item_id, "video": item.video, "caption": item.caption}
    return {
        "id": item.item_id, "video": item.video, "question": item.question, "type": item.qa_type,
        "answer": item.answer, "answer_letter": item.answer_letter, "option_letters": list(item.option_letters),
    }


@dataclass(**_FROZEN)
class RunSummary:
    """What one runner call did: items answered now, items already in the store, items it could not run."""

    predicted: int
    skipped: int
    rejects: tuple[Reject, ...]


# ---------------------------------------------------------------- prediction store


class PredictionStore:
    """Append-only JSONL of finished items keyed by `id`; reopening it resumes where a run stopped.

    Each line is flushed and fsynced when written, so a killed run loses at most the line being written; a
    torn last line (no trailing newline or invalid JSON) is cut off on open. `expect` pins fields (model, mode,
    prompt version) that every existing record must match: resuming a different run into the same file is a
    `ConfigError` rather than a silent mix.
    """

    def __init__(self, path: str | Path, *, expect: Mapping[str, Any] | None = None) -> None:
        self.path = Path(path)
        self.expect = dict(expect or {})
        self._records: dict[str, dict[str, Any]] = {}
        self._handle: Any = None
        self._load()

    def _load(self) -> None:
        if not self.path.exists():
            return
        raw = self.path.read_bytes()
        good_end = 0
        position = 0
        for line in raw.splitlines(keepends=True):
            position += len(line)
            if not line.endswith(b"\n"):
                break
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                break
            if not isinstance(record, dict) or "id" not in record:
                break
            self._check(record)
            self._records[str(record["id"])] = record
            good_end = position
        if good_end < len(raw):  # torn tail of an interrupted write: drop it so appends stay line-aligned
            with self.path.open("r+b") as handle:
                handle.truncate(good_end)

    def _check(self, record: Mapping[str, Any]) -> None:
        for key, value in self.expect.items():
            if record.get(key) != value:
                raise ConfigError(
                    f"{self.path} holds results of another run ({key}={record.get(key)!r}, this run {value!r}); "
                    "use another --out or delete the file"
                )

    def __contains__(self, item_id: object) -> bool:
        return str(item_id) in self._records

    def __len__(self) -> int:
        return len(self._records)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(list(self._records.values()))

    def get(self, item_id: str) -> dict[str, Any] | None:
        return self._records.get(str(item_id))

    def done_ids(self) -> set[str]:
        return set(self._records)

    def append(self, record: Mapping[str, Any]) -> None:
        """Write one finished item (its `id` plus the pinned `expect` fields) and make it durable."""
        full = {**self.expect, **record}
        if "id" not in full:
            raise ValueError("a prediction record needs an 'id'")
        full["id"] = str(full["id"])
        if self._handle is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._handle = self.path.open("a", encoding="utf-8")
        self._handle.write(json.dumps(full, ensure_ascii=False, sort_keys=True) + "\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._records[full["id"]] = full

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def __enter__(self) -> PredictionStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_rejects(path: str | Path, rejects: Sequence[Reject]) -> None:
    """Write the rejected entries of a run as JSONL (atomically: the file is complete or absent)."""
    lines = [
        json.dumps({"stage": r.stage, "id": r.item_id, "video": r.clip_id, "reason": str(r.reason),
                    "message": r.message}, ensure_ascii=False)
        for r in rejects
    ]
    write_text_atomic(path, "".join(line + "\n" for line in lines))


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Write JSON to a temporary name in the same folder, then rename it into place."""
    write_text_atomic(path, json.dumps(data, ensure_ascii=False, indent=2, sort_keys=False) + "\n")


def write_text_atomic(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
