"""The reviewer agent: does the masklet show the object the annotator described? A captioner and a judge decide.

Step 1: a vision-language model sees the key frame (and up to `num_frames - 1` more mask frames) with the
object outlined (`engine.render.draw_contour`) and describes only the outlined region, without being told
the noun. Step 2: an LLM judge compares that region caption with the annotator's appearance and motion
texts and says whether they describe the same object. Accepted objects carry a `Review`; the others become
`REVIEW_REJECTED` rejects whose message keeps the judge's reason and the region caption. (The paper used
Osprey-7B and Qwen2-7B here; about 40% of candidates survived.)

Before any model call, a masklet whose identity switches to another object is rejected (`IDENTITY_SWITCH`): a
tracker that jumps to a similar object keeps producing a plausible mask, which a region caption cannot tell
apart, but the mask's centre then leaves the object's own motion. `identity_switch` follows the centre of the
mask from frame to frame, predicts it by constant velocity from the two frames before, and reports the first frame
where it misses the prediction by more than `identity_jump` times what the object itself can explain: its size
(half the larger side of its box) plus twice its recent motion (a bounce reverses it, an occlusion shifts the
visible centre by at most the size), so a real track stays below 1. A swap between objects that pass close to each
other at low speed stays within that allowance and is not caught by this check (the judge sees those).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence

import numpy as np

from agents.backends.base import ChatBackend, ChatRequest, ImagePart
from agents.calling import Call, call_structured, structured_request
from agents.frames import DEFAULT_MAX_SIDE, decode_clip_frames, jpeg_part, unique_in_order
from agents.prompting import load_prompt
from agents.schemas import JudgeReply, RegionCaptionReply
from agents.stage import StageResult, make_reject, reject_for, run_in_batches
from engine.errors import RejectReason
from engine.masks import decode_rle
from engine.render import draw_contour
from engine.types import Masklet, ObjectRecord, Provenance, Reject, Review
from engine.video import n_uniform_frames

STAGE = "review"
OUTLINE_COLOR = (255, 0, 0)
OUTLINE_COLOR_NAME = "red"


class Reviewer:
    """Annotated, segmented object records -> the accepted ones with a `Review` (see the module docstring)."""

    def __init__(
        self,
        captioner: ChatBackend,
        judge: ChatBackend,
        *,
        num_frames: int = 1,
        max_side: int = DEFAULT_MAX_SIDE,
        batch_size: int = 64,
        identity_jump: float = 1.5,
    ) -> None:
        self.captioner = captioner
        self.judge = judge
        self.num_frames = max(1, num_frames)
        self.max_side = max_side
        self.batch_size = batch_size
        self.identity_jump = identity_jump
        self.caption_prompt = load_prompt("region_caption")
        self.judge_prompt = load_prompt("judge")
        self.judge_version = self.judge_prompt.version

    async def run(self, records: Sequence[ObjectRecord]) -> StageResult[ObjectRecord]:
        return await run_in_batches(records, self.batch_size, self._run_batch)

    async def _run_batch(self, records: Sequence[ObjectRecord]) -> StageResult[ObjectRecord]:
        rejects: list[Reject] = []
        ready: list[ObjectRecord] = []
        for record in records:
            problem = _missing_input(record) or self._switched(record)
            if problem is None:
                ready.append(record)
            else:
                rejects.append(make_reject(STAGE, record.object_id, record.clip_id, *problem))

        groups: dict[str, list[ObjectRecord]] = {}
        for record in ready:
            groups.setdefault(record.clip_id, []).append(record)
        # Decoding, drawing and JPEG encoding run in worker threads (see the annotator).
        prepared = await asyncio.gather(*(asyncio.to_thread(self._caption_calls, group) for group in groups.values()))
        caption_calls = [call for calls, _ in prepared for call in calls]
        rejects.extend(reject for _, group_rejects in prepared for reject in group_rejects)
        by_id = {record.object_id: record for record in ready}

        captions = await call_structured(
            self.captioner,
            caption_calls,
            RegionCaptionReply,
            agent="reviewer.region_captioner",
            stage=STAGE,
            prompt_version=self.caption_prompt.version,
        )
        judge_calls: list[Call] = []
        caption_of: dict[str, tuple[str, Provenance]] = {}
        for outcome in captions:
            if outcome.reject is not None:
                rejects.append(outcome.reject)
                continue
            record = by_id[outcome.item_id]
            caption_of[record.object_id] = (outcome.value.caption, outcome.provenance)
            request = self._judge_request(record, outcome.value.caption)
            judge_calls.append(Call(item_id=record.object_id, clip_id=record.clip_id, request=request))

        verdicts = await call_structured(
            self.judge, judge_calls, JudgeReply, agent="reviewer.judge", stage=STAGE, prompt_version=self.judge_version
        )
        accepted: list[ObjectRecord] = []
        for outcome in verdicts:
            if outcome.reject is not None:
                rejects.append(outcome.reject)
                continue
            record = by_id[outcome.item_id]
            region_caption, caption_provenance = caption_of[record.object_id]
            verdict = outcome.value
            if not verdict.same_object:
                message = f"judge: {verdict.reason} | region caption: {region_caption}"
                reject = make_reject(STAGE, record.object_id, record.clip_id, RejectReason.REVIEW_REJECTED, message)
                rejects.append(reject)
                continue
            review = Review(region_caption=region_caption, accepted=True, reason=verdict.reason)
            provenance = (*record.provenance, caption_provenance, outcome.provenance)
            accepted.append(dataclasses.replace(record, review=review, provenance=provenance))
        return StageResult(records=tuple(accepted), rejects=tuple(rejects))

    def _switched(self, record: ObjectRecord) -> tuple[RejectReason, str] | None:
        if self.identity_jump <= 0 or record.masklet is None:
            return None
        switch = identity_switch(record.masklet, self.identity_jump)
        if switch is None:
            return None
        frame, jump = switch
        return RejectReason.IDENTITY_SWITCH, (
            f"the mask jumps {jump:.1f} object radii off the object's motion on frame {frame}: it follows another "
            f"object from there (limit {self.identity_jump})"
        )

    def frames_to_show(self, record: ObjectRecord) -> list[int]:
        """The key frame plus up to `num_frames - 1` uniformly spread mask frames, in time order."""
        mask_frames = record.masklet.frame_indices
        key = record.masklet.key_frame if record.masklet.key_frame in record.masklet.masks else mask_frames[0]
        picked = [mask_frames[i] for i in n_uniform_frames(len(mask_frames), self.num_frames)]
        shown = [key, *(index for index in picked if index != key)][: self.num_frames]
        return sorted(shown)

    def _caption_calls(self, group: list[ObjectRecord]) -> tuple[list[Call], list[Reject]]:
        """Region-caption requests of one clip's objects, frames decoded once; a bad video rejects them all."""
        try:
            shown = {record.object_id: self.frames_to_show(record) for record in group}
            needed = unique_in_order([index for indices in shown.values() for index in indices])
            frames = decode_clip_frames(group[0].clip, needed)
        except Exception as exc:  # one undecodable video rejects its objects, not the batch
            return [], [reject_for(exc, stage=STAGE, item_id=r.object_id, clip_id=r.clip_id) for r in group]
        frame_at = dict(zip(needed, frames, strict=True))
        calls = []
        for record in group:
            images = [
                jpeg_part(
                    draw_contour(frame_at[index], decode_rle(record.masklet.masks[index]), OUTLINE_COLOR, 2),
                    max_side=self.max_side,
                )
                for index in shown[record.object_id]
            ]
            request = self._caption_request(images)
            calls.append(Call(item_id=record.object_id, clip_id=record.clip_id, request=request))
        return calls, []

    def _caption_request(self, images: list[ImagePart]) -> ChatRequest:
        """The captioner sees only the outlined frames and the prompt: neither the noun nor the descriptions."""
        many = len(images) > 1
        return structured_request(
            self.caption_prompt,
            RegionCaptionReply,
            task="region_caption",
            values={
                "plural": "s" if many else "",
                "outline_color": OUTLINE_COLOR_NAME,
                "frames_note": " (the same object in every frame, in time order)" if many else "",
            },
            images=images,
        )

    def _judge_request(self, record: ObjectRecord, region_caption: str) -> ChatRequest:
        descriptions = record.descriptions
        values = {
            "noun": record.noun,
            "appearance": descriptions.appearance,
            "motion": descriptions.motion,
            "region_caption": region_caption,
        }
        return structured_request(self.judge_prompt, JudgeReply, task="judge", values=values)


