"""Export of one shard: accepted records -> training samples -> WebDataset tars + VideoRefer-700K JSON.

Detailed samples come from the refine table, short ones from short_captions, QA ones from generate_qa. Each
sample's frames are the clip's uniformly sampled frames (the ones the agents saw), then its extra mask frames (none
for the engine's samples, whose masks lie on sampled frames; written all the same when a sample has them), read
once per clip and stored with their aspect ratio kept (`storage.wds.bounded_size`: short side scaled down to
`sampling.image_size`, never enlarged; the processor stretches them to its square at training time, as it does
the full frames at inference). All samples of one clip go into ONE clip record (its frames once, a json listing
its samples: `storage.wds`), so a clip's detailed, short and QA samples no longer carry three copies of its JPEGs.

Naming: engine shard `shard-NNNNNN` writes exactly one tar, `export/wds/train-NNNNNN.tar` (same number; an
empty tar when it exports nothing), with its `.parquet` index. The tar number is a pure function of the shard
id, not of what other shards exported: the export runs one task per shard, in parallel and resumed shard by
shard, and a re-export of one shard rewrites that one tar and renumbers nothing. Shards are pinned with
consecutive numbers from 0 (`storage.shards`), so the export is the WebDataset set `train-{000000..00000K}.tar`
with no gap, and its tar size follows `shard_size` (500 clips by default). The shard's 700K items go to
`export/json/shards/S.json`; after the stage's tasks, `finalize_export` merges the parts of every exported shard
into one file per export, `export/json/train.json` (`train-NNNNNN.json` parts above `MAX_JSON_ITEMS` items),
with its video root stated in `export/json/_export.json` (`storage.videorefer_json.write_export_files`). A
re-export first removes the shard's old files (those of the earlier `train-shard-S-NNNNNN` naming too), and the
done marker (written last) lists the files. Samples that fail validation are rejects of the `export` stage.

Exported samples are a pure function of the inputs: a video under the dataset root is named relative to the
root, and provenance keeps who produced each field but not the run's timings (they stay in the stage tables),
so the same inputs give byte-identical tars on any root.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from engine.config import EngineConfig
from engine.errors import InvalidSampleError, RejectReason, VideoReferError
from engine.types import ClipQA, ObjectRecord, Reject, Sample
from flows.pipeline import layout
from flows.pipeline.reports import StageReport, count_reasons
from storage.root import DatasetRoot

# Stage names (flows.pipeline.stages registers this module's `export_shard` as the export stage).
EXPORT, REFINE, SHORT_CAPTIONS, GENERATE_QA = "export", "refine", "short_captions", "generate_qa"

SPLIT = "train"
WDS_DIR = "export/wds"
JSON_DIR = "export/json"
JSON_PARTS_DIR = f"{JSON_DIR}/shards"
MAX_JSON_ITEMS = 200_000  # items per merged 700K JSON file; more make `train-NNNNNN.json` parts
DECODE_AHEAD = 2  # clips decoded ahead of the writer

T = TypeVar("T")
R = TypeVar("R")

# ShardWriter merges `_stats.json` on close (read-modify-write): shards exported in parallel threads take turns.
_STATS_LOCK = threading.Lock()


def tar_number(shard_id: str) -> int:
    """The number of the one tar an engine shard exports: the shard's own (`shard-000007` -> `train-000007.tar`)."""
    number = shard_id.rsplit("-", 1)[-1]
    if not number.isdigit():
        raise ValueError(f"shard id {shard_id!r} does not end in a number")
    return int(number)


def tar_stem(shard_id: str) -> str:
    return f"{SPLIT}-{tar_number(shard_id):06d}"


