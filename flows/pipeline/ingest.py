"""Ingest: manifest rows -> probed clips in `sources/<shard_id>.parquet`, pinned into new shards.

Incremental and resumable: a row whose clip is already ingested (or was already rejected) is skipped, new
clips are pinned into NEW shards only (existing shard membership never changes), and the sources table of a
shard is written after its membership is pinned, so a killed ingest re-run with the same manifest finishes
the missing shards. Clip ids come from content (the bytes of a local video, the URI of a remote one, and the
span), so the same videos give the same clips on any machine and under any path. A video that cannot be
found or decoded becomes a reject with its reason; the run goes on.

Every row is checked at this edge, with the data's own reason: its path against the allowed roots (the
manifest's folder, the dataset root and `paths.allowed_roots`) before anything opens it; only regular files and
frame folders are read, at most `limits.max_video_bytes`; the pixel budget (`limits.max_decoded_pixels`, width x
height x frames decoded at once) from the stream header before decoding; the span against the video's length;
given masks against the video's frame size and frame count; a row naming the clip of an earlier row is a
`duplicate_row` reject (saying whether its caption differs). Every new row ends as a clip or a reject:
`items_in = items_out + rejected`.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine import ids
from engine.config import EngineConfig
from engine.errors import RejectReason, VideoReferError
from engine.parsing import bounded
from engine.types import Clip, Reject
from flows.pipeline import layout
from flows.pipeline.manifest import ManifestPolicy, ManifestRow, is_url, read_manifest
from flows.pipeline.reports import StageReport, count_reasons
from flows.pipeline.sources import _digest, _fingerprint, fingerprint_path
from flows.pipeline.stages import INGEST, chained_hash


@dataclass(frozen=True, slots=True, kw_only=True)
class IngestResult:
    """The ingest figures and the shards it pinned in this call."""

    report: StageReport
    new_shards: tuple[str, ...]
    all_shards: tuple[str, ...]


def manifest_policy(droot: layout.DatasetRoot, manifest: str | Path, config: EngineConfig) -> ManifestPolicy:
    """The rows' limits: paths inside the manifest's folder, the (local) dataset root or `paths.allowed_roots`."""
    roots = [] if is_url(str(manifest)) else [Path(manifest).resolve().parent]
    if droot.is_local:
        roots.append(Path(droot.full_path("")))
    roots.extend(Path(root) for root in config.paths.allowed_roots)
    return ManifestPolicy(
        allowed_roots=tuple(roots), allow_outside=config.paths.allow_outside,
        max_text_chars=config.limits.max_text_chars,
    )


def frames_decoded_at_once(config: EngineConfig, row: ManifestRow | None = None) -> int:
    """The most frames of one clip a stage decodes together: sampled frames, mask frames, SAM 2's frames, and
    for given objects the sampled frames plus every annotated frame (export stores them side by side)."""
    frames = max(config.sampling.num_frames, config.sampling.mask_frames)
    segmenter = config.agents.segmenter
    if getattr(segmenter, "kind", "") in ("sam2", "sam3"):
        frames = max(frames, int(segmenter.max_frames))
    if row is not None and row.given_objects:
        annotated = {frame for obj in row.given_objects for frame in obj.masklet.masks}
        frames = max(frames, config.sampling.num_frames + len(annotated))
    return frames


def ingest(root: layout.RootLike, manifest: str | Path, config: EngineConfig, *, workers: int = 4) -> IngestResult:
    """Probe the manifest's new rows, write their clips and rejects, and pin them into new shards."""
    started = time.perf_counter()
    droot = layout.open_root(root)
    layout.ensure_dataset(droot, config)
    rows = read_manifest(manifest, manifest_policy(droot, manifest, config))
    known_clips = layout.ingested_clip_ids(droot)
    known_rejects = layout.ingest_rejected_ids(droot)

    identified = _identify(rows, workers=workers, max_bytes=config.limits.max_video_bytes)
    new: list[tuple[str, ManifestRow]] = []
    rejects: list[Reject] = []
    first_row: dict[str, ManifestRow] = {}
    considered = 0
    for cid, row, reject in identified:
        earlier = first_row.get(cid)
        if earlier is not None:  # the same clip (bytes and span) as an earlier row: counted, never dropped silently
            duplicate = _duplicate_reject(cid, row, earlier)
            if duplicate.clip_id not in known_rejects:
                considered += 1
                rejects.append(duplicate)
            continue
        first_row[cid] = row
        if cid in known_clips or cid in known_rejects:
            continue
        considered += 1
        if reject is not None:
            rejects.append(reject)
        else:
            new.append((cid, row))

    clips: dict[str, Clip] = {}
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for cid, _row, outcome in pool.map(lambda item: (*item, _probe(*item, config)), new):
            if isinstance(outcome, Clip):
                clips[cid] = outcome
            else:
                rejects.append(outcome)

    # Clips pinned by an earlier, interrupted ingest have no sources table yet: they are "new" here again.
    shard_ids = layout.pin(droot, [cid for cid, _ in new if cid in clips], config.shard_size)
    new_shards = []
    for shard in shard_ids:
        if layout.has_sources(droot, shard):
            continue
        members = layout.shard_members(droot, shard)
        missing = [cid for cid in members if cid not in clips]
        if missing:
            # Only possible when the manifest lost rows between runs; their clips cannot be rebuilt.
            raise VideoReferError(f"shard {shard} pins {len(missing)} clips that the manifest no longer lists")
        # What ingest checked, before the sources table (the shard's "ingested" mark) is written.
        droot.write_json(fingerprint_path(shard), {cid: _fingerprint(clips[cid].video_uri) for cid in members})
        layout.write_sources(droot, shard, [clips[cid] for cid in members])
        new_shards.append(shard)
    if rejects:
        layout.write_ingest_rejects(droot, rejects)

    report = StageReport(
        stage=INGEST,
        shard_id="manifest",
        config_hash=chained_hash(config, INGEST),
        items_in=considered,
        items_out=len(clips),
        rejects=count_reasons(rejects),
        seconds=time.perf_counter() - started,
        skipped=not new and not rejects,
    )
    return IngestResult(report=report, new_shards=tuple(new_shards), all_shards=tuple(layout.shards(droot)))


