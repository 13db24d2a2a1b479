"""Reading a source manifest (CSV, Parquet, JSONL or a JSON list) into `ManifestRow`s.

A row names a video (a local path, relative to the manifest's folder, or a URL) with its caption, an
optional time span (`start`/`end` or `start_s`/`end_s`, seconds) and an optional `source_id` (a stable id of
the source video, e.g. a Panda-70M id; without it a local video is identified by its bytes, a URL by itself).
Rows for the QA path also carry `objects`: a list of `{name, expression, category?, masks: {frame: COCO RLE}}`
(a JSON string in CSV/Parquet).
A manifest without a video column is a config error (fail fast); a row that lacks a video or whose objects
are malformed is kept with its `problem` set, so ingest turns it into a reject and carries on.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import ConfigError
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


def is_url(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def read_manifest(path: str | Path) -> list[ManifestRow]:
    """All rows of a manifest file, in file order."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"manifest not found: {path}")
    raw = list(_raw_rows(path))
    if raw and not any(key in raw[0] for key in _VIDEO_KEYS):
        raise ConfigError(f"manifest {path} has no video column (one of {', '.join(_VIDEO_KEYS)})")
    base = path.resolve().parent
    return [_normalise(index, item, base) for index, item in enumerate(raw)]


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


def _normalise(index: int, item: Mapping[str, Any], base: Path) -> ManifestRow:
    video = str(_first(item, _VIDEO_KEYS) or "").strip()
    caption = str(_first(item, _CAPTION_KEYS) or "").strip()
    source = str(item.get("source") or "")
    source_id = str(item.get("source_id") or "").strip()
    problem = "" if video else "row has no video"
    if video and not is_url(video):
        local = Path(video.removeprefix("file://"))
        video = str(local if local.is_absolute() else (base / local).resolve())
    try:
        start_s = _seconds(_first(item, _START_KEYS))
        end_s = _seconds(_first(item, _END_KEYS))
    except ValueError as exc:
        start_s = end_s = None
        problem = problem or f"bad span: {exc}"
    given: tuple[GivenObject, ...] = ()
    objects = item.get("objects")
    if objects not in (None, "", []):
        try:
            given = _given_objects(objects)
        except (ValueError, TypeError, KeyError) as exc:
            problem = problem or f"malformed objects: {exc}"
    if not caption and not given and not problem:
        problem = "row has neither a caption nor objects"
    return ManifestRow(
        row=index, video_uri=video, caption=caption, start_s=start_s, end_s=end_s, source=source, source_id=source_id,
        given_objects=given, problem=problem,
    )


def _seconds(value: Any) -> float | None:
    if value is None:
        return None
    seconds = float(value)
    if seconds < 0:
        raise ValueError(f"negative time {seconds}")
    return seconds


def _given_objects(objects: Any) -> tuple[GivenObject, ...]:
    if isinstance(objects, str):
        objects = json.loads(objects)
    given = []
    for obj in objects:
        masks = {int(frame): _rle(rle) for frame, rle in dict(obj["masks"]).items() if rle is not None}
        if not masks:
            raise ValueError(f"object {obj.get('name')!r} has no masks")
        name = str(obj["name"]).strip()
        if not name:
            raise ValueError("object without a name")
        given.append(
            GivenObject(
                name=name,
                expression=str(obj.get("expression") or name),
                category=str(obj.get("category") or name),
                masklet=Masklet(masks=masks, key_frame=min(masks)),
            )
        )
    return tuple(given)


def _rle(value: Any) -> RleMask:
    if isinstance(value, Mapping) and "segmentation" in value:
        value = value["segmentation"]
    if not isinstance(value, Mapping):
        raise ValueError("a mask must be a COCO RLE mapping")
    try:
        from engine.masks import to_rle_mask  # accepts uncompressed RLE and polygons as well
    except ImportError:  # pragma: no cover - older engine.masks
        return RleMask.from_coco(value)
    return to_rle_mask(value)