def build_samples(
    root: DatasetRoot, shard_id: str, config: EngineConfig, inputs: Mapping[str, Sequence[Any]]
) -> tuple[list[Sample], list[Reject], int]:
    """The shard's samples (in a stable order), the items that could not become samples, and the items read."""
    from agents.frames import sample_clip_frames
    from storage.samples import detailed_sample, qa_samples, short_sample, use_multi_frame

    sampling = config.sampling
    samples: list[Sample] = []
    rejects: list[Reject] = []
    frames_of: dict[str, list[int]] = {}

    def frames(clip: Any) -> list[int]:
        if clip.clip_id not in frames_of:
            frames_of[clip.clip_id] = sample_clip_frames(clip, sampling.num_frames)
        return frames_of[clip.clip_id]

    def attempt(item_id: str, clip_id: str, make: Any) -> None:
        try:
            samples.append(make())
        except (InvalidSampleError, VideoReferError, ValueError) as exc:
            reason = getattr(exc, "reason", RejectReason.MALFORMED_SAMPLE)
            rejects.append(Reject(stage=EXPORT, item_id=item_id, clip_id=clip_id, reason=reason, message=str(exc)))

    detailed: list[ObjectRecord] = list(inputs.get(REFINE, ()))
    for record in detailed:
        multi = use_multi_frame(sampling.multi_frame_ratio, config.seed, record.object_id)
        attempt(record.object_id, record.clip_id, lambda r=record, m=multi: detailed_sample(
            r, frame_indices=frames(r.clip), multi_frame=m, seed=config.seed))
    short: list[ObjectRecord] = list(inputs.get(SHORT_CAPTIONS, ()))
    for record in short:
        attempt(record.object_id, record.clip_id, lambda r=record: short_sample(
            r, frame_indices=frames(r.clip), seed=config.seed))
    clip_qas: list[ClipQA] = list(inputs.get(GENERATE_QA, ()))
    for clip_qa in clip_qas:
        multi = use_multi_frame(sampling.multi_frame_ratio, config.seed, clip_qa.clip_id)
        try:
            made, bad = qa_samples(clip_qa, frame_indices=frames(clip_qa.clip), multi_frame=multi, seed=config.seed)
        except (VideoReferError, ValueError) as exc:
            reason = getattr(exc, "reason", RejectReason.MALFORMED_SAMPLE)
            made, bad = [], [Reject(stage=EXPORT, item_id=clip_qa.clip_id, clip_id=clip_qa.clip_id, reason=reason,
                                    message=str(exc))]
        samples.extend(made)
        rejects.extend(bad)
    items = len(detailed) + len(short) + sum(max(1, len(q.qa)) for q in clip_qas)
    return [_portable(root, sample) for sample in samples], rejects, items


def _portable(root: DatasetRoot, sample: Sample) -> Sample:
    """The sample without run-specific values: root-relative video path, provenance without timings."""
    video = sample.video_uri
    if root.is_local and video and not video.startswith(("http://", "https://")):
        with contextlib.suppress(ValueError):  # a video outside the root keeps its absolute path
            video = Path(video).resolve().relative_to(Path(root.full_path("")).resolve()).as_posix()
    elif not root.is_local and video.startswith(root.url_of("").rstrip("/") + "/"):  # under an s3:// root
        video = video[len(root.url_of("").rstrip("/")) + 1 :]
    provenance = tuple(dataclasses.replace(p, latency_s=0.0) for p in sample.provenance)
    return dataclasses.replace(sample, video_uri=video, provenance=provenance)


