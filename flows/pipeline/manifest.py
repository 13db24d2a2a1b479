"""Reading a source manifest (CSV, Parquet, JSONL or a JSON list) into `ManifestRow`s.

A row names a video (a local path, relative to the manifest's folder, or a URL) with its caption, an
optional time span (`start`/`end` or `start_s`/`end_s`, seconds) and an optional `source_id` (a stable id of
the source video, e.g. a Panda-70M id; without it a local video is identified by its bytes, a URL by itself).
Rows for the QA path also carry `objects`: a list of `{name, expression, category?, masks: {frame: COCO RLE}}`
(a JSON string in CSV/Parquet).
A manifest without a video column, or a JSON list or Parquet file that cannot be parsed as a whole, is a config
error (fail fast, one line); a row that lacks a video or whose objects are malformed is kept with its `problem`
(and `problem_reason`) set, so ingest turns it into a reject and carries on. Files are parsed by `engine.parsing`:
a byte-order mark is dropped, a JSONL or CSV line that is not UTF-8 or not parsable, and a row with duplicate keys,
runaway nesting or lone surrogates, is a `hostile_structure` reject of that row alone; huge numbers never reach
Python's int parser. Texts are cleaned of control characters (`engine.parsing.clean_text`).
Rows are checked here for what needs no video (`ManifestPolicy`): a local path must resolve inside the allowed
roots (`path_not_allowed`, never opened), a span must be finite and ordered (`bad_span`), texts no longer than
`max_text_chars` (`text_too_long`), and every given mask a faithful RLE or polygon (`invalid_mask`, frames
below 0: `frame_out_of_range`); ingest checks the rest against the probed video.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import ConfigError, InvalidMaskError, PathNotAllowedError, RejectReason
from engine.parsing import (
    ParseError,
    bounded,
    clean_text,
    is_clean,
    loads_json,
    preview,
    structure_problem,
)
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
        raise ConfigError(f"manifest not found: {preview(str(path), 300)}")
    raw = list(_raw_rows(path))
    first = next((item for item in raw if not isinstance(item, _Unreadable)), None)
    if raw and not (isinstance(first, Mapping) and any(key in first for key in _VIDEO_KEYS)):
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
    first = next((item for item in raw if not isinstance(item, _Unreadable)), None)
    if first is not None and not (isinstance(first, Mapping) and any(key in first for key in _VIDEO_KEYS)):
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


@dataclass(frozen=True, slots=True)
class _Unreadable:
    """A row that could not be parsed on its own (bad UTF-8, invalid JSON, a CSV field over the limit): a reject."""

    problem: str


def _raw_rows(path: Path) -> Iterator[Any]:
    """The file's rows: JSONL and CSV line by line (a row that cannot be read is an `_Unreadable` row, the rest go
    on); a JSON list or a Parquet file that cannot be read as a whole is a `ConfigError`."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            yield from _csv_rows(path)
        elif suffix == ".parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            try:
                yield from pq.read_table(path).to_pylist()
            except (pa.ArrowException, OSError, ValueError) as exc:
                raise ConfigError(f"manifest {path} is not a readable Parquet file: {bounded(exc, 300)}") from None
        elif suffix in (".jsonl", ".ndjson"):
            with path.open("rb") as handle:
                for number, line in enumerate(handle):
                    if number == 0 and line.startswith(b"\xef\xbb\xbf"):
                        line = line[3:]
                    if not line.strip():
                        continue
                    try:
                        yield loads_json(line, f"line {number + 1}")
                    except ParseError as exc:
                        yield _Unreadable(str(exc))
        elif suffix == ".json":
            try:
                data = loads_json(path.read_bytes(), f"manifest {path}")
            except ParseError as exc:
                raise ConfigError(str(exc)) from None
            if not isinstance(data, list):
                raise ConfigError(f"manifest {path} must hold a JSON list of rows")
            yield from data
        else:
            raise ConfigError(f"manifest {path}: unsupported format {suffix!r} (csv, parquet, jsonl, json)")
    except OSError as exc:
        raise ConfigError(f"manifest {path} cannot be read: {exc.strerror or exc}") from None


