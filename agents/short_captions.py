"""The short-caption path: the clip's subject (analyzer, single-subject mode) segmented, captioned by the clip.

As in the paper's 500K short captions: the analyzer keeps only the main subject of each caption, the
segmentor turns it into a masklet, and the clip's own caption is reused as the object's short caption
(no annotator, reviewer or refiner on this path). Rejects of both steps are returned together.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from agents.analyzer import Analyzer
from agents.backends.base import ChatBackend
from agents.segmentor import Segmentor
from agents.stage import StageResult
from engine.types import Clip, ObjectRecord

STAGE = "short_captions"


class ShortCaptioner:
    """Clips -> one segmented subject object per clip, with `short_caption` set to the clip's caption."""

    def __init__(self, analyzer_backend: ChatBackend, segmentor: Segmentor) -> None:
        self.analyzer = Analyzer(analyzer_backend, single_subject=True)
        self.segmentor = segmentor

    async def run(self, clips: Sequence[Clip]) -> StageResult[ObjectRecord]:
        analyzed = await self.analyzer.run(clips)
        captioned = [
            dataclasses.replace(record, short_caption=record.clip.caption.strip()) for record in analyzed.records
        ]
        segmented = await self.segmentor.run(captioned)
        # Rejects are relabelled with this path's stage so they land in its own reject table.
        rejects = [dataclasses.replace(reject, stage=STAGE) for reject in (*analyzed.rejects, *segmented.rejects)]
        return StageResult(records=segmented.records, rejects=tuple(rejects))
