"""`videorefer doctor`: a read-only deep re-check of a dataset root for everything the engine refuses at its edges.

A root written by an older version, edited by hand or hit by a crash may hold what today's ingest, import and
export would refuse. `diagnose` re-checks it and returns `Finding`s (severity `error`, `warning` or `info`, a
kind, where, and a message): the root's lock (a live writer; a stale lock of a dead process), temp files left by
interrupted writes, every ingested clip (its video still a regular file or frame folder within the size limit and
still what ingest checked, no symlink swapped in (`source_changed`),
its caption within `limits.max_text_chars`, given masks whose RLE counts cover their size, of the video's frame
size, on frames of the video), every stage record (the same mask checks for masklets; names, expressions,
captions and QA texts within the limit), the stored per-stage counts (`items_in = items_out + rejected`), every
exported tar (`checks.validate_tar`: samples, frames, index and only our members) and the 700K JSON (video paths
relative to the stated video root, never leaving it, naming files that exist). Nothing is written; the CLI exits
non-zero when any finding is an error.
"""

from __future__ import annotations

import os
import posixpath
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from engine.config import EngineConfig
from engine.errors import InvalidMaskError
from engine.parsing import bounded, loads_json, text_limit, text_problem
from engine.types import Clip, ClipQA, Masklet, ObjectRecord
from flows.pipeline import layout
from flows.pipeline.checks import stored_stage_reports, validate_tar
from flows.pipeline.sources import read_fingerprints, verify_source
from flows.pipeline.stages import ANALYZE, INGEST, SHARD_STAGES
from storage.root import DatasetRoot, holder_is_alive, is_temp_name

