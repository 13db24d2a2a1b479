"""The analyzer agent: a clip's caption -> one `ObjectRecord` per concrete noun (subject first, then others).

An LLM reads the caption and names the subject noun(s) and the other objects (PAPER.md: "a man fishing on
a boat catches a large fish" -> subject [man], others [boat, fish]). Each noun becomes an object whose id
is `engine.ids.object_id(clip_id, noun, None)`; later stages keep that id. In single-subject mode (the
short-caption path) only the first subject noun is kept. A clip with no noun is rejected (`NO_NOUNS`).
"""

from __future__ import annotations

from collections.abc import Sequence

from agents.backends.base import ChatBackend
from agents.calling import Call, call_structured, structured_request
from agents.prompting import load_prompt
from agents.schemas import AnalyzerReply
from agents.stage import StageResult, make_reject, run_in_batches
from engine.errors import RejectReason
from engine.ids import object_id
from engine.types import Clip, ObjectRecord, Reject

STAGE = "analyze"


class Analyzer:
    """Caption -> nouns -> object records; `max_objects` caps how many nouns one clip may yield."""

    def __init__(
        self, backend: ChatBackend, *, single_subject: bool = False, max_objects: int = 8, batch_size: int = 256
    ) -> None:
        self.backend = backend
        self.single_subject = single_subject
        self.max_objects = max_objects
        self.batch_size = batch_size
        self.prompt = load_prompt("analyzer_single_subject" if single_subject else "analyzer")

    async def run(self, clips: Sequence[Clip]) -> StageResult[ObjectRecord]:
        return await run_in_batches(clips, self.batch_size, self._run_batch)

    async def _run_batch(self, clips: Sequence[Clip]) -> StageResult[ObjectRecord]:
        rejects: list[Reject] = []
        calls: list[Call] = []
        by_id: dict[str, Clip] = {}
        for clip in clips:
            if not clip.caption.strip():
                rejects.append(make_reject(STAGE, clip.clip_id, clip.clip_id, RejectReason.NO_NOUNS, "empty caption"))
                continue
            by_id[clip.clip_id] = clip
            request = structured_request(
                self.prompt,
                AnalyzerReply,
                task="analyze",
                values={"caption": clip.caption.strip()},
            )
            calls.append(Call(item_id=clip.clip_id, clip_id=clip.clip_id, request=request))

        records: list[ObjectRecord] = []
        outcomes = await call_structured(
            self.backend, calls, AnalyzerReply, agent="analyzer", stage=STAGE, prompt_version=self.prompt.version
        )
        for outcome in outcomes:
            if outcome.reject is not None:
                rejects.append(outcome.reject)
                continue
            clip = by_id[outcome.item_id]
            nouns = outcome.value.nouns()
            if self.single_subject:
                nouns = [(noun, is_subject) for noun, is_subject in nouns if is_subject][:1]
            nouns = nouns[: self.max_objects]
            if not nouns:
                message = f"no concrete noun in caption {clip.caption[:200]!r}"
                rejects.append(make_reject(STAGE, clip.clip_id, clip.clip_id, RejectReason.NO_NOUNS, message))
                continue
            records.extend(
                ObjectRecord(
                    object_id=object_id(clip.clip_id, noun, None),
                    clip=clip,
                    noun=noun,
                    is_subject=is_subject,
                    category=noun,
                    provenance=(outcome.provenance,),
                )
                for noun, is_subject in nouns
            )
        return StageResult(records=tuple(records), rejects=tuple(rejects))