def _identify(
    rows: Sequence[ManifestRow], *, workers: int, max_bytes: int | None = None
) -> list[tuple[str, ManifestRow, Reject | None]]:
    def one(row: ManifestRow) -> tuple[str, ManifestRow, Reject | None]:
        if row.problem:
            cid = ids.clip_id(f"row:{row.video_uri}:{row.row}", row.start_s, row.end_s)
            return cid, row, _reject(cid, row.problem_reason, f"manifest row {row.row}: {row.problem}")
        try:
            source = f"id:{row.source_id}" if row.source_id else _digest(row.video_uri, max_bytes)
        except VideoReferError as exc:
            cid = ids.clip_id(row.video_uri, row.start_s, row.end_s)
            return cid, row, _reject(cid, exc.reason, f"{row.video_uri}: {exc}")
        except OSError as exc:
            cid = ids.clip_id(row.video_uri, row.start_s, row.end_s)
            return cid, row, _reject(cid, RejectReason.VIDEO_NOT_FOUND, f"{row.video_uri}: {exc.strerror or exc}")
        return ids.clip_id(source, row.start_s, row.end_s), row, None

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(one, rows))


def _duplicate_reject(cid: str, row: ManifestRow, earlier: ManifestRow) -> Reject:
    # Its own id (from the clip and the row), so the kept clip is not marked rejected and a re-run skips it.
    duplicate_id = ids.clip_id(f"duplicate:{cid}:row{row.row}", None, None)
    if row.caption != earlier.caption:
        detail = f"a different caption {row.caption[:80]!r} (kept: row {earlier.row}'s)"
    elif row.given_objects != earlier.given_objects:
        detail = f"the same caption but other objects (kept: row {earlier.row}'s)"
    else:
        detail = "the same caption"
    message = f"manifest row {row.row} names the clip of row {earlier.row} (same video and span) with {detail}"
    return Reject(stage=INGEST, item_id=duplicate_id, clip_id=duplicate_id, reason=RejectReason.DUPLICATE_ROW,
                  message=message)


