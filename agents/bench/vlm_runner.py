"""Run a general VLM behind an OpenAI-compatible URL on Bench-D or Bench-Q, set-of-marks style, resumably.

As the release's `benchmark/` scripts evaluate general MLLMs: for each item not yet in the prediction store, the
16 set-of-marks frames (`agents.bench.marks`) and the release's prompt (`agents.bench.protocol.som_prompt`) are
sent as one user turn (frames in time order, then the text) and the reply is appended to the store as soon as it
arrives. Items run concurrently (bounded); a video that cannot be read or a request the server refuses becomes a
`Reject` of this run (not written, so the next run tries it again); a backend that stays down stops the run;
whatever was finished stays in the store and is skipped on the next run.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from agents.backends.base import ChatBackend, ChatMessage, ChatRequest, ImagePart
from agents.bench.bounded import run_bounded
from agents.bench.files import BenchDItem, BenchFile, BenchItem, Mode, PredictionStore, RunSummary, item_record
from agents.bench.marks import marked_frames
from agents.bench.protocol import (
    Q_SUFFIX,
    SOM_D_MULTI,
    SOM_D_SINGLE,
    SOM_Q_LEAD,
    BenchProtocol,
    get_protocol,
    som_prompt,
)
from engine.errors import BackendUnavailableError, ConfigError, VideoReferError
from engine.ids import stable_hash
from engine.types import Reject


@dataclass(frozen=True, slots=True, kw_only=True)
class VlmSettings:
    """How the VLM is asked: the protocol's frames and prompts, greedy by default, 128 new tokens (the scripts')."""

    mode: Mode = "single"
    protocol: BenchProtocol = get_protocol("release")
    num_frames: int | None = None  # None: the protocol's set-of-marks frame count (16)
    temperature: float = 0.0
    max_tokens: int = 128
    concurrency: int = 8

    @property
    def frames(self) -> int:
        return self.num_frames or self.protocol.som_frames


def run_identity(model: str, kind: str, settings: VlmSettings) -> dict[str, Any]:
    """The fields pinned in every record of a VLM run (a resumed run must match them)."""
    prompt = stable_hash(SOM_D_SINGLE, SOM_D_MULTI, SOM_Q_LEAD, Q_SUFFIX, length=8)
    return {"runner": "vlm", "model": model, "mode": settings.mode, "protocol": settings.protocol.name,
            "prompt": f"som-{kind}-{settings.mode}@{prompt}", "num_frames": settings.frames}


def build_request(item: BenchItem, jpegs: tuple[bytes, ...], settings: VlmSettings) -> ChatRequest:
    """The chat request for one item: the marked frames in time order, then the release's prompt."""
    task = "bench_d_describe" if isinstance(item, BenchDItem) else "bench_q_answer"
    content = (*(ImagePart(jpeg=jpeg) for jpeg in jpegs), som_prompt(item, settings.mode))
    return ChatRequest(
        messages=(ChatMessage(role="user", content=content),), task=task,
        temperature=settings.temperature, max_tokens=settings.max_tokens,
    )


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

    async def one(item: BenchItem) -> None:
        try:
            marked = await asyncio.to_thread(marked_frames, item, mode=settings.mode, num_frames=settings.frames)
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
