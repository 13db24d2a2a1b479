"""Import of the released VideoRefer-700K JSON into WebDataset tars, without running the engine.

`plan_import` splits the JSON list into chunks of `shard_size` items under `imports/<name>/chunk-NNNNNN.json`
(so each task reads only its chunk, not a JSON of hundreds of MB); `import_700k_shard` validates a chunk
(`storage.videorefer_json.import_700k`: null/missing masks and `<region>` mismatches become rejects), gives
each sample its frames as the release reads them (`frame_indices`: `sampling.num_frames` uniform frames of the
whole video; `extra_frame_indices`: every annotated frame not among them, since the release pools every mask
frame), reads them once per video, and writes `export/wds/import-<name>-...tar`. A sample with an annotated frame
outside the video (`frame_out_of_range`), masks of another size than the video's frames (`mask_size_mismatch`),
a video outside the `--videos` folder and `paths.allowed_roots` (`path_not_allowed`), a file that is not a
regular file or above `limits.max_video_bytes`, or one needing more than 100 frames, is a reject. Frames are
decoded in batches within `limits.max_decoded_pixels`. Per chunk the work is skipped when its done marker
carries the same config hash. The JSON is read by `engine.parsing` (a file that is not UTF-8 JSON is a config
error; an item with duplicate keys, runaway nesting or lone surrogates is a `hostile_structure` reject); the
`--videos` folder is resolved first, so the same inputs give the same ids and tars however it is spelled.
"""

from __future__ import annotations

import dataclasses
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from engine.config import EngineConfig
from engine.errors import DATA_ERRORS, ConfigError, RejectReason, VideoReferError
from engine.ids import stable_hash
from engine.parsing import ParseError, bounded, clean_text, loads_json, structure_problem, text_limit
from engine.types import Reject, Sample
from flows.pipeline import layout
from flows.pipeline.reports import StageReport, count_reasons
from flows.pipeline.stages import EXPORT, STAGE_BY_NAME
from storage.samples import MAX_SAMPLE_FRAMES, vision_grid

STAGE = "import_700k"
MAX_FRAMES = MAX_SAMPLE_FRAMES  # ShardWriter names frames with two digits
# Part of the config hash: chunks imported with the older frame layout (sampled and mask frames mixed into
# `frame_indices`, truncated to 100) are imported again.
FRAME_LAYOUT = "sampled+extra-v2"
HOSTILE = "\x00hostile_structure"  # a chunk's stand-in for an item with hostile structure: {HOSTILE: problem}


def _source(json_path: str | Path) -> tuple[str, str, int]:
    """The JSON's identity: its stem, its resolved path (a URL as given) and its size in bytes."""
    from engine.remote import is_url, remote_info

    if is_url(str(json_path)):
        url = str(json_path)
        try:
            size = int(remote_info(url).get("size") or 0)
        except FileNotFoundError as exc:
            raise ConfigError(f"700K JSON not found: {url}") from exc
        return Path(url.rsplit("/", 1)[-1]).stem, url, size
    path = Path(json_path)
    if not path.is_file():
        raise ConfigError(f"700K JSON not found: {path}")
    return path.stem, str(path.resolve()), path.stat().st_size


def _chunk_dir(json_path: str | Path) -> str:
    stem, identity, size = _source(json_path)
    return f"imports/{stem}-{stable_hash(identity, size, length=8)}"


def plan_import(root: layout.RootLike, json_path: str | Path, config: EngineConfig) -> list[str]:
    """Split the JSON into chunk files under the root (once); return the chunk ids."""
    from engine.remote import is_url, open_remote

    droot = layout.open_root(root)
    _stem, identity, _size = _source(json_path)
    path = str(json_path) if is_url(str(json_path)) else Path(json_path)
    directory = _chunk_dir(json_path)
    plan = f"{directory}/plan.json"
    if droot.exists(plan):
        return list(droot.read_json(plan)["chunks"])
    try:
        if isinstance(path, Path):
            raw = path.read_bytes()
        else:
            with open_remote(path) as handle:
                raw = handle.read()
        items = loads_json(raw, str(path))
    except ParseError as exc:
        raise ConfigError(str(exc)) from None
    if not isinstance(items, list):
        raise ConfigError(f"{path} must hold a JSON list of samples")
    # An item with hostile structure is kept in its place as its problem (lone surrogates cannot even be written).
    items = [{HOSTILE: problem} if (problem := structure_problem(item)) else item for item in items]
    chunks = []
    for offset in range(0, len(items), config.shard_size):
        chunk = f"{Path(directory).name}-{offset // config.shard_size:06d}"
        part = items[offset : offset + config.shard_size]
        droot.write_json(f"{directory}/{chunk}.json", {"offset": offset, "items": part})
        chunks.append(chunk)
    droot.write_json(plan, {"source": identity, "chunks": chunks})
    return chunks


