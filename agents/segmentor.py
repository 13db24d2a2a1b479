"""The segmentor agent: an object's noun -> a box on a key frame (grounder) -> a masklet through the clip (segmenter).

For each object record: sample `num_frames` frames of its clip, choose the key frame among them (random
but reproducible: seeded by the engine seed and the object id; or the first, the middle, or a position),
ground the noun on that frame (no box -> `NO_BOX`), then let the segmenter turn the box into masks on all
sampled frames, propagating both ways. Masks smaller than `min_mask_area_px` count as absent; a masklet
with no mask left is `EMPTY_MASKLET`, one present on fewer than `min_mask_frames` frames is
`DEGENERATE_MASKLET`. The object id never changes; the key frame, box and score are kept in the masklet.
Grounding and segmentation are blocking (GPU) calls: they run one object at a time in a worker thread.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from collections.abc import Sequence
from typing import Literal

from agents.backends.base import Grounder, Segmenter
from agents.frames import sample_clip_frames, unique_in_order
from agents.stage import StageResult, reject_for
from engine.errors import ConfigError, NoMaskError, RejectReason
from engine.ids import stable_hash
from engine.masks import decode_rle
from engine.types import Masklet, ObjectRecord, Provenance, Reject
from engine.video import read_frames

STAGE = "segment"
KeyFrame = Literal["random", "first", "middle"] | int


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

    async def run(self, records: Sequence[ObjectRecord]) -> StageResult[ObjectRecord]:
        segmented: list[ObjectRecord] = []
        rejects: list[Reject] = []
        for record in records:
            try:
                segmented.append(await asyncio.to_thread(self.segment_one, record))
            except Exception as exc:  # sorted by kind: run-fatal errors re-raise inside reject_for
                rejects.append(reject_for(exc, stage=STAGE, item_id=record.object_id, clip_id=record.clip_id))
        return StageResult(records=tuple(segmented), rejects=tuple(rejects))

    def segment_one(self, record: ObjectRecord) -> ObjectRecord:
        """The record with its masklet; raises `NoMaskError` (with its reason) when no usable masklet exists."""
        started = time.perf_counter()
        indices = sorted(unique_in_order(sample_clip_frames(record.clip, self.num_frames)))
        key = self.choose_key_frame(record.object_id, indices)
        frame = read_frames(record.clip.video_uri, [key])[0]
        detection = self.grounder.ground(
            video_uri=record.clip.video_uri, frame_index=key, frame=frame, noun=record.noun
        )
        if detection is None:
            raise NoMaskError(f"no box for {record.noun!r} on frame {key}", reason=RejectReason.NO_BOX)
        raw = self.segmenter.segment(
            video_uri=record.clip.video_uri, frame_indices=indices, key_frame=key, box=detection.box
        )
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
            latency_s=round(time.perf_counter() - started, 6),
        )
        return dataclasses.replace(record, masklet=masklet, provenance=(*record.provenance, provenance))

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
