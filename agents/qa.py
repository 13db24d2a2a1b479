"""The QA path: clips whose objects already have masks and referring expressions -> question/answer pairs.

For sources like MeViS, Ref-YouTube-VOS and A2D-Sentences (`Clip.given_objects`) the segmentor is
skipped: the annotator describes each given object with the object outlined on its mask frames (static
objects are kept), then an LLM writes basic, reasoning and future-prediction questions about the objects,
named `<object0>`, `<object1>`, ... in the prompt. Each `QAPair` is made self-contained: its question,
answer and options are renumbered so that `<objectK>` means `object_ids[K]` of that pair. Items that
reference no known object are dropped; a clip left with no object or no usable question is rejected.
Rejects name either an object (its description failed) or a clip (`item_id == clip_id`).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

from agents.annotator import Annotator
from agents.backends.base import ChatBackend, ChatRequest
from agents.calling import Call, call_structured, structured_request
from agents.prompting import load_prompt
from agents.schemas import QAItem, QAReply
from agents.stage import StageResult, make_reject, run_in_batches
from engine.errors import RejectReason
from engine.ids import object_id
from engine.types import Clip, ClipQA, ObjectRecord, QAPair, Reject

STAGE = "generate_qa"
_OBJECT_NAME = re.compile(r"<object(\d+)>")


class QAGenerator:
    """Clips with given objects -> `ClipQA` records (see the module docstring)."""

    def __init__(
        self, annotator_backend: ChatBackend, llm_backend: ChatBackend, *, num_frames: int = 16, batch_size: int = 32
    ) -> None:
        self.annotator = Annotator(annotator_backend, num_frames=num_frames, drop_static=False, outline=True)
        self.llm = llm_backend
        self.batch_size = batch_size
        self.prompt = load_prompt("qa")

    async def run(self, clips: Sequence[Clip]) -> StageResult[ClipQA]:
        return await run_in_batches(clips, self.batch_size, self._run_batch)

    async def _run_batch(self, clips: Sequence[Clip]) -> StageResult[ClipQA]:
        rejects: list[Reject] = []
        candidates: list[ObjectRecord] = []
        for clip in clips:
            if not clip.given_objects:
                reason, message = RejectReason.NO_NOUNS, "clip has no given objects to ask about"
                rejects.append(make_reject(STAGE, clip.clip_id, clip.clip_id, reason, message))
                continue
            candidates.extend(given_object_records(clip))

        described = await self.annotator.run(candidates)
        rejects.extend(dataclasses.replace(reject, stage=STAGE) for reject in described.rejects)
        objects_of: dict[str, list[ObjectRecord]] = {}
        for record in described.records:
            objects_of.setdefault(record.clip_id, []).append(record)

        calls = [
            Call(item_id=clip.clip_id, clip_id=clip.clip_id, request=self._request(objects_of[clip.clip_id]))
            for clip in clips
            if clip.clip_id in objects_of
        ]
        for clip in clips:
            if clip.given_objects and clip.clip_id not in objects_of:
                reason, message = RejectReason.INVALID_REPLY, "no object of the clip could be described"
                rejects.append(make_reject(STAGE, clip.clip_id, clip.clip_id, reason, message))

        produced: list[ClipQA] = []
        outcomes = await call_structured(
            self.llm, calls, QAReply, agent="qa_generator", stage=STAGE, prompt_version=self.prompt.version
        )
        clip_of = {clip.clip_id: clip for clip in clips}
        for outcome in outcomes:
            if outcome.reject is not None:
                rejects.append(outcome.reject)
                continue
            objects = objects_of[outcome.item_id]
            pairs = [pair for item in outcome.value.items if (pair := to_qa_pair(item, objects)) is not None]
            if not pairs:
                reason, message = RejectReason.INVALID_REPLY, "no generated question names a known object"
                rejects.append(make_reject(STAGE, outcome.item_id, outcome.clip_id, reason, message))
                continue
            produced.append(
                ClipQA(
                    clip=clip_of[outcome.item_id],
                    objects=tuple(objects),
                    qa=tuple(pairs),
                    provenance=(outcome.provenance,),
                )
            )
        return StageResult(records=tuple(produced), rejects=tuple(rejects))

    def _request(self, objects: list[ObjectRecord]) -> ChatRequest:
        lines = []
        for index, record in enumerate(objects):
            expression = f', referred to as "{record.expression}"' if record.expression else ""
            lines.append(
                f"<object{index}> (a {record.noun}{expression}):\n"
                f"  appearance: {record.descriptions.appearance}\n  motion: {record.descriptions.motion}"
            )
        many = len(objects) >= 2
        values = {
            "object_list": "\n".join(lines),
            "num_questions": min(10, max(3, 2 * len(objects) + 1)),
            "multi_hint": ", and at least one about several objects together" if many else "",
        }
        return structured_request(self.prompt, QAReply, task="qa", values=values)


def given_object_records(clip: Clip) -> list[ObjectRecord]:
    """One object record per given object of a clip, id from (clip id, object name); masks as given."""
    records: list[ObjectRecord] = []
    seen: set[str] = set()
    for index, given in enumerate(clip.given_objects):
        name = given.name if given.name not in seen else f"{given.name}#{index}"
        seen.add(name)
        records.append(
            ObjectRecord(
                object_id=object_id(clip.clip_id, name, None),
                clip=clip,
                noun=given.category or given.name,
                category=given.category,
                expression=given.expression,
                masklet=given.masklet,
            )
        )
    return records


def to_qa_pair(item: QAItem, objects: Sequence[ObjectRecord]) -> QAPair | None:
    """A self-contained pair (`<objectK>` renumbered to index its own `object_ids`), or None if it names none."""
    texts = (item.question, *item.objects, item.answer, *item.options)
    positions = [int(match.group(1)) for text in texts for match in _OBJECT_NAME.finditer(text)]
    if not positions or max(positions) >= len(objects):
        return None  # a question about no object, or about one that does not exist, cannot become a sample
    referenced = list(dict.fromkeys(positions))
    renumber = {old: new for new, old in enumerate(referenced)}

    def rewrite(text: str) -> str:
        return _OBJECT_NAME.sub(lambda match: f"<object{renumber[int(match.group(1))]}>", text)

    options = tuple(rewrite(option) for option in item.options)
    answer = rewrite(item.answer)
    return QAPair(
        question=rewrite(item.question),
        answer=answer,
        qa_type=item.type,
        object_ids=tuple(objects[position].object_id for position in referenced),
        # Options only make a multiple-choice question when the answer is one of them.
        options=options if answer in options else (),
    )
