"""The segmentor agent: an object's noun -> a box on a key frame (grounder) -> a masklet through the clip (segmenter).

The objects (nouns) of one clip are segmented together. For each clip: sample `num_frames` frames of it and
read them once (`agents.frames.decode_clip_frames`, through the stage's frame cache when one is active); for
each object choose its key frame among them (random but reproducible: seeded by the engine seed and the
object id; or the first, the middle, or a position) and ground its noun on that frame (no box -> `NO_BOX`);
then one `segment_many` call turns every object's box into masks on all sampled frames, propagating both
ways (SAM 2: one inference state and one propagation for the clip), on the frames already read. Masks
smaller than `min_mask_area_px` count as absent; a masklet with no mask left is `EMPTY_MASKLET`, one
present on fewer than `min_mask_frames` frames is `DEGENERATE_MASKLET`. The object id never changes; the key
frame, box and score are kept in the masklet. Records and rejects come out in input order. Grounding and
segmentation are blocking (GPU) calls: they run one clip at a time in a worker thread. `stats` counts clips,
objects and frame reads.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from agents.backends.base import Detection, Grounder, Segmenter, SegmentPrompt
from agents.frames import decode_clip_frames, sample_clip_frames, unique_in_order
from agents.stage import RUN_FATAL_ERRORS, StageResult, reject_for
from engine.errors import ConfigError, NoMaskError, RejectReason
from engine.ids import stable_hash
from engine.masks import decode_rle
from engine.types import Masklet, ObjectRecord, Provenance, Reject

STAGE = "segment"
KeyFrame = Literal["random", "first", "middle"] | int


@dataclass(frozen=True, slots=True, kw_only=True)
class SegmentorStats:
    """What a segmentor has done so far (`segmentor.stats`): one frame read and one segmenter call per clip."""

    clips: int = 0  # clips segmented
    objects: int = 0  # object records seen
    frame_reads: int = 0  # frame reads (one per clip; served by the stage's frame cache when it holds them)
    frames_read: int = 0  # frames those reads returned
    segmenter_calls: int = 0  # segment_many calls (one per clip with at least one box)


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
    ) -> None:
        if not isinstance(key_frame, int) and key_frame not in ("random", "first", "middle"):
            raise ConfigError(f"key_frame must be 'random', 'first', 'middle' or an int, got {key_frame!r}")
        if num_frames <= 0 or min_mask_frames < 1 or min_mask_area_px < 0:
            raise ConfigError("num_frames and min_mask_frames must be positive, min_mask_area_px non-negative")
        self.grounder = grounder
        self.segmenter = segmenter
        self.key_frame = key_frame
        self.seed = seed
        self.min_mask_area_px = min_mask_area_px
        self.min_mask_frames = min_mask_frames
        self.num_frames = num_frames
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
        results: list[ObjectRecord | Exception | None] = [None] * len(records)
        prompted: list[tuple[int, int, Detection]] = []  # (position in records, key frame, detection)
        for position, record in enumerate(records):
            key = self.choose_key_frame(record.object_id, indices)
            try:
                detection = self.grounder.ground(
                    video_uri=clip.video_uri, frame_index=key, frame=frames[key], noun=record.noun
                )
            except RUN_FATAL_ERRORS:
                raise
            except Exception as exc:
                results[position] = exc
                continue
            if detection is None:
                message = f"no box for {record.noun!r} on frame {key}"
                results[position] = NoMaskError(message, reason=RejectReason.NO_BOX)
            else:
                prompted.append((position, key, detection))
        masklets: Sequence[Masklet | Exception] = []
        if prompted:
            prompts = [SegmentPrompt(key_frame=key, box=tuple(d.box)) for _, key, d in prompted]
            self._count(segmenter_calls=1)
            try:
                masklets = self.segmenter.segment_many(
                    video_uri=clip.video_uri, frame_indices=indices, prompts=prompts, frames=frames
                )
            except RUN_FATAL_ERRORS:
                raise
            except Exception as exc:  # one propagation for the clip: its failure is every prompted object's
                masklets = [exc] * len(prompted)
            if len(masklets) != len(prompted):
                wrong = RuntimeError(f"{self.segmenter.kind}: {len(masklets)} masklets for {len(prompted)} boxes")
                masklets = [wrong] * len(prompted)
        # The clip's shared work (frame read, segmentation) is split evenly among its objects' latencies.
        latency = round((time.perf_counter() - started) / len(records), 6)
        for (position, key, detection), raw in zip(prompted, masklets, strict=True):
            try:
                if isinstance(raw, Exception):
                    raise raw
                results[position] = self._with_masklet(records[position], raw, key, detection, latency)
            except Exception as exc:
                results[position] = exc
        return [result for result in results if result is not None]

    def _with_masklet(
        self, record: ObjectRecord, raw: Masklet, key: int, detection: Detection, latency_s: float
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
        masklet = Masklet(masks=kept, key_frame=key, box=tuple(detection.box), score=float(detection.score))
        provenance = Provenance(
            agent="segmentor",
            backend=f"{self.grounder.kind}+{self.segmenter.kind}",
            model=f"{self.grounder.model}+{self.segmenter.model}",
            latency_s=latency_s,
        )
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
