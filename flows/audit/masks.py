"""`videorefer audit masks`: the engine's masklets scored against ground-truth masks with DAVIS's J and F.

For each audited stage (`segment`, the detailed path, is the headline; `short_captions` segments only each clip's
subject) and each clip whose video has ground truth (`storage.truth`, found by the clip's video uri):

- Frames: the frames the engine segmented (the clip's `sampling.num_frames` uniform frames, as the segmentor
  samples them, plus every frame its masklets hold) that the truth annotates, inside the clip's span. A frame
  the masklet lacks (the segmentor drops masks under `min_mask_area_px`) is an empty prediction there.
- Truth objects: those with a non-empty mask on at least one of those frames.
- Matching: one-to-one by the Hungarian algorithm (`engine.metrics.assign_max`) on the mean J over those frames
  of every (masklet, truth object) pair; pairs whose masks never overlap are never matched. A truth object
  without a masklet is scored against empty masks, as DAVIS pads missing predictions (J = F = 0 where the truth
  is present). Masklets left over are listed as unmatched.
- Scores: J and F per object and frame (`engine.metrics`: bound_th 0.008 of the image diagonal, DAVIS's
  conventions for empty masks), at the truth's resolution. Per object its mean over frames and DAVIS's recall
  (fraction of frames above 0.5). Per stage, `J_mean` / `F_mean` = mean over the MATCHED truth objects of their
  means and `JF_mean` = (J_mean + F_mean) / 2 (DAVIS's J&F-Mean): how good the masks the engine made are;
  missing objects are counted once, by `recall` (object recall) = truth objects found / truth objects, found
  meaning matched with mean J >= `match_iou` (0.5). `JF_mean_all` is DAVIS's unsupervised convention instead:
  every truth object, the missed ones scored against empty masks. `precision` = found / masklets audited.
  `recall_moving` leaves out truth objects that stay still when the truth says so (synthetic sidecars): the
  annotator drops static objects on purpose (PAPER.md), so they lower `recall` by design.

Writes `reports/audit/masks.json` (the headline stage's figures at the top, every stage under `stages`, every
object, the unmatched masklets, the worst matched objects) and, for the worst, PNGs
`reports/audit/masks-worst-NN-....png`: the frame where the object scores lowest, engine mask (red) beside the
truth (green).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engine.masks import area
from engine.metrics import BOUND_TH, assign_max, boundary_f, frame_statistics, region_similarity
from engine.types import ObjectRecord
from flows.audit.common import AUDIT_DIR, GREEN, RED, fit, mask_array, png_bytes, put_text, read_frame, stage_records
from flows.pipeline import layout
from storage.truth import TruthObject, TruthSource, TruthVideo

HEADLINE_STAGE = "segment"
AUDITED_STAGES: tuple[str, ...] = ("segment", "short_captions")
MATCH_IOU = 0.5
WORST_CASES = 6
MASKS_JSON = f"{AUDIT_DIR}/masks.json"
_WORST_PREFIX = "masks-worst-"
_PANEL_SIDE = 360
_FROZEN = {"frozen": True, "slots": True, "kw_only": True}


@dataclass(**_FROZEN)
class ObjectScore:
    """One truth object of one clip and stage, with the masklet matched to it (if any) and its J and F."""

    stage: str
    shard_id: str
    clip_id: str
    video: str
    truth_object: str
    truth_name: str
    object_id: str | None  # the engine's object matched to it; None: missed
    noun: str | None
    frames: int
    J: float
    F: float
    J_recall: float
    F_recall: float
    found: bool
    worst_frame: int
    is_static: bool | None = None

    @property
    def JF(self) -> float:
        return (self.J + self.F) / 2

    def to_json(self) -> dict[str, Any]:
        return {
            "stage": self.stage, "shard_id": self.shard_id, "clip_id": self.clip_id, "video": self.video,
            "truth_object": self.truth_object, "truth_name": self.truth_name, "object_id": self.object_id,
            "noun": self.noun, "matched": self.object_id is not None, "found": self.found, "frames": self.frames,
            "J": _round(self.J), "F": _round(self.F), "JF": _round(self.JF),
            "J_recall": _round(self.J_recall), "F_recall": _round(self.F_recall), "worst_frame": self.worst_frame,
            "is_static": self.is_static,
        }


@dataclass(**_FROZEN)
class StageSummary:
    """The figures of one stage: J&F means over truth objects, object recall and precision, counts."""

    stage: str
    J_mean: float | None
    F_mean: float | None
    J_recall: float | None
    F_recall: float | None
    JF_mean_all: float | None
    recall: float | None
    recall_moving: float | None
    precision: float | None
    truth_objects: int
    found: int
    masklets: int
    unmatched_masklets: int
    clips: int
    clips_without_truth: int

    @property
    def JF_mean(self) -> float | None:
        return None if self.J_mean is None or self.F_mean is None else (self.J_mean + self.F_mean) / 2

    def to_json(self) -> dict[str, Any]:
        return {
            "stage": self.stage, "J_mean": _round(self.J_mean), "F_mean": _round(self.F_mean),
            "JF_mean": _round(self.JF_mean), "J_recall": _round(self.J_recall), "F_recall": _round(self.F_recall),
            "JF_mean_all": _round(self.JF_mean_all), "recall": _round(self.recall),
            "recall_moving": _round(self.recall_moving), "precision": _round(self.precision),
            "truth_objects": self.truth_objects,
            "found": self.found, "masklets": self.masklets, "unmatched_masklets": self.unmatched_masklets,
            "clips": self.clips, "clips_without_truth": self.clips_without_truth,
        }


@dataclass(**_FROZEN)
class WorstCase:
    """A matched object among the lowest J&F, with its picture (path relative to `reports/`)."""

    image: str
    stage: str
    clip_id: str
    object_id: str
    truth_object: str
    noun: str
    frame: int
    J: float
    F: float

    def to_json(self) -> dict[str, Any]:
        return {"image": self.image, "stage": self.stage, "clip_id": self.clip_id, "object_id": self.object_id,
                "truth_object": self.truth_object, "noun": self.noun, "frame": self.frame,
                "J": _round(self.J), "F": _round(self.F), "JF": _round((self.J + self.F) / 2)}


@dataclass(**_FROZEN)
class MaskAudit:
    """Everything `audit_masks` found; `to_json` is what `reports/audit/masks.json` holds."""

    root: str
    truth: str
    truth_format: str
    match_iou: float
    bound_th: float
    headline: str
    summaries: Mapping[str, StageSummary]
    objects: tuple[ObjectScore, ...]
    unmatched: tuple[Mapping[str, str], ...]
    worst: tuple[WorstCase, ...] = ()
    path: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def summary(self) -> StageSummary:
        return self.summaries[self.headline]

    def to_json(self) -> dict[str, Any]:
        head = self.summary.to_json()
        return {
            "kind": "videorefer-mask-audit",
            "version": 1,
            "root": self.root,
            "truth": self.truth,
            "truth_format": self.truth_format,
            "definitions": {
                "J": "region similarity |M & G| / |M | G|, 1 when both masks are empty (DAVIS db_eval_iou)",
                "F": f"boundary F-measure, tolerance ceil({self.bound_th} * image diagonal) px (DAVIS f_measure)",
                "J_mean": "mean over matched truth objects of each object's mean J over its frames",
                "JF_mean": "(J_mean + F_mean) / 2",
                "JF_mean_all": "J&F over every truth object, missed ones against empty masks (DAVIS unsupervised)",
                "recall": f"truth objects matched to a masklet with mean J >= {self.match_iou} / truth objects",
                "precision": f"masklets matched to a truth object with mean J >= {self.match_iou} / masklets",
                "matching": "Hungarian assignment on mean J per clip; missed truth objects count with empty masks",
            },
            "match_iou": self.match_iou,
            "bound_th": self.bound_th,
            **{key: head[key] for key in ("stage", "J_mean", "F_mean", "JF_mean", "J_recall", "F_recall",
                                          "JF_mean_all", "recall", "recall_moving", "precision", "truth_objects",
                                          "found", "masklets", "clips", "clips_without_truth")},
            "stages": {name: summary.to_json() for name, summary in self.summaries.items()},
            "objects": [score.to_json() for score in self.objects],
            "unmatched_masklets": [dict(item) for item in self.unmatched],
            "worst": [case.to_json() for case in self.worst],
        }


# ---------------------------------------------------------------- the audit


@dataclass(**_FROZEN)
class _Pair:
    """What a worst-case picture needs: the matched record and truth object, and the truth's size."""

    record: ObjectRecord
    truth: TruthObject
    height: int
    width: int