def _csv_rows(path: Path) -> Iterator[Any]:
    """CSV rows as mappings; a line that is not UTF-8 or a field above the csv module's limit is one bad row."""
    with path.open("rb") as handle:
        raw = handle.read()
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    # Undecodable bytes become lone surrogates here, so only their own row is rejected (`structure_problem`).
    text = raw.decode("utf-8", errors="surrogateescape")
    reader = csv.reader(io.StringIO(text, newline=""))
    header: list[str] | None = None
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            if header is None:
                raise ConfigError(f"manifest {path}: its header cannot be read: {bounded(exc, 200)}") from None
            yield _Unreadable(f"CSV line {reader.line_num}: {bounded(exc, 200)}")
            continue
        if header is None:
            header = cells
            continue
        if not any(cell.strip() for cell in cells):
            continue
        if len(cells) > len(header):
            yield _Unreadable(f"CSV line {reader.line_num} has {len(cells)} fields, the header {len(header)}")
            continue
        yield dict(zip(header, cells + [""] * (len(header) - len(cells)), strict=True))


def _first(item: Mapping[str, Any], keys: tuple[str, ...]) -> Any:
    for key in keys:
        value = item.get(key)
        if value not in (None, ""):
            return value
    return None


def _normalise(
    index: int, item: Any, base: Path, roots: Sequence[Path], policy: ManifestPolicy
) -> ManifestRow:
    """The row normalised; whatever its data raises (a list where text belongs, ...) makes it a malformed row."""
    try:
        return _normalise_row(index, item, base, roots, policy)
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError, RecursionError) as exc:
        return ManifestRow(row=index, video_uri="", caption="", problem=f"malformed row: {bounded(exc, 300)}")


def _normalise_row(
    index: int, item: Any, base: Path, roots: Sequence[Path], policy: ManifestPolicy
) -> ManifestRow:
    if isinstance(item, _Unreadable):
        return ManifestRow(row=index, video_uri="", caption="", problem=f"unreadable row: {item.problem}",
                           problem_reason=RejectReason.HOSTILE_STRUCTURE)
    if not isinstance(item, Mapping):
        return ManifestRow(row=index, video_uri="", caption="", problem="row is not a mapping of columns")
    hostile = structure_problem(item)
    if hostile is not None:
        return ManifestRow(row=index, video_uri="", caption="", problem=f"the row {hostile}",
                           problem_reason=RejectReason.HOSTILE_STRUCTURE)
    video = _text(_first(item, _VIDEO_KEYS)).strip()
    caption = clean_text(_text(_first(item, _CAPTION_KEYS))).strip()
    source = clean_text(_text(item.get("source")))[:1000]
    source_id = clean_text(_text(item.get("source_id"))).strip()[:1000]
    problems: list[tuple[str, RejectReason]] = [] if video else [("row has no video", RejectReason.MALFORMED_SAMPLE)]
    if video and (not is_clean(video) or len(video) > 4096):
        problems.append((f"video {preview(video)} is not a usable path (control characters, or above 4096 "
                         "characters)", RejectReason.MALFORMED_SAMPLE))
        video = ""
    if video and not is_url(video):
        from engine.paths import resolve_allowed

        local = video.removeprefix("file://")
        try:
            video = str(resolve_allowed(local, roots, base=base, allow_outside=policy.allow_outside))
        except PathNotAllowedError as exc:
            video = str(Path(local) if Path(local).is_absolute() else base / local)
            problems.append((bounded(exc), exc.reason))
        except (OSError, ValueError) as exc:  # a name too long for the file system, an embedded NUL
            problems.append((f"video path {preview(local)} cannot be resolved: {bounded(exc, 200)}",
                             RejectReason.MALFORMED_SAMPLE))
    start_s = end_s = None
    try:
        start_s = _seconds(_first(item, _START_KEYS))
        end_s = _seconds(_first(item, _END_KEYS))
        if start_s is not None and end_s is not None and end_s <= start_s:
            raise ValueError(f"end {end_s:g} s is not after start {start_s:g} s")
    except ValueError as exc:
        start_s = end_s = None
        problems.append((f"bad span: {bounded(exc, 300)}", RejectReason.BAD_SPAN))
    limit = policy.max_text_chars
    if limit is not None and len(caption) > limit:
        problems.append((f"caption of {len(caption)} characters, above {limit}", RejectReason.TEXT_TOO_LONG))
    given: tuple[GivenObject, ...] = ()
    objects = item.get("objects")
    if objects not in (None, "", []):
        try:
            given = _given_objects(objects, limit)
        except _RowProblem as exc:
            problems.append((f"malformed objects: {bounded(exc, 500)}", exc.reason))
        except InvalidMaskError as exc:
            problems.append((f"malformed objects: {bounded(exc, 500)}", exc.reason))
        except ParseError as exc:
            problems.append((f"malformed objects: {exc}", RejectReason.HOSTILE_STRUCTURE))
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError, RecursionError) as exc:
            problems.append((f"malformed objects: {bounded(exc, 500)}", RejectReason.MALFORMED_SAMPLE))
    if not caption and not given and not problems:
        problems.append(("row has neither a caption nor objects", RejectReason.MALFORMED_SAMPLE))
    problem, reason = problems[0] if problems else ("", RejectReason.MALFORMED_SAMPLE)
    return ManifestRow(
        row=index, video_uri=video, caption=caption, start_s=start_s, end_s=end_s, source=source, source_id=source_id,
        given_objects=given, problem=problem, problem_reason=reason,
    )


