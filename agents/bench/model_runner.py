"""Run our VideoRefer model on Bench-D or Bench-Q as the release's inference scripts do, resumably.

The release's `inference_videorefer_{d,q}_bench.py`: the protocol's frame count (8 in release protocol), its
question strings (`agents.bench.protocol.model_question`), greedy `mm_infer` decoding; single-frame mode gives each
object its mask on the entry's `frame_idx`, multi-frame mode every annotated mask (the published 32 frames);
a null segmentation is an all-zero mask, as in the release. Fixed, and documented: an object without an
annotation on `frame_idx` (the release raises KeyError) is given its first annotated frame instead. The pipeline
is handed in (`AskingPipeline`, e.g. `model.inference.VideoReferPipeline`), so this module imports no model code.
Each answer is appended to the prediction store as soon as it exists; items already in the store are skipped.
An entry that cannot be run becomes a `Reject` with its reason (Bench-Q scores it wrong).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from agents.bench.files import BenchFile, BenchItem, BenchObject, Mode, PredictionStore, RunSummary, item_record
from agents.bench.protocol import D_QUESTION, Q_SUFFIX, BenchProtocol, get_protocol, model_question
from engine.errors import BadVideoError, InvalidSampleError, NoMaskError
from engine.ids import stable_hash
from engine.types import Reject, RleMask

PROMPT_VERSION = f"release-questions@{stable_hash(D_QUESTION, Q_SUFFIX, length=8)}"


class AskingPipeline(Protocol):
    """What the runner needs of `model.inference.VideoReferPipeline` (a fake can stand in for it)."""

    def ask(
        self, *, video: Any, masks: Sequence[Mapping[int, Any]], question: str, mode: str = "single",
        num_frames: int | None = None, max_new_tokens: int | None = None, do_sample: bool = False,
    ) -> str: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelBenchSettings:
    mode: Mode = "single"
    protocol: BenchProtocol = get_protocol("release")
    max_new_tokens: int | None = None  # None: the protocol's (mm_infer's 2048)


def object_masks(item: BenchItem, mode: Mode, size: tuple[int, int]) -> list[dict[int, RleMask | np.ndarray]]:
    """Per object in `<region>` order, the masks the model is given in `mode` (null masks as zeros of `size`)."""
    zeros = np.zeros(size, dtype=bool)
    return [{frame: zeros if mask is None else mask for frame, mask in _frames_for(obj, mode, item.frame_idx)}
            for obj in item.objects]


def _frames_for(obj: BenchObject, mode: Mode, frame_idx: int) -> list[tuple[int, RleMask | None]]:
    if mode == "multi":
        return sorted(obj.masks.items())
    if frame_idx in obj.masks:
        return [(frame_idx, obj.masks[frame_idx])]
    first = min(obj.masks)
    return [(first, obj.masks[first])]


def _video_size(item: BenchItem) -> tuple[int, int, int]:
    """Frames, height and width of the entry's video; a mask frame past its end is an entry/video mismatch."""
    from engine.video import probe

    info = probe(item.video_path)
    outside = sorted({frame for obj in item.objects for frame in obj.masks if not 0 <= frame < info.num_frames})
    if outside:
        raise InvalidSampleError(f"mask frames {outside} lie outside the video's {info.num_frames} frames")
    return info.num_frames, info.height, info.width


def run_identity(model_name: str, settings: ModelBenchSettings) -> dict[str, Any]:
    """The fields pinned in every record of a model run (a resumed run must match them)."""
    return {"runner": "model", "model": model_name, "mode": settings.mode, "protocol": settings.protocol.name,
            "num_frames": settings.protocol.num_frames, "prompt": PROMPT_VERSION,
            "max_new_tokens": settings.max_new_tokens or settings.protocol.max_new_tokens}


def run_model_bench(
    pipeline: AskingPipeline | None,
    bench: BenchFile,
    store: PredictionStore,
    settings: ModelBenchSettings,
    *,
    limit: int | None = None,
) -> RunSummary:
    """Answer every item of `bench` (the first `limit`) not yet in `store`, one at a time, greedy decoding."""
    items = list(bench.items[:limit] if limit is not None else bench.items)
    todo = [item for item in items if item.item_id not in store]
    if todo and pipeline is None:
        raise ValueError("a pipeline is needed for the items not in the store")
    rejects: list[Reject] = []
    for item in todo:
        try:
            _, height, width = _video_size(item)
            masks = object_masks(item, settings.mode, (height, width))
            reply = pipeline.ask(
                video=Path(item.video_path), masks=masks, question=model_question(item), mode=settings.mode,
                num_frames=settings.protocol.num_frames,
                max_new_tokens=settings.max_new_tokens or settings.protocol.max_new_tokens, do_sample=False,
            )
        except (BadVideoError, InvalidSampleError, NoMaskError) as exc:
            rejects.append(Reject(stage=f"bench_{bench.kind}_model", item_id=item.item_id, clip_id=item.video,
                                  reason=exc.reason, message=f"{type(exc).__name__}: {exc}"))
            continue
        store.append({**item_record(item), "pred": reply.strip()})
    return RunSummary(predicted=len(todo) - len(rejects), skipped=len(items) - len(todo), rejects=tuple(rejects))