Severity = Literal["error", "warning", "info"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Finding:
    """One thing `doctor` found: how bad it is, what kind of check found it, where, and what."""

    severity: Severity
    kind: str  # lock | temp_file | video | text | mask | counts | shard | json
    where: str
    message: str


def diagnose(root: layout.RootLike, config_path: str | Path | None = None) -> list[Finding]:
    """Every finding of a deep check of `root`, in check order (see the module docstring)."""
    droot = layout.open_root(root)
    config = layout.resolve_config(droot, config_path)
    findings: list[Finding] = [*lock_findings(droot)]
    live_writer = any(f.kind == "lock" and f.severity == "info" for f in findings)
    findings += temp_file_findings(droot, live_writer=live_writer)
    for shard in layout.shards(droot):
        fingerprints = read_fingerprints(droot, shard)
        for clip in layout.shard_clips(droot, shard):
            findings += clip_findings(clip, config)
            findings += source_findings(clip, fingerprints)
        for stage in SHARD_STAGES:
            if droot.exists(droot.stage_path(stage, shard)):
                for item in layout.read_stage(droot, stage, shard):
                    findings += item_findings(item, config, where=f"{stage}/{shard}")
    findings += count_findings(droot)
    findings += export_findings(droot, config)
    return findings


def export_findings(droot: DatasetRoot, config: EngineConfig) -> list[Finding]:
    """The checks of exported data, shared with `videorefer validate` (so the two always agree): every tar
    re-validated with the run's text limit, and the 700K JSON's video paths."""
    with text_limit(config.limits.max_text_chars):
        return [*shard_findings(droot), *json_findings(droot)]


def lock_findings(droot: DatasetRoot) -> list[Finding]:
    """A held lock: `info` when its holder lives (a writer is at work), `warning` when it is dead (stale)."""
    holder = droot.lock_holder()
    if holder is None:
        return []
    if holder_is_alive(holder):
        return [Finding(severity="info", kind="lock", where=droot.url_of(""),
                        message=f"a writer holds the root: {holder.describe()}; findings may change under it")]
    return [Finding(severity="warning", kind="lock", where=droot.url_of(""),
                    message=f"stale lock of a process that is gone ({holder.describe()}); the next writer takes it "
                            "over")]


def temp_file_findings(droot: DatasetRoot, *, live_writer: bool) -> list[Finding]:
    """Temp files of atomic writes (`.<name>.tmp-<id>`, `<name>.tmp-<id>`, `<name>.tmp`): left by a killed writer
    unless one is at work (then `info`). Only local roots are walked."""
    if not droot.is_local:
        return []
    base = Path(droot.full_path(""))
    severity: Severity = "info" if live_writer else "warning"
    found = []
    for folder, _dirs, files in os.walk(base):
        for name in files:
            if is_temp_name(name):
                relative = str((Path(folder) / name).relative_to(base))
                found.append(Finding(severity=severity, kind="temp_file", where=relative,
                                     message="temp file of an interrupted write (the next writer of the root "
                                             "removes it)"))
    return found


def clip_findings(clip: Clip, config: EngineConfig) -> list[Finding]:
    """An ingested clip's video, caption and given masks checked as ingest checks them today."""
    where = f"clip {clip.clip_id}"
    findings = [*video_findings(clip.video_uri, config, where=where)]
    findings += text_findings({"caption": clip.caption}, config, where=where)
    for obj in clip.given_objects:
        findings += text_findings({"name": obj.name, "expression": obj.expression}, config, where=where)
        findings += masklet_findings(obj.masklet, clip, where=f"{where} object {obj.name!r}")
    return findings


def source_findings(clip: Clip, fingerprints: dict | None) -> list[Finding]:
    """A clip whose video is no longer what ingest checked (replaced, or a symlink swapped in on its path): every
    stage would reject it as `source_changed`, and what was exported from it before may show another video."""
    from engine.errors import SourceChangedError, VideoReferError

    if not os.path.exists(clip.video_uri.removeprefix("file://")) and "://" not in clip.video_uri:
        return []  # a missing video is `video_findings`' error
    try:
        verify_source(clip, fingerprints)
    except SourceChangedError as exc:
        return [Finding(severity="error", kind="video", where=f"clip {clip.clip_id}", message=str(exc))]
    except VideoReferError:
        return []
    return []


def video_findings(video_uri: str, config: EngineConfig, *, where: str) -> list[Finding]:
    """A local video that is gone, is not a regular file or frame folder (a FIFO, a device), or is too large."""
    if "://" in video_uri and not video_uri.startswith("file://"):
        return []  # remote: checked when read
    path = Path(video_uri.removeprefix("file://"))
    try:
        info = path.stat()
    except OSError as exc:
        return [Finding(severity="error", kind="video", where=where,
                        message=f"{video_uri}: {exc.strerror or exc} (the clip cannot be re-read)")]
    if stat.S_ISDIR(info.st_mode):
        return []  # a frame folder
    if not stat.S_ISREG(info.st_mode):
        return [Finding(severity="error", kind="video", where=where,
                        message=f"{video_uri}: not a regular file (a FIFO, socket or device is never read)")]
    if info.st_size > config.limits.max_video_bytes:
        return [Finding(severity="error", kind="video", where=where,
                        message=f"{video_uri}: {info.st_size} bytes, above limits.max_video_bytes "
                                f"({config.limits.max_video_bytes})")]
    return []


def item_findings(item: ObjectRecord | ClipQA, config: EngineConfig, *, where: str) -> list[Finding]:
    """A stage record's masks and texts (a QA item: its pairs and each of its objects)."""
    if isinstance(item, ClipQA):
        findings = []
        for pair in item.qa:
            findings += text_findings({"question": pair.question, "answer": pair.answer, **{
                f"option {n}": option for n, option in enumerate(pair.options)}}, config,
                where=f"{where} qa {item.clip_id}")
        for record in item.objects:
            findings += item_findings(record, config, where=where)
        return findings
    here = f"{where} object {item.object_id}"
    texts = {"noun": item.noun, "expression": item.expression, "detailed caption": item.detailed_caption,
             "short caption": item.short_caption}
    if item.descriptions is not None:
        texts |= {"appearance": item.descriptions.appearance, "motion": item.descriptions.motion}
    findings = text_findings(texts, config, where=here)
    if item.masklet is not None:
        findings += masklet_findings(item.masklet, item.clip, where=here)
    return findings


def text_findings(texts: dict[str, str | None], config: EngineConfig, *, where: str) -> list[Finding]:
    """Each text above `limits.max_text_chars` (a training target that long is a data bug) or holding control
    characters (writers store texts clean)."""
    limit = config.limits.max_text_chars
    return [Finding(severity="error", kind="text", where=where, message=f"{name}: {problem}")
            for name, text in texts.items()
            if isinstance(text, str) and (problem := text_problem(text, limit)) is not None]


def masklet_findings(masklet: Masklet, clip: Clip, *, where: str) -> list[Finding]:
    """Masks whose RLE does not decode faithfully, whose size is not the clip's frame size, or which lie on a
    frame the video does not have."""
    from engine.masks import check_rle

    findings = []
    for frame, mask in sorted(masklet.masks.items()):
        problem = None
        try:
            height, width = check_rle(mask)
        except InvalidMaskError as exc:
            problem = f"frame {frame}: {exc}"
        else:
            if clip.height and clip.width and (height, width) != (clip.height, clip.width):
                problem = f"frame {frame}: mask is {height}x{width}, the video is {clip.height}x{clip.width}"
            elif clip.num_frames and not 0 <= frame < clip.num_frames:
                problem = f"mask on frame {frame}; the video has frames 0..{clip.num_frames - 1}"
        if problem:
            findings.append(Finding(severity="error", kind="mask", where=where, message=problem))
    return findings


# Analyze turns each clip into its objects: its figures count clips in and objects out, so they need not add up.
FAN_OUT_STAGES = frozenset({ANALYZE})


def count_findings(droot: DatasetRoot) -> list[Finding]:
    """Stored stage figures whose items do not add up (`items_in != items_out + rejected`; stages that emit one
    output per input)."""
    findings = []
    for stage in (INGEST, *SHARD_STAGES):
        if stage in FAN_OUT_STAGES:
            continue
        for report in stored_stage_reports(droot, stage):
            if report.items_in != report.items_out + report.rejected:
                findings.append(Finding(
                    severity="error", kind="counts", where=f"{stage}/{report.shard_id}",
                    message=f"{report.items_in} items in, {report.items_out} out, {report.rejected} rejected"))
    return findings


def shard_findings(droot: DatasetRoot) -> list[Finding]:
    """Every exported tar re-validated: its samples, frames, index and members (only ours)."""
    from flows.pipeline.export import exported_tars

    findings = []
    for path in exported_tars(droot):
        check = validate_tar(path)
        name = posixpath.basename(str(path))
        findings += [Finding(severity="error", kind="shard", where=name, message=problem)
                     for problem in check.problems]
    return findings


def json_findings(droot: DatasetRoot) -> list[Finding]:
    """The 700K JSON's `video` paths: relative to the stated video root, never leaving it, naming files that
    exist (local roots)."""
    from storage.videorefer_json import EXPORT_JSON_DIR, EXPORT_META, export_video_root

    if not droot.exists(EXPORT_META):
        return []
    try:
        meta = droot.read_json(EXPORT_META)
        video_root = export_video_root(droot)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return [Finding(severity="error", kind="json", where=EXPORT_META, message=f"unreadable: {bounded(exc, 300)}")]
    findings = []
    for name in meta.get("files", []):
        relative = f"{EXPORT_JSON_DIR}/{name}"
        try:
            items = loads_json(droot.read_bytes(relative), relative)
        except (OSError, ValueError) as exc:
            findings.append(Finding(severity="error", kind="json", where=relative,
                                    message=f"unreadable: {bounded(exc, 300)}"))
            continue
        findings += list(_video_path_findings(items, video_root, where=relative))
    return findings


def _video_path_findings(items: Iterable[dict], video_root: str, *, where: str) -> Iterator[Finding]:
    checked: set[str] = set()
    for number, item in enumerate(items):
        video = str(item.get("video", "")) if isinstance(item, dict) else ""
        if video in checked:
            continue
        checked.add(video)
        if not video or video.startswith("/") or "://" in video:
            if video_root:  # an empty root (URLs among the videos) keeps paths as they are
                yield Finding(severity="error", kind="json", where=f"{where} item {number}",
                              message=f"video {video!r} is not relative to the stated video root {video_root}")
            continue
        if posixpath.normpath(video).startswith(".."):
            yield Finding(severity="error", kind="json", where=f"{where} item {number}",
                          message=f"video {video!r} leaves the video root")
        elif video_root and "://" not in video_root and not os.path.exists(posixpath.join(video_root, video)):
            yield Finding(severity="warning", kind="json", where=f"{where} item {number}",
                          message=f"video {video!r} not found under {video_root}")
