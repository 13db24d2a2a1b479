"""Read-only checks of a dataset root: re-validating exported tars, and per-stage progress for `status`.

`validate_tar` re-reads a tar with the storage reader and applies the same validation the writer applied
(masks present and visible on the vision grid, `<region>` count, conversation shape) plus frame checks
(one decodable image per sampled and per extra frame index), its index, and its members: only what our writer
writes (`OUR_MEMBER`: `<key>.json`, `<key>.NN.jpg`, regular files) may be there. `stage_status` counts, per stage,
the shards done for the current config, done for another config (stale: they will re-run), and not done.
"""

from __future__ import annotations

import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flows.pipeline import layout
from flows.pipeline.reports import StageReport
from flows.pipeline.stages import EXPORT, SHARD_STAGES, chained_hash

# The only members our shards carry: regular files `<key>.json` and `<key>.NN.jpg` (NN = 00..99), flat (no folder).
# Anything else is flagged by `validate`: a `.pyd` / `.pickle` / `.pth` member would be unpickled by a plain
# `webdataset ... .decode()`. The shard layout's owner adjusts this one pattern when the layout changes.
OUR_MEMBER = re.compile(r"[A-Za-z0-9_-]+\.(json|\d{2}\.jpg)")


def member_problems(path: str | Path) -> list[str]:
    """Every member of a tar that our writer would not have written: another extension (`.pyd`, `.pickle`,
    `.pth`, ...), a folder path, or something that is not a regular file (link, device, directory)."""
    import fsspec

    problems: list[str] = []
    with fsspec.open(str(path), "rb") as handle, tarfile.open(fileobj=handle, mode="r|") as tar:
        for member in tar:
            if not member.isreg():
                problems.append(f"unexpected member {member.name!r}: not a regular file")
            elif not OUR_MEMBER.fullmatch(member.name):
                problems.append(f"unexpected member {member.name!r}: not one of ours (<key>.json, <key>.NN.jpg); "
                                "read shards with decoders restricted to those keys")
    return problems


@dataclass(frozen=True, slots=True, kw_only=True)
class TarCheck:
    samples: int
    problems: tuple[str, ...]


def validate_tar(path: str | Path, *, grid: int | None = None) -> TarCheck:
    """Every problem of one exported tar (empty when all its samples are valid).

    Masks are checked on `grid`, by default the grid its writer recorded in the folder's `_stats.json`.
    """
    from storage.samples import validate_sample
    from storage.wds import iter_samples, read_index

    grid = grid if grid is not None else recorded_grid(path)
    problems: list[str] = []
    keys: list[str] = []
    try:
        problems.extend(member_problems(path))
        for sample, frames in iter_samples(str(path)):
            keys.append(sample.key)
            for reason, message in validate_sample(sample, grid=grid):
                problems.append(f"{sample.key}: {reason}: {message}")
            if len(frames) != len(sample.stored_frame_indices):
                problems.append(f"{sample.key}: {len(frames)} frames for {len(sample.stored_frame_indices)} indices")
            if any(frame.ndim != 3 or frame.shape[-1] != 3 for frame in frames):
                problems.append(f"{sample.key}: a frame is not an RGB image")
    except Exception as exc:  # noqa: BLE001 - a tar that cannot be read is the problem we report
        problems.append(f"unreadable: {type(exc).__name__}: {exc}")
    if len(set(keys)) != len(keys):
        problems.append("duplicate sample keys")
    index_path = Path(str(path)).with_suffix(".parquet")
    if index_path.is_file():
        indexed = [row["key"] for row in read_index(str(path))]
        if indexed != keys:
            problems.append(f"index lists {len(indexed)} keys, the tar holds {len(keys)} (or in another order)")
    return TarCheck(samples=len(keys), problems=tuple(problems))


def recorded_grid(path: str | Path) -> int:
    """The vision grid the writer of a tar recorded for its split in `_stats.json` (SigLIP's 27 when none)."""
    import json

    from storage.samples import vision_grid
    from storage.wds import STATS_NAME

    tar = Path(str(path))
    stats = tar.with_name(STATS_NAME)
    if stats.is_file():
        recorded = json.loads(stats.read_text())
        for figures in (recorded.get("writers") or {}).values():  # per writer: the export's one tar per shard
            if tar.name in (figures.get("tars") or ()) and figures.get("grid"):
                return int(figures["grid"])
        splits = recorded.get("splits", {})
        for split, figures in sorted(splits.items(), key=lambda item: -len(item[0])):
            if tar.name.startswith(f"{split}-") and figures.get("grid"):
                return int(figures["grid"])
    return vision_grid(384)


def stage_status(root: layout.RootLike, config_path: str | None = None) -> list[dict[str, Any]]:
    """One row per stage: done / stale / todo shard counts and the stored item figures of done shards."""
    from engine.errors import ConfigError
    from flows.pipeline.runner import stored_report
    from storage.root import DATASET_JSON

    droot = layout.open_root(root)
    if not droot.exists(DATASET_JSON):
        raise ConfigError(f"{root} is not a dataset root (no {DATASET_JSON}); run `videorefer ingest` or `demo` first")
    config = layout.resolve_config(droot, config_path)
    shards = layout.shards(droot)
    rows = []
    for stage in SHARD_STAGES:
        config_hash = chained_hash(config, stage)
        done = stale = 0
        items_in = items_out = rejected = 0
        for shard in shards:
            report = stored_report(droot, stage, shard, config_hash)
            if report is not None:
                done += 1
                items_in += report.items_in
                items_out += report.items_out
                rejected += report.rejected
            elif droot.read_done(stage, shard) is not None:
                stale += 1
        rows.append({"stage": stage, "done": done, "stale": stale, "todo": len(shards) - done - stale,
                     "items_in": items_in, "items_out": items_out, "rejected": rejected})
    return rows


def count_done(root: layout.RootLike, config_path: str | None = None) -> tuple[int, int]:
    """(stage, shard) pairs done for the current config, and how many there are."""
    droot = layout.open_root(root)
    config = layout.resolve_config(droot, config_path)
    shards = layout.shards(droot)
    done = 0
    for stage in SHARD_STAGES:
        config_hash = chained_hash(config, stage)
        for shard in shards:
            marker = droot.read_done(stage, shard)
            done += bool(marker and marker.get("config_hash") == config_hash)
    return done, len(shards) * len(SHARD_STAGES)


def stored_stage_reports(root: layout.RootLike, stage: str = EXPORT) -> list[StageReport]:
    """The stored figures of every shard of a stage (whatever config they ran with)."""
    droot = layout.open_root(root)
    out = []
    for shard in layout.shards(droot):
        path = layout.stage_report_path(stage, shard)
        if droot.exists(path):
            out.append(StageReport.from_json(droot.read_json(path)))
    return out