def import_700k_shard(
    root: layout.RootLike, json_path: str | Path, video_root: str | Path, chunk: str, config: EngineConfig
) -> StageReport:
    """Validate one chunk, read its frames, write its tars; skipped when done with the same config."""
    from storage.videorefer_json import import_700k
    from storage.wds import ShardWriter

    started = time.perf_counter()
    droot = layout.open_root(root)
    video_root = canonical_video_root(video_root)
    config_hash = stable_hash(STAGE, STAGE_BY_NAME[EXPORT].own_hash(config), str(video_root), FRAME_LAYOUT)
    marker = droot.read_done(STAGE, chunk)
    if marker and marker.get("config_hash") == config_hash:
        stored = StageReport.from_json(droot.read_json(layout.stage_report_path(STAGE, chunk)))
        return dataclasses.replace(stored, skipped=True, seconds=0.0)
    data = droot.read_json(f"{_chunk_dir(json_path)}/{chunk}.json")
    grid = vision_grid(config.sampling.image_size, config.sampling.patch_size)
    items = list(data["items"])
    # Hostile structure (duplicate keys, runaway nesting, lone surrogates) is this item's reject; the item's place
    # is kept (an empty item, never a sample) so the others keep their numbers.
    hostile = {position: item[HOSTILE] if isinstance(item, dict) and HOSTILE in item else problem
               for position, item in enumerate(items)
               if (isinstance(item, dict) and HOSTILE in item) or (problem := structure_problem(item)) is not None}
    with text_limit(config.limits.max_text_chars):
        samples, rejects = import_700k(
            [{} if position in hostile else clean_item(item) for position, item in enumerate(items)],
            video_root=str(video_root), grid=grid, allowed_roots=list(config.paths.allowed_roots),
            allow_outside=config.paths.allow_outside, max_text_chars=config.limits.max_text_chars,
        )
    rejects = [r for r in rejects if not (r.item_id.startswith("item") and r.item_id[4:].isdigit()
                                          and int(r.item_id[4:]) in hostile)]
    rejects += [Reject(stage=STAGE, item_id=f"item{position}", clip_id="", reason=RejectReason.HOSTILE_STRUCTURE,
                       message=f"item {position} {problem}") for position, problem in sorted(hostile.items())]
    rejects = [dataclasses.replace(r, item_id=_renumber(r.item_id, data["offset"]), message=bounded(r.message))
               for r in rejects]

    split = f"import-{chunk}"
    for name in droot.listdir("export/wds"):
        if name.startswith(f"{split}-"):
            droot.delete(f"export/wds/{name}")
    by_video: dict[str, list[Sample]] = defaultdict(list)
    for sample in samples:
        by_video[sample.video_uri].append(sample)
    written = 0
    with ShardWriter(droot, split=split, grid=grid) as writer:
        for video in sorted(by_video):
            try:
                framed = _with_frames(video, by_video[video], config)
            except (VideoReferError, *DATA_ERRORS) as exc:  # this video's samples, never the whole chunk
                reason = exc.reason if isinstance(exc, VideoReferError) else RejectReason.ITEM_ERROR
                rejects.extend(
                    Reject(stage=STAGE, item_id=s.key, clip_id=s.clip_id, reason=reason,
                           message=str(exc) if isinstance(exc, VideoReferError) else f"{type(exc).__name__}: {exc}")
                    for s in by_video[video]
                )
                continue
            for sample, frames in framed:
                if isinstance(frames, tuple):
                    reason, message = frames
                    rejects.append(
                        Reject(stage=STAGE, item_id=sample.key, clip_id=sample.clip_id, reason=reason, message=message)
                    )
                    continue
                try:
                    reject = writer.write(sample, frames)
                except DATA_ERRORS as exc:
                    reject = Reject(stage=STAGE, item_id=sample.key, clip_id=sample.clip_id,
                                    reason=RejectReason.ITEM_ERROR, message=f"{type(exc).__name__}: {exc}")
                if reject is None:
                    written += 1
                else:
                    rejects.append(reject)
    from storage import tables

    tables.write_rejects(droot, STAGE, chunk, rejects)
    report = StageReport(
        stage=STAGE,
        shard_id=chunk,
        config_hash=config_hash,
        items_in=len(data["items"]),
        items_out=written,
        rejects=count_reasons(rejects),
        seconds=time.perf_counter() - started,
    )
    droot.write_json(layout.stage_report_path(STAGE, chunk), report.to_json())
    droot.mark_done(STAGE, chunk, config_hash, samples=written)
    return report