def export_shard(
    root: layout.RootLike, shard_id: str, config: EngineConfig, *, config_hash: str,
    inputs: Mapping[str, Sequence[Any]],
) -> StageReport:
    """Write the shard's tars and JSON from its parents' records (`inputs`: refine, short_captions,
    generate_qa), then its report and done marker carrying `config_hash`; return the figures."""
    from storage.samples import vision_grid
    from storage.wds import ShardWriter

    started = time.perf_counter()
    droot = layout.open_root(root)
    droot.delete(droot.done_path(EXPORT, shard_id))
    clear_shard_export(droot, shard_id)
    samples, rejects, items = build_samples(droot, shard_id, config, inputs)
    by_clip: dict[str, list[Sample]] = defaultdict(list)
    for sample in samples:
        by_clip[sample.clip_id].append(sample)
    clips = {clip.clip_id: clip for clip in layout.shard_clips(droot, shard_id)}
    from flows.pipeline.sources import read_fingerprints, verify_source  # the frames must be the ingested clip's

    fingerprints = read_fingerprints(droot, shard_id)

    def decode(clip_id: str) -> tuple[list[Sample], dict[int, np.ndarray] | VideoReferError]:
        group = sorted(by_clip[clip_id], key=lambda s: s.key)
        try:
            verify_source(clips[clip_id], fingerprints)
            return group, _clip_frames(clips[clip_id].video_uri, group, config.sampling.image_size)
        except VideoReferError as exc:
            return group, exc

    written: list[Sample] = []
    writer = ShardWriter(droot, split=SPLIT, start_index=tar_number(shard_id), max_samples_per_tar=None,
                         empty_tar=True, grid=vision_grid(config.sampling.image_size, config.sampling.patch_size))
    try:
        for group, frames_by_index in prefetch(decode, sorted(by_clip), ahead=DECODE_AHEAD):
            if isinstance(frames_by_index, VideoReferError):
                exc = frames_by_index
                rejects.extend(
                    Reject(stage=EXPORT, item_id=s.key, clip_id=s.clip_id, reason=exc.reason, message=str(exc))
                    for s in group
                )
                continue
            bad = writer.write_clip(group, frames_by_index)
            rejected = {reject.item_id for reject in bad}
            written.extend(sample for sample in group if sample.key not in rejected)
            rejects.extend(bad)
    except BaseException:
        writer.__exit__(RuntimeError, None, None)
        raise
    with _STATS_LOCK:
        stats = writer.close()

    files = [f"{WDS_DIR}/{name}" for name in stats["tars"]]
    files += [f"{WDS_DIR}/{name.removesuffix('.tar')}.parquet" for name in stats["tars"]]
    json_path = f"{JSON_PARTS_DIR}/{shard_id}.json"
    part = _write_json_part(droot, shard_id, _json_700k(written))
    files.append(json_path)
    layout.tables.write_rejects(droot, EXPORT, shard_id, rejects)
    report = StageReport(
        stage=EXPORT,
        shard_id=shard_id,
        config_hash=config_hash,
        items_in=items,
        items_out=len(written),
        rejects=count_reasons(rejects),
        seconds=time.perf_counter() - started,
    )
    droot.write_json(layout.stage_report_path(EXPORT, shard_id), report.to_json())
    droot.mark_done(EXPORT, shard_id, config_hash, files=files, samples=len(written), stats=stats, json=part)
    return report


def prefetch(function: Callable[[T], R], items: Sequence[T], *, ahead: int) -> Iterator[R]:
    """`map(function, items)` in order, computing up to `ahead` items in background threads (bounded memory:
    at most `ahead` results wait), so decoding the next clips overlaps encoding this one's JPEGs."""
    with ThreadPoolExecutor(max_workers=ahead) as pool:
        pending: deque[Future[R]] = deque()
        for item in items:
            pending.append(pool.submit(function, item))
            if len(pending) > ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _clip_frames(video_uri: str, samples: Sequence[Sample], size: int) -> dict[int, np.ndarray]:
    """Every frame the clip's samples need, decoded once, aspect ratio kept (`storage.wds.bound_frames`)."""
    from engine.video import read_frames
    from storage.wds import bound_frames

    wanted = sorted({int(i) for s in samples for i in s.stored_frame_indices})
    frames = bound_frames(read_frames(video_uri, wanted), size)
    return {index: frames[k] for k, index in enumerate(wanted)}


def _json_700k(samples: Sequence[Sample]) -> list[dict[str, Any]]:
    from storage.videorefer_json import export_700k

    return list(export_700k(list(samples)))


