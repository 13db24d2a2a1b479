"""The refiner agent: an object's appearance and motion texts -> one clean detailed caption.

An LLM (GPT-4o in the paper) merges the annotator's two texts into a single fluent caption, removing
repetition and claims that cannot be seen. The caption becomes `ObjectRecord.detailed_caption`.
Records without descriptions cannot be refined and are rejected (`MALFORMED_SAMPLE`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from agents.backends.base import ChatBackend
from agents.calling import Call, call_structured, structured_request
from agents.prompting import load_prompt
from agents.schemas import RefinerReply
from agents.stage import StageResult, make_reject, run_in_batches
from engine.errors import RejectReason
from engine.types import ObjectRecord, Reject

STAGE = "refine"


class Refiner:
    """Described object records -> the same records with `detailed_caption`."""

    def __init__(self, backend: ChatBackend, *, batch_size: int = 256) -> None:
        self.backend = backend
        self.batch_size = batch_size
        self.prompt = load_prompt("refiner")

    async def run(self, records: Sequence[ObjectRecord]) -> StageResult[ObjectRecord]:
        return await run_in_batches(records, self.batch_size, self._run_batch)

    async def _run_batch(self, records: Sequence[ObjectRecord]) -> StageResult[ObjectRecord]:
        rejects: list[Reject] = []
        calls: list[Call] = []
        for record in records:
            if record.descriptions is None:
                reason, message = RejectReason.MALFORMED_SAMPLE, "object has no appearance/motion texts to refine"
                rejects.append(make_reject(STAGE, record.object_id, record.clip_id, reason, message))
                continue
            values = {
                "noun": record.noun,
                "appearance": record.descriptions.appearance,
                "motion": record.descriptions.motion,
            }
            request = structured_request(self.prompt, RefinerReply, task="refine", values=values)
            calls.append(Call(item_id=record.object_id, clip_id=record.clip_id, request=request))

        by_id = {record.object_id: record for record in records}
        refined: list[ObjectRecord] = []
        outcomes = await call_structured(
            self.backend, calls, RefinerReply, agent="refiner", stage=STAGE, prompt_version=self.prompt.version
        )
        for outcome in outcomes:
            if outcome.reject is not None:
                rejects.append(outcome.reject)
                continue
            record = by_id[outcome.item_id]
            refined.append(
                dataclasses.replace(
                    record,
                    detailed_caption=outcome.value.caption,
                    provenance=(*record.provenance, outcome.provenance),
                )
            )
        return StageResult(records=tuple(refined), rejects=tuple(rejects))
