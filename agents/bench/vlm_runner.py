"""Run a general VLM behind an OpenAI-compatible URL on Bench-D or Bench-Q, set-of-marks style, resumably.

For each item not yet in the prediction store: sample the frames, draw the objects on them (`marks`), ask the
VLM with the versioned prompt of the benchmark and mode, and append the reply to the store as soon as it
arrives. Items run concurrently (bounded); a video that cannot be read or a request the server refuses
becomes a `Reject` of this run (not written, so the next run tries it again), a backend that stays down
stops the run; whatever was finished stays in the store and is skipped on the next run.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from typing import Any

from agents.backends.base import ChatBackend, ChatMessage, ChatRequest, ImagePart
from agents.bench.bounded import run_bounded
from agents.bench.marks import MarkStyle, color_of, marked_frames
from agents.bench.prompts import Prompt, load_prompt
from engine.errors import BackendUnavailableError, ConfigError, VideoReferError
from engine.types import REGION_TOKEN, Reject
from agents.bench.files import (
    BenchDItem,
    BenchFile,
    BenchItem,
    BenchQItem,
    Mode,
    PredictionStore,
    RunSummary,
    item_record,
)


@dataclass(frozen=True, slots=True, kw_only=True)
class VlmSettings:
    """How the VLM is asked. `mark_style` None picks the release's choice: contour for D, tinted mask for Q."""

    mode: Mode = "single"
    num_frames: int = 16
    mark_style: MarkStyle | None = None
    temperature: float = 0.0
    max_tokens: int = 512
    concurrency: int = 8

    def style_for(self, kind: str) -> MarkStyle:
        return self.mark_style or ("contour" if kind == "d" else "tint")


def prompt_for(kind: str, mode: Mode) -> Prompt:
    return load_prompt(f"vlm_{kind}_{mode}")


def run_identity(model: str, kind: str, settings: VlmSettings) -> dict[str, Any]:
    """The fields pinned in every record of a VLM run (a resumed run must match them)."""
    return {"runner": "vlm", "model": model, "mode": settings.mode, "prompt": prompt_for(kind, settings.mode).version,
            "marks": settings.style_for(kind), "num_frames": settings.num_frames}


def build_request(item: BenchItem, jpegs: tuple[bytes, ...], settings: VlmSettings) -> ChatRequest:
    """The chat request for one item: the marked frames in time order, then the question."""
    if isinstance(item, BenchDItem):
        style = settings.style_for("d")
        color = color_of(0)[0]
        marking = f"outlined with a {color} contour" if style == "contour" else f"highlighted with a {color} mask"
        text = prompt_for("d", settings.mode).render(marking=marking)
        task = "bench_d_describe"
    else:
        style = settings.style_for("q")
        marking = "outlined in its colour" if style == "contour" else "highlighted with a mask in its colour"
        text = prompt_for("q", settings.mode).render(
            marking=marking, legend=_legend(item), question=_question_text(item), options="\n".join(item.options)
        )
        task = "bench_q_answer"
    content = (*(ImagePart(jpeg=jpeg) for jpeg in jpegs), text)
    return ChatRequest(
        messages=(ChatMessage(role="user", content=content),), task=task,
        temperature=settings.temperature, max_tokens=settings.max_tokens, context={"item_id": item.item_id},
    )


def _legend(item: BenchQItem) -> str:
    parts = []
    for number, obj in enumerate(item.objects):
        name = obj.name or f"object {number + 1}"
        parts.append(f"{name}: {color_of(number)[0]}")
    return "; ".join(parts)


def _question_text(item: BenchQItem) -> str:
    """The question with each `<region>` resolved: named objects (`<object3>`) keep their name, which the legend
    maps to a colour; an unnamed `<region>` becomes "the <colour> object"."""
    counter = iter(range(len(item.objects)))

    def replace(match: re.Match[str]) -> str:
        number = next(counter, 0)
        if item.objects[number].name:
            return ""
        return f"the {color_of(number)[0]} object"

    return re.sub(re.escape(REGION_TOKEN), replace, item.question).strip()


async def run_vlm_bench(
    backend: ChatBackend,
    bench: BenchFile,
    store: PredictionStore,
    settings: VlmSettings,
    *,
    limit: int | None = None,
) -> RunSummary:
    """Answer every item of `bench` (the first `limit`) that `store` does not hold yet."""
    items = list(bench.items[:limit] if limit is not None else bench.items)
    todo = [item for item in items if item.item_id not in store]
    rejects: list[Reject] = []
    style = settings.style_for(bench.kind)

    async def one(item: BenchItem) -> None:
        try:
            marked = await asyncio.to_thread(
                marked_frames, item, mode=settings.mode, style=style, num_frames=settings.num_frames
            )
            reply = await backend.complete(build_request(item, marked.jpegs, settings))
        except (BackendUnavailableError, ConfigError):
            raise
        except VideoReferError as exc:
            rejects.append(Reject(stage=f"bench_{bench.kind}_vlm", item_id=item.item_id, clip_id=item.video,
                                  reason=exc.reason, message=f"{type(exc).__name__}: {exc}"))
            return
        store.append({
            **item_record(item),
            "pred": reply.text,
            "frames": list(marked.frame_indices),
            "marked": [list(frames) for frames in marked.marked],
            "latency_s": round(reply.latency_s, 4),
            "prompt_tokens": reply.prompt_tokens,
            "completion_tokens": reply.completion_tokens,
        })

    await run_bounded(todo, one, concurrency=settings.concurrency)
    return RunSummary(predicted=len(todo) - len(rejects), skipped=len(items) - len(todo),
                      rejects=tuple(sorted(rejects, key=lambda r: r.item_id)))
