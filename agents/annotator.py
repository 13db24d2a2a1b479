"""The annotator agent: per object, a VLM looks at sampled frames and writes its appearance and its motion.

Each object's noun and `num_frames` uniformly sampled frames of its clip (JPEG) go to a vision-language
model, which answers `AnnotatorReply` -> `Descriptions`. In the detailed-caption chain static objects are
dropped (`STATIC_OBJECT`, as in the paper). Frames are decoded once per clip per batch, since several
nouns share a clip. For the QA path (`outline=True`) the object already has masks: the frames shown are
taken among its mask frames and the object is outlined on them, because a category noun alone cannot
tell two dogs apart; static objects are kept there (`drop_static=False`).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence

import numpy as np

from agents.backends.base import ChatBackend, ChatRequest, ImagePart
from agents.calling import Call, call_structured, structured_request
from agents.frames import DEFAULT_MAX_SIDE, decode_clip_frames, jpeg_part, sample_clip_frames, unique_in_order
from agents.prompting import load_prompt
from agents.schemas import AnnotatorReply
from agents.stage import StageResult, make_reject, reject_for, run_in_batches
from engine.errors import RejectReason
from engine.masks import decode_rle
from engine.render import draw_contour
from engine.types import Descriptions, ObjectRecord, Reject
from engine.video import n_uniform_frames

STAGE = "annotate"
OUTLINE_COLOR = (255, 0, 0)
OUTLINE_COLOR_NAME = "red"


class Annotator:
    """Object records -> the same records with `descriptions` (see the module docstring)."""

    def __init__(
        self,
        backend: ChatBackend,
        *,
        num_frames: int = 16,
        drop_static: bool = True,
        outline: bool = False,
        max_side: int = DEFAULT_MAX_SIDE,
        batch_size: int = 64,
    ) -> None:
        self.backend = backend
        self.num_frames = num_frames
        self.drop_static = drop_static
        self.outline = outline
        self.max_side = max_side
        self.batch_size = batch_size
        self.prompt = load_prompt("annotator")

    async def run(self, records: Sequence[ObjectRecord]) -> StageResult[ObjectRecord]:
        return await run_in_batches(records, self.batch_size, self._run_batch)

    async def _run_batch(self, records: Sequence[ObjectRecord]) -> StageResult[ObjectRecord]:
        groups: dict[str, list[ObjectRecord]] = {}
        for record in records:
            groups.setdefault(record.clip_id, []).append(record)
        # Decoding and JPEG encoding run in worker threads, one clip per thread at a time, so the event loop
        # stays free for requests in flight and only a few clips' raw frames are in memory at once.
        prepared = await asyncio.gather(*(asyncio.to_thread(self._prepare_clip, group) for group in groups.values()))
        calls = [call for group_calls, _ in prepared for call in group_calls]
        rejects: list[Reject] = [reject for _, group_rejects in prepared for reject in group_rejects]
        by_id = {record.object_id: record for record in records}

        outcomes = await call_structured(
            self.backend, calls, AnnotatorReply, agent="annotator", stage=STAGE, prompt_version=self.prompt.version
        )
        annotated: list[ObjectRecord] = []
        for outcome in outcomes:
            if outcome.reject is not None:
                rejects.append(outcome.reject)
                continue
            record, reply = by_id[outcome.item_id], outcome.value
            if reply.is_static and self.drop_static:
                reason, message = RejectReason.STATIC_OBJECT, f"static object: {reply.motion[:300]}"
                rejects.append(make_reject(STAGE, record.object_id, record.clip_id, reason, message))
                continue
            descriptions = Descriptions(appearance=reply.appearance, motion=reply.motion, is_static=reply.is_static)
            annotated.append(
                dataclasses.replace(
                    record, descriptions=descriptions, provenance=(*record.provenance, outcome.provenance)
                )
            )
        return StageResult(records=tuple(annotated), rejects=tuple(rejects))

    def _prepare_clip(self, group: list[ObjectRecord]) -> tuple[list[Call], list[Reject]]:
        """The requests of all objects of one clip, its frames decoded once; a bad video rejects them all."""
        clip = group[0].clip
        try:
            shown = {record.object_id: self._frames_to_show(record) for record in group}
            needed = unique_in_order([index for indices in shown.values() for index in indices])
            frames = decode_clip_frames(clip, needed)
        except Exception as exc:  # one undecodable video rejects its objects, not the batch
            return [], [reject_for(exc, stage=STAGE, item_id=r.object_id, clip_id=r.clip_id) for r in group]
        frame_at = dict(zip(needed, frames, strict=True))
        plain: dict[int, ImagePart] = {}
        calls = []
        for record in group:
            images = [self._image(record, index, frame_at[index], plain) for index in shown[record.object_id]]
            request = self._request(record, images)
            calls.append(Call(item_id=record.object_id, clip_id=record.clip_id, request=request))
        return calls, []

    def _frames_to_show(self, record: ObjectRecord) -> list[int]:
        if self.outline and record.masklet is not None and record.masklet.masks:
            mask_frames = record.masklet.frame_indices
            return [mask_frames[i] for i in n_uniform_frames(len(mask_frames), self.num_frames)]
        return sample_clip_frames(record.clip, self.num_frames)

    def _image(self, record: ObjectRecord, index: int, frame: np.ndarray, plain: dict[int, ImagePart]) -> ImagePart:
        mask = record.masklet.masks.get(index) if (self.outline and record.masklet is not None) else None
        if mask is None:
            if index not in plain:
                plain[index] = jpeg_part(frame, max_side=self.max_side)
            return plain[index]
        return jpeg_part(draw_contour(frame, decode_rle(mask), OUTLINE_COLOR, 2), max_side=self.max_side)

    def _request(self, record: ObjectRecord, images: list[ImagePart]) -> ChatRequest:
        hint = ""
        if record.expression:
            hint += f'\nIt is referred to as: "{record.expression}".'
        if self.outline and record.masklet is not None:
            hint += f"\nThe object is outlined in {OUTLINE_COLOR_NAME} in the frames where it is visible."
        return structured_request(
            self.prompt,
            AnnotatorReply,
            task="annotate",
            values={"noun": record.noun, "num_frames": len(images), "expression_hint": hint},
            images=images,
        )