def audit_masks(
    root: layout.RootLike,
    truth: TruthSource,
    *,
    stages: Sequence[str] = AUDITED_STAGES,
    match_iou: float = MATCH_IOU,
    bound_th: float = BOUND_TH,
    worst: int = WORST_CASES,
    write: bool = True,
) -> MaskAudit:
    """Score the root's masklets against `truth` (see the module docstring); write the report unless `write=False`."""
    droot = layout.open_root(root)
    num_frames = layout.resolve_config(droot).sampling.num_frames
    summaries: dict[str, StageSummary] = {}
    objects: list[ObjectScore] = []
    unmatched: list[dict[str, str]] = []
    pairs: dict[tuple[str, str, str], _Pair] = {}
    for stage in stages:
        by_clip: dict[str, list[tuple[str, ObjectRecord]]] = {}
        for shard, record in stage_records(droot, stage):
            if record.masklet is not None and record.masklet.masks:
                by_clip.setdefault(record.clip_id, []).append((shard, record))
        stage_scores: list[ObjectScore] = []
        masklets = clips_without_truth = 0
        stage_unmatched = 0
        for clip_id in sorted(by_clip):
            shard, first = by_clip[clip_id][0]
            records = [record for _, record in by_clip[clip_id]]
            video = truth.find(first.clip.video_uri)
            if video is None:
                clips_without_truth += 1
                continue
            masklets += len(records)
            scores, leftover, matched = _score_clip(stage, shard, records, video, num_frames, match_iou, bound_th)
            stage_scores.extend(scores)
            stage_unmatched += len(leftover)
            unmatched.extend({"stage": stage, "clip_id": clip_id, "object_id": r.object_id, "noun": r.noun}
                             for r in leftover)
            for record, truth_object in matched:
                pairs[(stage, record.object_id, truth_object.object_id)] = _Pair(
                    record=record, truth=truth_object, height=video.height, width=video.width
                )
        objects.extend(stage_scores)
        summaries[stage] = _summary(stage, stage_scores, masklets, stage_unmatched, len(by_clip), clips_without_truth)
    headline = HEADLINE_STAGE if HEADLINE_STAGE in summaries else next(iter(summaries), HEADLINE_STAGE)
    audit = MaskAudit(
        root=droot.url, truth=truth.location, truth_format=truth.format, match_iou=match_iou, bound_th=bound_th,
        headline=headline, summaries=summaries, objects=tuple(objects), unmatched=tuple(unmatched),
    )
    if not write:
        return audit
    cases = _worst_cases(droot, audit, pairs, worst)
    audit = dataclasses.replace(audit, worst=tuple(cases), path=MASKS_JSON)
    droot.write_json(MASKS_JSON, audit.to_json())
    return audit


