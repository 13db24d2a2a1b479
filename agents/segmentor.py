"""The segmentor agent: an object's noun -> boxes (grounder) -> a masklet through the clip (segmenter).

The objects (nouns) of one clip are segmented together. For each clip: sample `num_frames` frames of it and
read them once (`agents.frames.decode_clip_frames`, through the stage's frame cache when one is active); for
each object choose its key frame among them (random but reproducible: seeded by the engine seed and the
object id; or the first, the middle, or a position) and ground its noun there.

Objects that enter later: besides the key frame, the noun is grounded again on every `redetect_every`-th sampled
frame and on the first frame after a cut (two consecutive sampled frames whose mean absolute difference exceeds
`cut_threshold`). One `segment_many` call turns the first detection of every object (the key frame's, or the
earliest one when the key frame has none) into masks on all sampled frames, propagating both ways (SAM 2: the
image encoder once per frame for all objects). A later detection is linked to the object's masklet when the box
around the masklet's mask on that frame overlaps the detection's box by `link_iou` (box IoU); detections left over
are segmented in a second call and linked by mask IoU (the two masklets' masks on the detection's frame, >=
`link_iou`) or start a new masklet (a second instance, or the object after it was lost). The object's masklet
is the one holding its key-frame detection, else the earliest one. Masklets end where the object leaves: on a
re-detection frame where it is not found and its mask is below `min_mask_area_px`, and at a cut it is not found
after, the masklet stops (frames beyond are dropped). Nothing is found anywhere -> `NO_BOX`.

With a segmenter that grounds phrases itself (SAM 3, `PhraseSegmenter`), the grounder is not used: each
clip's nouns are the text prompts, every instance is tracked with a stable id from the frame it appears on, and
each object takes the best instance present on its key frame (else the earliest to appear); two objects with the
same noun take different instances. No instance -> `NO_BOX`.

Masks smaller than `min_mask_area_px` count as absent; a masklet with no mask left is `EMPTY_MASKLET`, one present
on fewer than `min_mask_frames` frames is `DEGENERATE_MASKLET`. The object id never changes; the key frame, box
and score are kept in the masklet. Records and rejects come out in input order. Grounding and segmentation are
blocking (GPU) calls: they run one clip at a time in a worker thread. `stats` counts clips, objects, frame reads,
detections, links and extra instances.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from agents.backends.base import Detection, Grounder, PhraseSegmenter, Segmenter, SegmentPrompt, normalize_phrase
from agents.frames import decode_clip_frames, sample_clip_frames, unique_in_order
from agents.stage import RUN_FATAL_ERRORS, StageResult, reject_for
from engine.errors import ConfigError, NoMaskError, RejectReason
from engine.ids import stable_hash
from engine.masks import bbox, box_iou, decode_rle
from engine.types import Clip, Masklet, ObjectRecord, Provenance, Reject, RleMask

STAGE = "segment"
KeyFrame = Literal["random", "first", "middle"] | int


@dataclass(frozen=True, slots=True, kw_only=True)
class SegmentorStats:
    """What a segmentor has done so far (`segmentor.stats`): one frame read and one segmenter call per clip."""

    clips: int = 0  # clips segmented
    objects: int = 0  # object records seen
    frame_reads: int = 0  # frame reads (one per clip; served by the stage's frame cache when it holds them)
    frames_read: int = 0  # frames those reads returned
    segmenter_calls: int = 0  # segment_many / segment_phrases calls (one or two per clip with a detection)
    detections: int = 0  # boxes the grounder returned (key frames, re-detection frames); SAM 3: instances found
    linked: int = 0  # later detections linked to an existing masklet (no new prompt, or by mask IoU)
    new_masklets: int = 0  # masklets started after the first one of an object (entering / re-found instances)
    cuts: int = 0  # cuts found between sampled frames


class Segmentor:
    """Object records -> the same records with a `masklet` (see the module docstring)."""

    def __init__(
        self,
        grounder: Grounder,
        segmenter: Segmenter,
        *,
        key_frame: KeyFrame = "random",
        seed: int = 0,
        min_mask_area_px: int = 16,
        min_mask_frames: int = 2,
        num_frames: int = 16,
        redetect_every: int = 0,
        link_iou: float = 0.5,
        cut_threshold: float = 48.0,
    ) -> None:
        if not isinstance(key_frame, int) and key_frame not in ("random", "first", "middle"):
            raise ConfigError(f"key_frame must be 'random', 'first', 'middle' or an int, got {key_frame!r}")
        if num_frames <= 0 or min_mask_frames < 1 or min_mask_area_px < 0:
            raise ConfigError("num_frames and min_mask_frames must be positive, min_mask_area_px non-negative")
        if redetect_every < 0 or not 0.0 < link_iou <= 1.0 or cut_threshold <= 0:
            raise ConfigError("redetect_every must be >= 0, link_iou in (0, 1], cut_threshold positive")
        self.grounder = grounder
        self.segmenter = segmenter
        self.key_frame = key_frame
        self.seed = seed
        self.min_mask_area_px = min_mask_area_px
        self.min_mask_frames = min_mask_frames
        self.num_frames = num_frames
        self.redetect_every = redetect_every
        self.link_iou = link_iou
        self.cut_threshold = cut_threshold
        self._stats = SegmentorStats()
        self._stats_lock = threading.Lock()

    @property
    def stats(self) -> SegmentorStats:
        return self._stats

    async def run(self, records: Sequence[ObjectRecord]) -> StageResult[ObjectRecord]:
        outcomes: list[ObjectRecord | Reject | None] = [None] * len(records)
        for positions in clips_of(records):
            group = [records[position] for position in positions]
            try:
                results: list[ObjectRecord | Exception] = await asyncio.to_thread(self.segment_clip, group)
            except Exception as exc:  # the clip's frames could not be read: every object of it fails alike
                results = [exc] * len(group)
            for position, record, result in zip(positions, group, results, strict=True):
                if isinstance(result, Exception):  # sorted by kind: run-fatal errors re-raise inside reject_for
                    result = reject_for(result, stage=STAGE, item_id=record.object_id, clip_id=record.clip_id)
                outcomes[position] = result
        segmented = tuple(o for o in outcomes if isinstance(o, ObjectRecord))
        return StageResult(records=segmented, rejects=tuple(o for o in outcomes if isinstance(o, Reject)))

    def segment_one(self, record: ObjectRecord) -> ObjectRecord:
        """The record with its masklet; raises `NoMaskError` (with its reason) when no usable masklet exists."""
        [result] = self.segment_clip([record])
        if isinstance(result, Exception):
            raise result
        return result

    def segment_clip(self, records: Sequence[ObjectRecord]) -> list[ObjectRecord | Exception]:
        """Every record of one clip (same `clip`) segmented together: per record, the segmented record or the
        item error that rejects it (`NoMaskError` with its reason, a backend error); run-fatal errors raise."""
        if not records:
            return []
        started = time.perf_counter()
        clip = records[0].clip
        if any(record.clip != clip for record in records):
            raise ValueError("segment_clip takes the records of one clip")
        indices = sorted(unique_in_order(sample_clip_frames(clip, self.num_frames)))
        frames = dict(zip(indices, decode_clip_frames(clip, indices), strict=True))
        self._count(clips=1, objects=len(records), frame_reads=1, frames_read=len(indices))
        if isinstance(self.segmenter, PhraseSegmenter):
            return self._segment_by_phrases(records, indices, frames, started)
        cuts = find_cuts(indices, frames, self.cut_threshold)
        self._count(cuts=len(cuts))
        redetect = redetect_frames(indices, self.redetect_every, cuts)
        results: list[ObjectRecord | Exception | None] = [None] * len(records)
        searched: dict[int, list[int]] = {}  # position -> frames its noun was grounded on
        found: dict[int, list[tuple[int, Detection]]] = {}  # position -> (frame, detection), the first one first
        for position, record in enumerate(records):
            key = self.choose_key_frame(record.object_id, indices)
            search = [key, *(frame for frame in redetect if frame != key)]
            try:
                grounded = [
                    (frame, self.grounder.ground(video_uri=clip.video_uri, frame_index=frame, frame=frames[frame],
                                                 noun=record.noun))
                    for frame in search
                ]
            except RUN_FATAL_ERRORS:
                raise
            except Exception as exc:
                results[position] = exc
                continue
            detections = [(frame, detection) for frame, detection in grounded if detection is not None]
            self._count(detections=len(detections))
            if not detections:
                where = f"frame {key}" + (f" or {len(search) - 1} re-detection frames" if len(search) > 1 else "")
                results[position] = NoMaskError(f"no box for {record.noun!r} on {where}", reason=RejectReason.NO_BOX)
                continue
            if detections[0][0] != key:  # not found on the key frame: the earliest detection starts the object
                detections.sort(key=lambda item: item[0])
            searched[position], found[position] = sorted(search), detections
        tracks: dict[int, list[_Track]] = {}
        firsts = [(position, *detections[0]) for position, detections in found.items()]
        first_masklets = self._segment(clip, indices, frames, firsts)
        for (position, frame, detection), raw in zip(firsts, first_masklets, strict=True):
            if isinstance(raw, Exception):
                results[position] = raw
            else:
                tracks[position] = [_Track(masks=dict(raw.masks), detected={frame}, key=frame, detection=detection)]
        leftover: list[tuple[int, int, Detection]] = []
        for position in tracks:
            for frame, detection in found[position][1:]:
                track = self._covering(tracks[position], frame, detection.box)
                if track is None:
                    leftover.append((position, frame, detection))
                else:
                    track.detected.add(frame)
                    self._count(linked=1)
        for (position, frame, detection), raw in zip(
            leftover, self._segment(clip, indices, frames, leftover), strict=True
        ):
            if isinstance(raw, Exception):
                results[position] = raw
                continue
            track = self._overlapping(tracks[position], frame, raw.masks.get(frame))
            if track is None:
                new = _Track(masks=dict(raw.masks), detected={frame}, key=frame, detection=detection)
                tracks[position].append(new)
                self._count(new_masklets=1)
            else:
                track.merge(raw.masks, frame, self.min_mask_area_px)
                self._count(linked=1)
        # The clip's shared work (frame read, segmentation) is split evenly among its objects' latencies.
        latency = round((time.perf_counter() - started) / len(records), 6)
        for position, record_tracks in tracks.items():
            if results[position] is not None:
                continue
            key = found[position][0][0]
            track = next((t for t in record_tracks if key in t.detected), min(record_tracks, key=lambda t: t.key))
            masks = track.alive(searched[position], cuts, self.min_mask_area_px)
            masklet = Masklet(masks=masks, key_frame=track.key, box=tuple(track.detection.box),
                              score=float(track.detection.score))
            try:
                results[position] = self._with_masklet(
                    records[position], masklet, latency, backend=f"{self.grounder.kind}+{self.segmenter.kind}",
                    model=f"{self.grounder.model}+{self.segmenter.model}",
                )
            except Exception as exc:
                results[position] = exc
        return [result for result in results if result is not None]

    def _segment(
        self, clip: Clip, indices: Sequence[int], frames: Mapping[int, np.ndarray],
        prompted: Sequence[tuple[int, int, Detection]],
    ) -> list[Masklet | Exception]:
        """One `segment_many` call for `(position, frame, detection)` prompts: a masklet each, or the call's error."""
        if not prompted:
            return []
        prompts = [SegmentPrompt(key_frame=frame, box=tuple(d.box)) for _, frame, d in prompted]
        self._count(segmenter_calls=1)
        try:
            masklets: list[Masklet | Exception] = list(self.segmenter.segment_many(
                video_uri=clip.video_uri, frame_indices=indices, prompts=prompts, frames=frames
            ))
        except RUN_FATAL_ERRORS:
            raise
        except Exception as exc:  # one propagation for the clip: its failure is every prompted object's
            return [exc] * len(prompted)
        if len(masklets) != len(prompted):
            wrong = RuntimeError(f"{self.segmenter.kind}: {len(masklets)} masklets for {len(prompted)} boxes")
            return [wrong] * len(prompted)
        return masklets

    def _covering(self, tracks: Sequence[_Track], frame: int, box: Sequence[float]) -> _Track | None:
        """The track whose mask on `frame` has a box overlapping `box` by `link_iou` (the best), if any."""
        scored = []
        for track in tracks:
            mask = track.masks.get(frame)
            tight = bbox(decode_rle(mask)) if mask is not None else None
            if tight is not None:
                scored.append((box_iou(tight, box), track))
        best = max(scored, key=lambda pair: pair[0], default=(0.0, None))
        return best[1] if best[0] >= self.link_iou else None

    def _overlapping(self, tracks: Sequence[_Track], frame: int, mask: RleMask | None) -> _Track | None:
        """The track whose mask on `frame` overlaps `mask` by `link_iou` (mask IoU, the best), if any."""
        if mask is None:
            return None
        new = decode_rle(mask)
        scored = [(mask_iou(decode_rle(t.masks[frame]), new), t) for t in tracks if frame in t.masks]
        best = max(scored, key=lambda pair: pair[0], default=(0.0, None))
        return best[1] if best[0] >= self.link_iou else None

    def _segment_by_phrases(
        self, records: Sequence[ObjectRecord], indices: Sequence[int], frames: Mapping[int, np.ndarray], started: float
    ) -> list[ObjectRecord | Exception]:
        """The SAM 3 path (module docstring): the nouns prompt the segmenter, each object takes one instance."""
        clip = records[0].clip
        self._count(segmenter_calls=1)
        try:
            found = self.segmenter.segment_phrases(  # type: ignore[attr-defined]
                video_uri=clip.video_uri, frame_indices=indices, phrases=[r.noun for r in records], frames=frames
            )
        except RUN_FATAL_ERRORS:
            raise
        except Exception as exc:
            return [exc] * len(records)
        latency = round((time.perf_counter() - started) / len(records), 6)
        taken: set[int] = set()
        results: list[ObjectRecord | Exception] = []
        for record in records:
            key = self.choose_key_frame(record.object_id, indices)
            candidates = [i for i in found.get(normalize_phrase(record.noun), []) if i.instance_id not in taken]
            present = [i for i in candidates if key in i.masklet.masks]
            if present:
                pick = max(present, key=lambda i: i.score)
            elif candidates:
                pick = min(candidates, key=lambda i: (i.first_frame, -i.score))
            else:
                message = f"{self.segmenter.kind} found no instance of {record.noun!r}"
                results.append(NoMaskError(message, reason=RejectReason.NO_BOX))
                continue
            taken.add(pick.instance_id)
            start = key if key in pick.masklet.masks else pick.first_frame
            box = bbox(decode_rle(pick.masklet.masks[start]))
            masklet = dataclasses.replace(pick.masklet, key_frame=start, box=box)
            try:
                results.append(self._with_masklet(record, masklet, latency, backend=self.segmenter.kind,
                                                  model=self.segmenter.model))
            except Exception as exc:
                results.append(exc)
        self._count(detections=sum(len(v) for v in found.values()))
        return results

    def _with_masklet(
        self, record: ObjectRecord, raw: Masklet, latency_s: float, *, backend: str, model: str
    ) -> ObjectRecord:
        kept = {
            index: mask
            for index, mask in sorted(raw.masks.items())
            if int(decode_rle(mask).sum()) >= max(1, self.min_mask_area_px)
        }
        if not kept:
            raise NoMaskError(f"masklet of {record.noun!r} is empty", reason=RejectReason.EMPTY_MASKLET)
        if len(kept) < self.min_mask_frames:
            message = f"masklet of {record.noun!r} is present on {len(kept)} < {self.min_mask_frames} frames"
            raise NoMaskError(message, reason=RejectReason.DEGENERATE_MASKLET)
        masklet = dataclasses.replace(raw, masks=kept, score=float(raw.score))
        provenance = Provenance(agent="segmentor", backend=backend, model=model, latency_s=latency_s)
        return dataclasses.replace(record, masklet=masklet, provenance=(*record.provenance, provenance))

    def _count(self, **increments: int) -> None:
        with self._stats_lock:
            stats = self._stats
            self._stats = dataclasses.replace(
                stats, **{name: getattr(stats, name) + value for name, value in increments.items()}
            )

    def choose_key_frame(self, object_id: str, indices: Sequence[int]) -> int:
        """The key frame among the sampled `indices` (sorted); "random" is reproducible per (seed, object)."""
        if self.key_frame == "first":
            return indices[0]
        if self.key_frame == "middle":
            return indices[len(indices) // 2]
        if isinstance(self.key_frame, int):
            # An int is a position among the sampled frames, Python style (-1 = last), clamped to the range.
            position = self.key_frame if self.key_frame >= 0 else len(indices) + self.key_frame
            return indices[min(max(position, 0), len(indices) - 1)]
        generator = random.Random(int(stable_hash("key_frame", self.seed, object_id), 16))
        return generator.choice(list(indices))


def clips_of(records: Sequence[ObjectRecord]) -> list[list[int]]:
    """Positions of `records` grouped by clip (equal `clip`; records of one clip need not be adjacent), in
    first-seen order."""
    groups: list[list[int]] = []
    by_id: dict[str, list[int]] = {}  # clip id -> indices into `groups` (clips rarely share an id)
    for position, record in enumerate(records):
        same = [g for g in by_id.get(record.clip_id, []) if records[groups[g][0]].clip == record.clip]
        if same:
            groups[same[0]].append(position)
        else:
            by_id.setdefault(record.clip_id, []).append(len(groups))
            groups.append([position])
    return groups


@dataclass(slots=True, kw_only=True)
class _Track:
    """One identity being built inside `segment_clip` (mutable scratch, never leaves it): its masks by absolute
    frame, the frames a detection was linked to it, its first (prompt) frame and detection."""

    masks: dict[int, RleMask]
    detected: set[int]
    key: int
    detection: Detection

    def merge(self, masks: Mapping[int, RleMask], frame: int, min_area: int) -> None:
        """Link a second masklet of the same object (prompted on `frame`): it fills the frames this one lacks."""
        self.detected.add(frame)
        for index, mask in masks.items():
            if index not in self.masks or _area(self.masks[index]) < max(1, min_area):
                self.masks[index] = mask

    def alive(self, searched: Sequence[int], cuts: Sequence[int], min_area: int) -> dict[int, RleMask]:
        """The masks on the frames where the object is there: between the nearest grounding frames around its
        detections where it was not found and its own mask had (nearly) vanished, and within the shots (cuts split
        the clip) in which it was detected."""
        first, last = min(self.detected), max(self.detected)
        gone = [f for f in searched if f not in self.detected and _area(self.masks.get(f)) < max(1, min_area)]
        lower = max((f for f in gone if f < first), default=None)
        upper = min((f for f in gone if f > last), default=None)
        shots = {_shot(f, cuts) for f in self.detected}
        return {
            index: mask for index, mask in sorted(self.masks.items())
            if (lower is None or index > lower) and (upper is None or index < upper) and _shot(index, cuts) in shots
        }


def _area(mask: RleMask | None) -> int:
    return 0 if mask is None else int(decode_rle(mask).sum())


def _shot(frame: int, cuts: Sequence[int]) -> int:
    """Which shot `frame` lies in: the number of cuts (first frames of new shots) at or before it."""
    return sum(1 for cut in cuts if cut <= frame)


def find_cuts(indices: Sequence[int], frames: Mapping[int, np.ndarray], threshold: float) -> list[int]:
    """The sampled frames that start a new shot: their mean absolute difference (0-255, on a 4x-subsampled grey
    image) from the previous sampled frame is above `threshold`."""
    cuts = []
    previous = None
    for index in indices:
        grey = np.asarray(frames[index], dtype=np.float32)[::4, ::4].mean(axis=-1)
        if previous is not None and previous.shape == grey.shape and float(np.abs(grey - previous).mean()) > threshold:
            cuts.append(index)
        previous = grey
    return cuts


def redetect_frames(indices: Sequence[int], every: int, cuts: Sequence[int]) -> list[int]:
    """The sampled frames the nouns are grounded on again: every `every`-th (from the first; none when 0) and each
    cut's first frame."""
    picked = set(indices[::every]) if every > 0 else set()
    return sorted(picked | set(cuts))


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two boolean masks (0 when both are empty)."""
    union = int(np.logical_or(a, b).sum())
    return int(np.logical_and(a, b).sum()) / union if union else 0.0
