"""Run our VideoRefer model on Bench-D or Bench-Q, in single- or multi-frame mode, resumably.

The model sees the video (16 uniform frames, sampled by the pipeline) and each referred object as masks:
single-frame mode gives the object's mask on the entry's `frame_idx`, multi-frame mode every annotated mask
(the published 32 frames; the object encoder merges them to u tokens). The questions follow the release's
evaluation: Bench-D asks for a detailed description of the object `<region>`, Bench-Q asks the question with its
`<region>` marks, then the options, then for the option's letter. Each answer is appended to the prediction
store as soon as it exists; items already in the store are skipped, so an interrupted run resumes.
Imports `model`, `engine` and `storage` only (never agents or flows).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from engine.errors import BadVideoError, InvalidSampleError, NoMaskError
from engine.ids import stable_hash
from engine.types import REGION_TOKEN, Reject, RleMask
from agents.bench.files import (
    BenchDItem,
    BenchFile,
    BenchItem,
    Mode,
    PredictionStore,
    RunSummary,
    item_record,
)

D_QUESTION = f"Please describe in detail the object {REGION_TOKEN} in the video."
Q_SUFFIX = "Answer with the option's letter from the given choices directly."
PROMPT_VERSION = f"model-bench@{stable_hash(D_QUESTION, Q_SUFFIX, length=8)}"


class AskingPipeline(Protocol):
    """What the runner needs of `model.inference.VideoReferPipeline` (a fake can stand in for it)."""

    def ask(
        self, *, video: Any, masks: Sequence[Mapping[int, Any]], question: str, mode: str = "single",
        max_new_tokens: int = ..., do_sample: bool = ...,
    ) -> str: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelBenchSettings:
    mode: Mode = "single"
    max_new_tokens_d: int = 512
    max_new_tokens_q: int = 16


def model_question(item: BenchItem) -> str:
    """The question our model is asked for one item."""
    if isinstance(item, BenchDItem):
        return D_QUESTION
    return f"{item.question} {' '.join(item.options)} {Q_SUFFIX}"


def object_masks(item: BenchItem, mode: Mode) -> list[dict[int, RleMask]]:
    """Per object in `<region>` order, the masks the model is given in `mode` (absolute frame index -> RLE)."""
    masks = [obj.masks_for_mode(mode, item.frame_idx) for obj in item.objects]
    empty = [number for number, per_object in enumerate(masks) if not per_object]
    if empty:
        raise NoMaskError(f"objects {empty} have no mask to give the model")
    return masks


def _check_fits_video(item: BenchItem, masks: Sequence[Mapping[int, RleMask]]) -> None:
    """A mask frame past the video's end means the entry does not belong to this video: reject, do not crash."""
    from engine.video import probe

    total = probe(item.video_path).num_frames
    outside = sorted({frame for per_object in masks for frame in per_object if not 0 <= frame < total})
    if outside:
        raise InvalidSampleError(f"mask frames {outside} lie outside the video's {total} frames")


def run_identity(model_name: str, settings: ModelBenchSettings) -> dict[str, Any]:
    """The fields pinned in every record of a model run (a resumed run must match them)."""
    return {"runner": "model", "model": model_name, "mode": settings.mode, "prompt": PROMPT_VERSION}


def run_model_bench(
    pipeline: AskingPipeline,
    bench: BenchFile,
    store: PredictionStore,
    settings: ModelBenchSettings,
    *,
    limit: int | None = None,
) -> RunSummary:
    """Answer every item of `bench` (the first `limit`) not yet in `store`, one at a time, greedy decoding."""
    items = list(bench.items[:limit] if limit is not None else bench.items)
    todo = [item for item in items if item.item_id not in store]
    rejects: list[Reject] = []
    for item in todo:
        is_d = isinstance(item, BenchDItem)
        try:
            masks = object_masks(item, settings.mode)
            _check_fits_video(item, masks)
            reply = pipeline.ask(
                video=Path(item.video_path), masks=masks, question=model_question(item),
                mode=settings.mode, max_new_tokens=settings.max_new_tokens_d if is_d else settings.max_new_tokens_q,
                do_sample=False,
            )
        except (BadVideoError, InvalidSampleError, NoMaskError) as exc:
            rejects.append(Reject(stage=f"bench_{bench.kind}_model", item_id=item.item_id, clip_id=item.video,
                                  reason=exc.reason, message=f"{type(exc).__name__}: {exc}"))
            continue
        store.append({**item_record(item), "pred": reply.strip()})
    return RunSummary(predicted=len(todo) - len(rejects), skipped=len(items) - len(todo), rejects=tuple(rejects))