def _score_clip(
    stage: str,
    shard: str,
    records: Sequence[ObjectRecord],
    video: TruthVideo,
    num_frames: int,
    match_iou: float,
    bound_th: float,
) -> tuple[list[ObjectScore], list[ObjectRecord], list[tuple[ObjectRecord, TruthObject]]]:
    from agents.frames import clip_frame_range, sample_clip_frames

    clip = records[0].clip
    first, last = clip_frame_range(clip)
    segmented = set(sample_clip_frames(clip, num_frames))
    for record in records:
        segmented.update(record.masklet.masks)
    frames_of: dict[str, list[int]] = {}
    present: list[TruthObject] = []
    for obj in video.objects:
        frames = sorted(f for f in obj.masks if first <= f <= last and f in segmented)
        if any(area(obj.masks[f]) > 0 for f in frames):
            present.append(obj)
            frames_of[obj.object_id] = frames
    height, width = video.height, video.width
    truth_arrays = {
        (obj.object_id, f): mask_array(obj.masks[f], height, width)
        for obj in present
        for f in frames_of[obj.object_id]
    }
    pred_arrays = {
        (record.object_id, f): mask_array(record.masklet.masks.get(f), height, width)
        for record in records
        for f in sorted(set().union(*frames_of.values()))
    }
    matrix = np.full((len(records), len(present)), -1.0)
    for p, record in enumerate(records):
        for t, obj in enumerate(present):
            frames = frames_of[obj.object_id]
            pred = [pred_arrays[(record.object_id, f)] for f in frames]
            true = [truth_arrays[(obj.object_id, f)] for f in frames]
            if any(np.any(a & b) for a, b in zip(pred, true, strict=True)):
                matrix[p, t] = float(np.mean([region_similarity(a, b) for a, b in zip(pred, true, strict=True)]))
    assigned = {t: p for p, t in assign_max(matrix) if matrix[p, t] >= 0} if matrix.size else {}
    scores, matched = [], []
    for t, obj in enumerate(present):
        record = records[assigned[t]] if t in assigned else None
        frames = frames_of[obj.object_id]
        j_values, f_values = [], []
        for f in frames:
            pred = pred_arrays[(record.object_id, f)] if record is not None else np.zeros((height, width), bool)
            true = truth_arrays[(obj.object_id, f)]
            j_values.append(region_similarity(pred, true))
            f_values.append(boundary_f(pred, true, bound_th=bound_th))
        j_stats, f_stats = frame_statistics(j_values), frame_statistics(f_values)
        worst_frame = frames[int(np.argmin(np.add(j_values, f_values)))]
        scores.append(ObjectScore(
            stage=stage, shard_id=shard, clip_id=clip.clip_id, video=clip.video_uri, truth_object=obj.object_id,
            truth_name=obj.name, object_id=record.object_id if record else None, noun=record.noun if record else None,
            frames=len(frames), J=j_stats.mean, F=f_stats.mean, J_recall=j_stats.recall, F_recall=f_stats.recall,
            found=record is not None and j_stats.mean >= match_iou, worst_frame=worst_frame, is_static=obj.is_static,
        ))
        if record is not None:
            matched.append((record, obj))
    used = set(assigned.values())
    leftover = [record for p, record in enumerate(records) if p not in used]
    return scores, leftover, matched