def canonical_video_root(video_root: str | Path) -> str:
    """The `--videos` folder as one spelling (absolute, `..` and symlinks resolved), so clip ids, sample keys and
    tars do not depend on how the folder was named on the command line."""
    text = str(video_root)
    if "://" in text and not text.startswith("file://"):
        return text.rstrip("/")
    return str(Path(text.removeprefix("file://")).expanduser().resolve())


def clean_item(item: object) -> object:
    """A 700K item with its conversation texts cleaned of control characters (`engine.parsing.clean_text`)."""
    if not isinstance(item, dict) or not isinstance(item.get("conversations"), list):
        return item
    turns = [{**turn, "value": clean_text(turn["value"])} if isinstance(turn, dict) and isinstance(
        turn.get("value"), str) else turn for turn in item["conversations"]]
    return {**item, "conversations": turns}


def _renumber(item_id: str, offset: int) -> str:
    if item_id.startswith("item") and item_id[4:].isdigit():
        return f"item{offset + int(item_id[4:])}"
    return item_id


def _with_frames(
    video: str, samples: list[Sample], config: EngineConfig
) -> list[tuple[Sample, np.ndarray | tuple[RejectReason, str]]]:
    """Each sample with its frames set and read, in the stored layout, or the reason it cannot be stored.

    `frame_indices` = `uniform_indices(T, sampling.num_frames)` over the whole video (as the release samples it;
    repeats on short videos), `extra_frame_indices` = the annotated frames not among them, ascending. The frames
    come back as one row per `frame_indices` entry, then one per extra frame. Every distinct frame of the
    video's samples is decoded once. A sample with an annotated frame outside the video, or with more frames
    than a shard can name, gets (reason, message) instead of frames.
    """
    from engine.video import check_pixel_budget, probe, read_frames, resize_frames, uniform_indices
    from storage.samples import extra_frames_of

    info = probe(video, max_bytes=config.limits.max_video_bytes)
    budget = config.limits.max_decoded_pixels
    check_pixel_budget(info, 1, budget)
    uniform = tuple(uniform_indices(info.num_frames, config.sampling.num_frames))
    planned: list[tuple[Sample, tuple[RejectReason, str] | None]] = []
    for sample in samples:
        extras = extra_frames_of(uniform, sample.objects)
        framed = dataclasses.replace(sample, frame_indices=uniform, extra_frame_indices=extras)
        outside = [i for i in extras if not 0 <= i < info.num_frames]
        sizes = sorted({(m.height, m.width) for o in sample.objects for m in o.masks.values()} - {
            (info.height, info.width)
        })
        if outside:
            message = f"annotated frames {outside} outside {video} ({info.num_frames} frames)"
            planned.append((framed, (RejectReason.FRAME_OUT_OF_RANGE, message)))
        elif sizes:
            message = f"masks of {sizes[0][1]}x{sizes[0][0]} pixels; the frames of {video} are "
            message += f"{info.width}x{info.height}"
            planned.append((framed, (RejectReason.MASK_SIZE_MISMATCH, message)))
        elif len(uniform) + len(extras) > MAX_FRAMES:
            message = (
                f"{len(uniform)} sampled + {len(extras)} extra annotated frames; a shard holds at most {MAX_FRAMES}"
            )
            planned.append((framed, (RejectReason.TOO_MANY_FRAMES, message)))
        else:
            planned.append((framed, None))
    wanted = sorted({i for sample, problem in planned if problem is None for i in sample.stored_frame_indices})
    by_index: dict[int, np.ndarray] = {}
    batch = max(1, budget // (info.width * info.height))  # frames decoded at once stay within the pixel budget
    for first in range(0, len(wanted), batch):
        part = wanted[first : first + batch]
        frames = resize_frames(read_frames(video, part), config.sampling.image_size)
        by_index.update({index: frames[k] for k, index in enumerate(part)})
    out: list[tuple[Sample, np.ndarray | tuple[RejectReason, str]]] = []
    for sample, problem in planned:
        if problem is not None:
            out.append((sample, problem))
        else:
            out.append((sample, np.stack([by_index[i] for i in sample.stored_frame_indices])))
    return out
