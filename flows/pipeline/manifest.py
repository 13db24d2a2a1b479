"""Reading a source manifest (CSV, Parquet, JSONL or a JSON list) into `ManifestRow`s.

A row names a video (a local path, relative to the manifest's folder, or a URL) with its caption, an
optional time span (`start`/`end` or `start_s`/`end_s`, seconds) and an optional `source_id` (a stable id of
the source video, e.g. a Panda-70M id; without it a local video is identified by its bytes, a URL by itself).
Rows for the QA path also carry `objects`: a list of `{name, expression, category?, masks: {frame: COCO RLE}}`
(a JSON string in CSV/Parquet).
A manifest without a video column is a config error (fail fast); a row that lacks a video or whose objects
are malformed is kept with its `problem` (and `problem_reason`) set, so ingest turns it into a reject and carries
on. Rows are checked here for what needs no video (`ManifestPolicy`): a local path must resolve inside the
allowed roots (`path_not_allowed`, never opened), a span must be finite and ordered (`bad_span`), texts no longer
than `max_text_chars` (`text_too_long`), and every given mask a faithful RLE or polygon (`invalid_mask`, frames
below 0: `frame_out_of_range`); ingest checks the rest against the probed video.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import ConfigError, InvalidMaskError, PathNotAllowedError, RejectReason
from engine.types import GivenObject, Masklet, RleMask

_VIDEO_KEYS = ("video", "video_uri", "video_path", "path", "url")
_CAPTION_KEYS = ("caption", "text")
_START_KEYS = ("start_s", "start")
_END_KEYS = ("end_s", "end")


@dataclass(frozen=True, slots=True, kw_only=True)
class ManifestRow:
    """One manifest row, normalised: an absolute path or URL, a caption, a span, and given objects if any."""

    row: int
    video_uri: str
    caption: str
    start_s: float | None = None
    end_s: float | None = None
    source: str = ""
    source_id: str = ""
    given_objects: tuple[GivenObject, ...] = ()
    problem: str = ""  # non-empty when the row cannot become a clip
    problem_reason: RejectReason = RejectReason.MALFORMED_SAMPLE


@dataclass(frozen=True, slots=True, kw_only=True)
class ManifestPolicy:
    """What a row may name and hold: local videos inside the manifest's folder or `allowed_roots` (unless
    `allow_outside`), texts of at most `max_text_chars` characters (None: unbounded)."""

    allowed_roots: tuple[Path, ...] = ()
    allow_outside: bool = False
    max_text_chars: int | None = None


class _RowProblem(ValueError):
    def __init__(self, message: str, reason: RejectReason) -> None:
        super().__init__(message)
        self.reason = reason


def is_url(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def read_manifest(path: str | Path, policy: ManifestPolicy | None = None) -> list[ManifestRow]:
    """All rows of a manifest file, in file order (`policy`: by default paths inside the manifest's folder).

    A manifest named by a URL (`s3://bucket/x/manifest.jsonl`) is copied to a temporary local file and read the
    same way; its relative video paths are URLs below the manifest's folder (one climbing out is refused).
    """
    if is_url(str(path)):
        return _read_remote_manifest(str(path), policy or ManifestPolicy())
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"manifest not found: {path}")
    raw = list(_raw_rows(path))
    if raw and not any(isinstance(item, Mapping) and key in item for item in raw[:1] for key in _VIDEO_KEYS):
        raise ConfigError(f"manifest {path} has no video column (one of {', '.join(_VIDEO_KEYS)})")
    base = path.resolve().parent
    policy = policy or ManifestPolicy()
    roots = (base, *policy.allowed_roots)
    return [_normalise(index, item, base, roots, policy) for index, item in enumerate(raw)]


def _read_remote_manifest(url: str, policy: ManifestPolicy) -> list[ManifestRow]:
    import shutil
    import tempfile

    from engine.remote import join_url, open_remote, remote_info

    try:
        remote_info(url)
    except FileNotFoundError as exc:
        raise ConfigError(f"manifest not found: {url}") from exc
    folder = url.rsplit("/", 1)[0]
    with tempfile.TemporaryDirectory(prefix="videorefer-manifest-") as scratch:
        local = Path(scratch) / Path(url.rsplit("/", 1)[-1]).name
        with open_remote(url) as remote, local.open("wb") as out:
            shutil.copyfileobj(remote, out, 1 << 20)
        raw = list(_raw_rows(local))
    if raw and not any(isinstance(item, Mapping) and key in item for item in raw[:1] for key in _VIDEO_KEYS):
        raise ConfigError(f"manifest {url} has no video column (one of {', '.join(_VIDEO_KEYS)})")
    rows = []
    for index, item in enumerate(raw):
        video = str(_first(item, _VIDEO_KEYS) or "").strip() if isinstance(item, Mapping) else ""
        if video and not is_url(video):
            try:
                item = {**{k: v for k, v in item.items() if k not in _VIDEO_KEYS}, "video": join_url(folder, video)}
            except ValueError as exc:
                row = _normalise(index, item, Path("/nonexistent"), (), policy)
                problem = f"{exc} (the manifest's folder)"
                rows.append(dataclasses.replace(row, video_uri=video, problem=problem,
                                                problem_reason=RejectReason.PATH_NOT_ALLOWED))
                continue
        rows.append(_normalise(index, item, Path("/nonexistent"), (), policy))
    return rows


def _raw_rows(path: Path) -> Iterator[Mapping[str, Any]]:
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            with path.open(newline="", encoding="utf-8") as handle:
                yield from csv.DictReader(handle)
        elif suffix == ".parquet":
            import pyarrow.parquet as pq

            yield from pq.read_table(path).to_pylist()
        elif suffix in (".jsonl", ".ndjson"):
            with path.open(encoding="utf-8") as handle:
                for line in handle:
                    if line.strip():
                        yield json.loads(line)
        elif suffix == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, list):
                raise ConfigError(f"manifest {path} must hold a JSON list of rows")
            yield from data
        else:
            raise ConfigError(f"manifest {path}: unsupported format {suffix!r} (csv, parquet, jsonl, json)")
    except (json.JSONDecodeError, csv.Error, UnicodeDecodeError) as exc:
        raise ConfigError(f"manifest {path} cannot be parsed: {exc}") from exc


def _first(item: Mapping[str, Any], keys: tuple[str, ...]) -> Any:
    for key in keys:
        value = item.get(key)
        if value not in (None, ""):
            return value
    return None


def _normalise(
    index: int, item: Any, base: Path, roots: Sequence[Path], policy: ManifestPolicy
) -> ManifestRow:
    if not isinstance(item, Mapping):
        return ManifestRow(row=index, video_uri="", caption="", problem="row is not a mapping of columns")
    video = str(_first(item, _VIDEO_KEYS) or "").strip()
    caption = str(_first(item, _CAPTION_KEYS) or "").strip()
    source = str(item.get("source") or "")
    source_id = str(item.get("source_id") or "").strip()
    problems: list[tuple[str, RejectReason]] = [] if video else [("row has no video", RejectReason.MALFORMED_SAMPLE)]
    if video and not is_url(video):
        from engine.paths import resolve_allowed

        local = video.removeprefix("file://")
        try:
            video = str(resolve_allowed(local, roots, base=base, allow_outside=policy.allow_outside))
        except PathNotAllowedError as exc:
            video = str(Path(local) if Path(local).is_absolute() else base / local)
            problems.append((str(exc), exc.reason))
    start_s = end_s = None
    try:
        start_s = _seconds(_first(item, _START_KEYS))
        end_s = _seconds(_first(item, _END_KEYS))
        if start_s is not None and end_s is not None and end_s <= start_s:
            raise ValueError(f"end {end_s:g} s is not after start {start_s:g} s")
    except ValueError as exc:
        start_s = end_s = None
        problems.append((f"bad span: {exc}", RejectReason.BAD_SPAN))
    limit = policy.max_text_chars
    if limit is not None and len(caption) > limit:
        problems.append((f"caption of {len(caption)} characters, above {limit}", RejectReason.TEXT_TOO_LONG))
    given: tuple[GivenObject, ...] = ()
    objects = item.get("objects")
    if objects not in (None, "", []):
        try:
            given = _given_objects(objects, limit)
        except _RowProblem as exc:
            problems.append((f"malformed objects: {exc}", exc.reason))
        except InvalidMaskError as exc:
            problems.append((f"malformed objects: {exc}", exc.reason))
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            problems.append((f"malformed objects: {exc}", RejectReason.MALFORMED_SAMPLE))
    if not caption and not given and not problems:
        problems.append(("row has neither a caption nor objects", RejectReason.MALFORMED_SAMPLE))
    problem, reason = problems[0] if problems else ("", RejectReason.MALFORMED_SAMPLE)
    return ManifestRow(
        row=index, video_uri=video, caption=caption, start_s=start_s, end_s=end_s, source=source, source_id=source_id,
        given_objects=given, problem=problem, problem_reason=reason,
    )


def _seconds(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"time {value!r} is not a number of seconds")
    try:
        seconds = float(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"time {value!r} is not a number of seconds") from exc
    if not math.isfinite(seconds):
        raise ValueError(f"time {value!r} is not finite")
    if seconds < 0:
        raise ValueError(f"negative time {seconds}")
    return seconds


def _given_objects(objects: Any, max_chars: int | None) -> tuple[GivenObject, ...]:
    if isinstance(objects, str):
        objects = json.loads(objects)
    if not isinstance(objects, list):
        raise ValueError("objects must be a list")
    given = []
    for obj in objects:
        if not isinstance(obj, Mapping) or not isinstance(obj.get("masks"), Mapping):
            raise ValueError("an object must be a mapping with `masks: {frame: mask}`")
        masks = {_frame(frame): _rle(rle) for frame, rle in obj["masks"].items() if rle is not None}
        if not masks:
            raise ValueError(f"object {obj.get('name')!r} has no masks")
        sizes = {(m.height, m.width) for m in masks.values()}
        if len(sizes) > 1:
            raise _RowProblem(
                f"object {obj.get('name')!r} has masks of sizes {sorted(sizes)}", RejectReason.MASK_SIZE_MISMATCH
            )
        name = str(obj["name"]).strip()
        if not name:
            raise ValueError("object without a name")
        expression = str(obj.get("expression") or name)
        category = str(obj.get("category") or name)
        longest = max(len(name), len(expression), len(category))
        if max_chars is not None and longest > max_chars:
            raise _RowProblem(
                f"object {name[:40]!r}: a text of {longest} characters, above {max_chars}", RejectReason.TEXT_TOO_LONG
            )
        given.append(
            GivenObject(
                name=name,
                expression=expression,
                category=category,
                masklet=Masklet(masks=masks, key_frame=min(masks)),
            )
        )
    return tuple(given)


def _frame(value: Any) -> int:
    try:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError
        frame = int(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"frame {value!r} is not an integer") from exc
    if frame < 0:
        raise _RowProblem(f"mask on frame {value!r}: frames are 0, 1, 2, ...", RejectReason.FRAME_OUT_OF_RANGE)
    return frame


def _rle(value: Any) -> RleMask:
    """A given mask (COCO RLE, compressed or not, or `{"segmentation": RLE}`), checked to decode faithfully."""
    from engine.masks import validated_mask

    if isinstance(value, Mapping) and "segmentation" in value:
        value = value["segmentation"]
    if not isinstance(value, Mapping):
        raise ValueError("a mask must be a COCO RLE mapping")
    return validated_mask(value)
