"""Ingest: manifest rows -> probed clips in `sources/<shard_id>.parquet`, pinned into new shards.

Incremental and resumable: a row whose clip is already ingested (or was already rejected) is skipped, new
clips are pinned into NEW shards only (existing shard membership never changes), and the sources table of a
shard is written after its membership is pinned, so a killed ingest re-run with the same manifest finishes
the missing shards. Clip ids come from content (the bytes of a local video, the URI of a remote one, and the
span), so the same videos give the same clips on any machine and under any path. A video that cannot be
found or decoded becomes a reject with its reason; the run goes on.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from engine import ids
from engine.config import EngineConfig
from engine.errors import RejectReason, VideoReferError
from engine.types import Clip, Reject
from flows.pipeline import layout
from flows.pipeline.manifest import ManifestRow, is_url, read_manifest
from flows.pipeline.reports import StageReport, count_reasons
from flows.pipeline.stages import INGEST, chained_hash


@dataclass(frozen=True, slots=True, kw_only=True)
class IngestResult:
    """The ingest figures and the shards it pinned in this call."""

    report: StageReport
    new_shards: tuple[str, ...]
    all_shards: tuple[str, ...]


def source_id(uri: str) -> str:
    """What a clip id is derived from: the URI of a remote video, the content hash of a local one."""
    if is_url(uri):
        return uri
    digest = hashlib.sha256()
    with open(uri, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return "sha256:" + digest.hexdigest()[:32]


def ingest(root: layout.RootLike, manifest: str | Path, config: EngineConfig, *, workers: int = 4) -> IngestResult:
    """Probe the manifest's new rows, write their clips and rejects, and pin them into new shards."""
    started = time.perf_counter()
    droot = layout.open_root(root)
    layout.ensure_dataset(droot, config)
    rows = read_manifest(manifest)
    known_clips = layout.ingested_clip_ids(droot)
    known_rejects = layout.ingest_rejected_ids(droot)

    identified = _identify(rows, workers=workers)
    new: list[tuple[str, ManifestRow]] = []
    rejects: list[Reject] = []
    seen: set[str] = set()
    for cid, row, reject in identified:
        if cid in seen or cid in known_clips or cid in known_rejects:
            continue
        seen.add(cid)
        if reject is not None:
            rejects.append(reject)
        else:
            new.append((cid, row))

    clips: dict[str, Clip] = {}
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for cid, _row, outcome in pool.map(lambda item: (*item, _probe(*item)), new):
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
        layout.write_sources(droot, shard, [clips[cid] for cid in members])
        new_shards.append(shard)
    if rejects:
        layout.write_ingest_rejects(droot, rejects)

    report = StageReport(
        stage=INGEST,
        shard_id="manifest",
        config_hash=chained_hash(config, INGEST),
        items_in=len(seen),
        items_out=len(clips),
        rejects=count_reasons(rejects),
        seconds=time.perf_counter() - started,
        skipped=not new and not rejects,
    )
    return IngestResult(report=report, new_shards=tuple(new_shards), all_shards=tuple(layout.shards(droot)))


def _identify(rows: Sequence[ManifestRow], *, workers: int) -> list[tuple[str, ManifestRow, Reject | None]]:
    def one(row: ManifestRow) -> tuple[str, ManifestRow, Reject | None]:
        if row.problem:
            cid = ids.clip_id(f"row:{row.video_uri}:{row.row}", row.start_s, row.end_s)
            return cid, row, _reject(cid, RejectReason.MALFORMED_SAMPLE, f"manifest row {row.row}: {row.problem}")
        try:
            source = f"id:{row.source_id}" if row.source_id else source_id(row.video_uri)
        except OSError as exc:
            cid = ids.clip_id(row.video_uri, row.start_s, row.end_s)
            return cid, row, _reject(cid, RejectReason.VIDEO_NOT_FOUND, f"{row.video_uri}: {exc.strerror or exc}")
        return ids.clip_id(source, row.start_s, row.end_s), row, None

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(one, rows))


def _probe(cid: str, row: ManifestRow) -> Clip | Reject:
    from engine.video import probe

    try:
        info = probe(row.video_uri)
    except VideoReferError as exc:
        return _reject(cid, exc.reason, f"{row.video_uri}: {exc}")
    except Exception as exc:  # a decoder library error we did not classify is still a bad video, not a crash
        return _reject(cid, RejectReason.BAD_VIDEO, f"{row.video_uri}: {type(exc).__name__}: {exc}")
    if info.num_frames <= 0:
        return _reject(cid, RejectReason.EMPTY_VIDEO, f"{row.video_uri}: no frames")
    if row.start_s is not None and row.end_s is not None and row.end_s <= row.start_s:
        return _reject(cid, RejectReason.MALFORMED_SAMPLE, f"manifest row {row.row}: end <= start")
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


def _reject(cid: str, reason: RejectReason, message: str) -> Reject:
    return Reject(stage=INGEST, item_id=cid, clip_id=cid, reason=reason, message=message)