def _summary(
    stage: str, scores: Sequence[ObjectScore], masklets: int, unmatched: int, clips: int, clips_without_truth: int
) -> StageSummary:
    def mean(values: list[float]) -> float | None:
        return float(np.mean(values)) if values else None

    found = sum(score.found for score in scores)
    matched = [score for score in scores if score.object_id is not None]
    moving = [score for score in scores if score.is_static is False]
    knows_motion = any(score.is_static is not None for score in scores)
    return StageSummary(
        stage=stage,
        J_mean=mean([s.J for s in matched]),
        F_mean=mean([s.F for s in matched]),
        J_recall=mean([s.J_recall for s in matched]),
        F_recall=mean([s.F_recall for s in matched]),
        JF_mean_all=mean([s.JF for s in scores]),
        recall=found / len(scores) if scores else None,
        recall_moving=(sum(s.found for s in moving) / len(moving) if moving else None) if knows_motion else None,
        precision=found / masklets if masklets else None,
        truth_objects=len(scores),
        found=found,
        masklets=masklets,
        unmatched_masklets=unmatched,
        clips=clips,
        clips_without_truth=clips_without_truth,
    )


# ---------------------------------------------------------------- worst cases


def _worst_cases(
    droot: Any, audit: MaskAudit, pairs: Mapping[tuple[str, str, str], _Pair], count: int
) -> list[WorstCase]:
    for name in droot.listdir(AUDIT_DIR):  # pictures of an earlier run must not linger
        if name.startswith(_WORST_PREFIX) and name.endswith(".png"):
            droot.delete(f"{AUDIT_DIR}/{name}")
    matched = [s for s in audit.objects if s.object_id is not None and (s.stage, s.object_id, s.truth_object) in pairs]
    matched.sort(key=lambda s: (s.JF, s.stage != audit.headline, s.clip_id, s.truth_object))
    cases = []
    for rank, score in enumerate(matched[: max(0, count)]):
        pair = pairs[(score.stage, score.object_id, score.truth_object)]
        frame = score.worst_frame
        pred = mask_array(pair.record.masklet.masks.get(frame), pair.height, pair.width)
        true = mask_array(pair.truth.masks[frame], pair.height, pair.width)
        j_value, f_value = region_similarity(pred, true), boundary_f(pred, true, bound_th=audit.bound_th)
        title = f"{score.noun} / truth {score.truth_object}  frame {frame}  J={j_value:.2f} F={f_value:.2f}"
        picture = _picture(pair.record.clip.video_uri, frame, pred, true, pair.height, pair.width, title)
        name = f"{_WORST_PREFIX}{rank:02d}-{score.stage}-{_safe(score.clip_id[:12])}-{_safe(score.truth_object)}.png"
        droot.write_bytes(f"{AUDIT_DIR}/{name}", png_bytes(picture))
        cases.append(WorstCase(
            image=f"audit/{name}", stage=score.stage, clip_id=score.clip_id, object_id=score.object_id,
            truth_object=score.truth_object, noun=score.noun or "", frame=frame, J=j_value, F=f_value,
        ))
    return cases