def identity_switch(masklet: Masklet, max_jump: float) -> tuple[int, float] | None:
    """`(frame, jump)` at the first frame whose mask centre lands more than `max_jump` times (its size + twice its
    own recent motion) from where constant velocity puts it, or None (see the module docstring)."""
    track = []  # (frame, centre x, centre y, half the larger side of its box) of every non-empty mask, in time order
    for frame in masklet.frame_indices:
        mask = decode_rle(masklet.masks[frame])
        if mask.any():
            ys, xs = np.nonzero(mask)
            size = max(int(xs.max() - xs.min()), int(ys.max() - ys.min())) + 1
            track.append((frame, float(xs.mean()), float(ys.mean()), size / 2.0))
    for k in range(1, len(track)):
        frame, x, y, size = track[k]
        before, bx, by, before_size = track[k - 1]
        vx = vy = 0.0
        if k >= 2:
            earlier, ex, ey, _ = track[k - 2]
            vx, vy = (bx - ex) / (before - earlier), (by - ey) / (before - earlier)
        gap = frame - before
        miss = float(np.hypot(x - (bx + vx * gap), y - (by + vy * gap)))
        # A bounce misses the prediction by at most twice the motion, an occlusion moves the centre by at most the
        # object's size: together they stay below 1.
        allowed = max(size, before_size) + 2.0 * float(np.hypot(vx, vy)) * gap
        jump = miss / max(allowed, 1.0)
        if jump > max_jump:
            return frame, jump
    return None


def _missing_input(record: ObjectRecord) -> tuple[RejectReason, str] | None:
    if record.masklet is None or not record.masklet.masks:
        return RejectReason.MISSING_MASK, "object has no masklet to review"
    if record.descriptions is None:
        return RejectReason.MALFORMED_SAMPLE, "object has no annotator descriptions to compare with"
    return None