def _probe(cid: str, row: ManifestRow, config: EngineConfig) -> Clip | Reject:
    from engine.video import check_pixel_budget, probe

    try:
        info = probe(row.video_uri, max_bytes=config.limits.max_video_bytes)
        check_pixel_budget(info, frames_decoded_at_once(config, row), config.limits.max_decoded_pixels)
    except VideoReferError as exc:
        return _reject(cid, exc.reason, f"{row.video_uri}: {exc}")
    except Exception as exc:  # a decoder library error we did not classify is still a bad video, not a crash
        return _reject(cid, RejectReason.BAD_VIDEO, f"{row.video_uri}: {type(exc).__name__}: {exc}")
    if info.num_frames <= 0:
        return _reject(cid, RejectReason.EMPTY_VIDEO, f"{row.video_uri}: no frames")
    problem = _span_problem(row, info) or _given_problem(row, info)
    if problem is not None:
        reason, message = problem
        return _reject(cid, reason, f"manifest row {row.row}: {message}")
    return Clip(
        clip_id=cid,
        video_uri=row.video_uri,
        caption=row.caption,
        start_s=row.start_s,
        end_s=row.end_s,
        fps=float(info.fps),
        width=int(info.width),
        height=int(info.height),
        num_frames=int(info.num_frames),
        source=row.source,
        given_objects=row.given_objects,
    )


def _span_problem(row: ManifestRow, info: Any) -> tuple[RejectReason, str] | None:
    """A span that holds no frame of the video, or ends past its end (beyond a frame's rounding), is bad data."""
    from engine.video import span_to_frames

    if row.start_s is None and row.end_s is None:
        return None
    if row.start_s is not None and row.end_s is not None and row.end_s <= row.start_s:
        return RejectReason.BAD_SPAN, f"end {row.end_s:g} s is not after start {row.start_s:g} s"
    tolerance = 1.0 / info.fps if info.fps > 0 else 0.0
    if row.end_s is not None and row.end_s > info.duration_s + tolerance:
        return RejectReason.BAD_SPAN, f"span ends at {row.end_s:g} s, past the video's end ({info.duration_s:.3f} s)"
    try:
        span_to_frames(info, row.start_s, row.end_s)
    except ValueError as exc:
        return RejectReason.BAD_SPAN, str(exc)
    return None


def _given_problem(row: ManifestRow, info: Any) -> tuple[RejectReason, str] | None:
    """Given masks must have the video's frame size and lie on its frames (not only match each other)."""
    for obj in row.given_objects:
        for frame, mask in sorted(obj.masklet.masks.items()):
            if not 0 <= frame < info.num_frames:
                return RejectReason.FRAME_OUT_OF_RANGE, (
                    f"object {obj.name!r} has a mask on frame {frame}; the video has frames 0..{info.num_frames - 1}"
                )
            if (mask.height, mask.width) != (info.height, info.width):
                return RejectReason.MASK_SIZE_MISMATCH, (
                    f"object {obj.name!r}: the mask on frame {frame} is {mask.width}x{mask.height}, "
                    f"the video's frames are {info.width}x{info.height}"
                )
    return None


def _reject(cid: str, reason: RejectReason, message: str) -> Reject:
    return Reject(stage=INGEST, item_id=cid, clip_id=cid, reason=reason, message=bounded(message))


# ------------------------------------------------------------------------------------------ files that change


_RESOLVED = re.compile(r" resolves to (.+?), outside the allowed roots")


def ingest_reject_lines(rejects: Sequence[Reject], *, examples: int = 3) -> list[str]:
    """What the terminal says after an ingest that rejected rows: the count per reason, a few messages of each, and
    for `path_not_allowed` the config lines that allow the folders (and how to have the rows checked again)."""
    if not rejects:
        return []
    by_reason: dict[str, list[Reject]] = {}
    for reject in rejects:
        by_reason.setdefault(str(reject.reason), []).append(reject)
    counts = ", ".join(f"{reason} {len(rows)}" for reason, rows in sorted(by_reason.items()))
    lines = [f"rejected rows: {counts}"]
    for reason, rows in sorted(by_reason.items()):
        lines += [f"  {reason}: {bounded(row.message, 300)}" for row in rows[:examples]]
        if len(rows) > examples:
            lines.append(f"  {reason}: ... and {len(rows) - examples} more")
    not_allowed = by_reason.get(str(RejectReason.PATH_NOT_ALLOWED), [])
    folders = sorted({str(Path(found.group(1)).parent) for row in not_allowed
                      if (found := _RESOLVED.search(row.message))})
    if not_allowed:
        lines.append("to allow those videos, add their folders to the config you pass with --config:")
        lines.append("  paths:")
        lines.append(f"    allowed_roots: [{', '.join(folders) if folders else '/path/to/videos'}]")
        lines.append("  (or `allow_outside: true` for any path); rows once rejected stay rejected in a root: delete "
                     "its rejects/ingest/ folder, then ingest again")
    return lines