def _picture(
    video_uri: str, frame_index: int, pred: np.ndarray, true: np.ndarray, height: int, width: int, title: str
) -> np.ndarray:
    """Engine mask (red, left) beside the truth (green, right) on the frame, with a title strip above."""
    import cv2

    from engine.render import draw_contour, tint_mask

    frame = read_frame(video_uri, frame_index)
    if frame is None:
        frame = np.full((height, width, 3), 96, dtype=np.uint8)
    elif frame.shape[:2] != (height, width):
        frame = cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA)
    left = draw_contour(tint_mask(frame, pred, RED, 0.45), pred, RED, 2)
    right = draw_contour(tint_mask(frame, true, GREEN, 0.45), true, GREEN, 2)
    left, right = _panel(left), _panel(right)
    gap = np.full((left.shape[0], 6, 3), 255, dtype=np.uint8)
    panels = np.concatenate([left, gap, right], axis=1)
    strip = np.full((40, panels.shape[1], 3), 24, dtype=np.uint8)
    strip = put_text(strip, "engine", (6, 16), RED)
    strip = put_text(strip, "truth", (left.shape[1] + 12, 16), GREEN)
    strip = put_text(strip, title[:90], (6, 34), (235, 235, 235))
    return np.concatenate([strip, panels], axis=0)


def _panel(image: np.ndarray) -> np.ndarray:
    """A panel of about `_PANEL_SIDE` px: large frames shrunk, small ones enlarged by a whole factor (crisp)."""
    factor = _PANEL_SIDE // max(image.shape[:2])
    if factor >= 2:
        return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)
    return fit(image, _PANEL_SIDE)


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text) or "x"


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 6)