def _write_json_part(root: DatasetRoot, shard_id: str, items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Write the shard's 700K items (`export/json/shards/S.json`); return what the merged files need of them
    (kept in the done marker, so `finalize_export` decides what changed without reading any part)."""
    from storage.videorefer_json import part_bytes, video_summary

    data, digest = part_bytes(items)
    root.write_bytes(f"{JSON_PARTS_DIR}/{shard_id}.json", data)
    return {"items": len(items), "digest": digest, "videos": video_summary(items, root)}


def _export_part(root: DatasetRoot, shard_id: str, marker: Mapping[str, Any]) -> Any:
    """The shard's `ExportPart` from its done marker (an older marker without it: from the part file itself)."""
    from storage.videorefer_json import ExportPart, part_bytes, video_summary

    stored = marker.get("json")
    if isinstance(stored, Mapping) and {"items", "digest", "videos"} <= stored.keys():
        return ExportPart(shard_id=shard_id, items=int(stored["items"]), digest=str(stored["digest"]),
                          videos=stored["videos"])
    items = root.read_json(f"{JSON_PARTS_DIR}/{shard_id}.json")
    return ExportPart(shard_id=shard_id, items=len(items), digest=part_bytes(items)[1],
                      videos=video_summary(items, root))


def clear_shard_export(root: DatasetRoot, shard_id: str) -> None:
    """Remove a shard's exported files (before a re-export), leaving other shards' files alone."""
    from storage.wds import STATS_NAME

    stem = tar_stem(shard_id)
    legacy = f"{SPLIT}-{shard_id}-"  # the earlier naming, `train-shard-NNNNNN-NNNNNN.tar`
    for name in root.listdir(WDS_DIR):
        if name.startswith(legacy) or name in (f"{stem}.tar", f"{stem}.parquet", f"{stem}.tar.tmp"):
            root.delete(f"{WDS_DIR}/{name}")
    root.delete(f"{JSON_DIR}/{shard_id}.json")  # the earlier per-shard JSON
    root.delete(f"{JSON_PARTS_DIR}/{shard_id}.json")
    stats_path = f"{WDS_DIR}/{STATS_NAME}"
    with _STATS_LOCK:
        if root.exists(stats_path):
            stats = root.read_json(stats_path)
            if legacy[:-1] in stats.get("splits", {}):  # the earlier naming kept one split per shard
                del stats["splits"][legacy[:-1]]
                root.write_json(stats_path, stats)


def finalize_export(root: layout.RootLike) -> list[str]:
    """Merge the 700K JSON parts of every shard whose export is done into the export's JSON file(s) and their
    `_export.json` (video root, files, item count); return the files written (none when nothing changed).

    Run after the export stage's tasks (`flows.engine_flows.run_stages`): a plain function of the stored parts, so
    running it again, or after one shard's re-export, gives the same files. The merged files are written by
    streaming the parts shard by shard (`storage.videorefer_json.write_export_parts`: memory independent of the
    number of items), and only the files whose shards' parts changed: with nothing changed it writes nothing.
    It also rewrites `_stats.json` from the figures each shard's done marker keeps (only when they differ), so
    merges lost between export tasks in parallel processes (Ray) are repaired.
    """
    from storage.videorefer_json import write_export_parts
    from storage.wds import write_split_stats

    droot = layout.open_root(root)
    parts = []
    writers: list[dict[str, Any]] = []
    for shard_id in sorted(layout.shards(droot)):
        marker = droot.read_done(EXPORT, shard_id)
        if marker is None:
            continue
        if droot.exists(f"{JSON_PARTS_DIR}/{shard_id}.json"):
            parts.append(_export_part(droot, shard_id, marker))
        if marker.get("stats"):
            writers.append(marker["stats"])
    if writers:  # shards exported in parallel processes may have lost each other's `_stats.json` merges
        with _STATS_LOCK:
            write_split_stats(droot.sub(WDS_DIR), SPLIT, writers)
    return write_export_parts(droot, parts, lambda shard: droot.read_json(f"{JSON_PARTS_DIR}/{shard}.json"),
                              name=SPLIT, max_items=MAX_JSON_ITEMS)


def exported_tars(root: layout.RootLike) -> list[str]:
    """Paths (or URLs) of every finished tar of the root, in name order."""
    droot = layout.open_root(root)
    return [droot.url_of(f"{WDS_DIR}/{name}") for name in droot.listdir(WDS_DIR) if name.endswith(".tar")]