def _text(value: Any) -> str:
    """A cell as text: None and "" are ""; numbers as written; anything else (a list, a mapping) is no text."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool | int | float):
        return str(value)
    raise ValueError(f"expected text, got {preview(value)}")


def _seconds(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or (isinstance(value, str) and len(value) > 64):
        raise ValueError(f"time {preview(value, 40)} is not a number of seconds")
    try:
        seconds = float(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ValueError(f"time {preview(value, 40)} is not a number of seconds") from exc
    if not math.isfinite(seconds):
        raise ValueError(f"time {preview(value, 40)} is not finite")
    if seconds < 0:
        raise ValueError(f"negative time {seconds}")
    return seconds


def _given_objects(objects: Any, max_chars: int | None) -> tuple[GivenObject, ...]:
    if isinstance(objects, str):
        objects = loads_json(objects, "the objects column")
        hostile = structure_problem(objects)
        if hostile is not None:
            raise ParseError(f"the objects column {hostile}")
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
        name = clean_text(_text(obj.get("name"))).strip()
        if not name:
            raise ValueError("object without a name")
        expression = clean_text(_text(obj.get("expression") or name))
        category = clean_text(_text(obj.get("category") or name))
        longest = max(len(name), len(expression), len(category))
        if max_chars is not None and longest > max_chars:
            raise _RowProblem(
                f"object {preview(name, 40)}: a text of {longest} characters, above {max_chars}",
                RejectReason.TEXT_TOO_LONG,
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
    except (TypeError, ValueError, OverflowError) as exc:
        raise ValueError(f"frame {preview(value, 40)} is not an integer") from exc
    if frame < 0:
        raise _RowProblem(f"mask on frame {preview(value, 40)}: frames are 0, 1, 2, ...",
                          RejectReason.FRAME_OUT_OF_RANGE)
    return frame


def _rle(value: Any) -> RleMask:
    """A given mask (COCO RLE, compressed or not, or `{"segmentation": RLE}`), checked to decode faithfully."""
    from engine.masks import validated_mask

    if isinstance(value, Mapping) and "segmentation" in value:
        value = value["segmentation"]
    if not isinstance(value, Mapping):
        raise ValueError("a mask must be a COCO RLE mapping")
    return validated_mask(value)
