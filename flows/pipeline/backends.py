"""Warm backends: one pool per worker process, so a model is loaded once per run, not once per (stage, shard).

Every stage task asks the pool for its backends. Backends that hold model weights (a local transformers chat
model, Grounding DINO, SAM 2) are built once per distinct config and shared by every stage task the process runs
(the thread-pool runner's tasks included), then closed when the flow ends (`close_worker_pool`). Backends that
hold nothing heavy and are bound to one event loop (OpenAI-compatible clients, replay, fakes) are built per
task and closed with it: an HTTP client cannot be shared by tasks running on different event loops, and it costs
nothing to build. `pool.loads` counts the heavy builds (what `benchmarks/engine_overhead.py` reports).
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections import Counter
from typing import Any

_HEAVY_CHAT_KINDS = frozenset({"local"})


class BackendPool:
    """Backends by config: heavy ones shared and kept warm, light ones per task (see the module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._warm: dict[str, Any] = {}
        self.loads: Counter[str] = Counter()

    def _shared(self, role: str, config: Any, build: Any) -> Any:
        key = f"{role}:{json.dumps(config.model_dump(mode='json'), sort_keys=True)}"
        with self._lock:  # one build per config even when several stage tasks start at once
            if key not in self._warm:
                self._warm[key] = build(config)
                self.loads[f"{role}:{config.kind}"] += 1
            return self._warm[key]

    def chat(self, config: Any, owned: list[Any] | None = None) -> Any:
        """A chat backend; a light one is appended to `owned`, which the caller closes when its task ends."""
        from agents.backends.factory import build_chat_backend

        if config.kind in _HEAVY_CHAT_KINDS:
            return self._shared("chat", config, build_chat_backend)
        backend = build_chat_backend(config)
        if owned is not None:
            owned.append(backend)
        return backend

    def grounder(self, config: Any) -> Any:
        from agents.backends.factory import build_grounder

        return self._shared("grounder", config, build_grounder)

    def segmenter(self, config: Any) -> Any:
        from agents.backends.factory import build_segmenter

        return self._shared("segmenter", config, build_segmenter)

    def close(self) -> None:
        """Close every warm backend (each in a fresh event loop) and forget them."""
        with self._lock:
            warm, self._warm = list(self._warm.values()), {}
        for backend in warm:
            closer = getattr(backend, "aclose", None) or getattr(backend, "close", None)
            if closer is None:
                continue
            result = closer()
            if asyncio.iscoroutine(result):
                asyncio.run(result)


class TaskBackends:
    """The pool as one stage task sees it: light backends it builds are closed when the task ends."""

    def __init__(self, pool: BackendPool) -> None:
        self.pool = pool
        self.owned: list[Any] = []

    def chat(self, config: Any) -> Any:
        return self.pool.chat(config, self.owned)

    def grounder(self, config: Any) -> Any:
        return self.pool.grounder(config)

    def segmenter(self, config: Any) -> Any:
        return self.pool.segmenter(config)

    async def aclose(self) -> None:
        owned, self.owned = self.owned, []
        for backend in owned:
            await backend.aclose()


_WORKER_POOL = BackendPool()


def worker_pool() -> BackendPool:
    """This process's pool."""
    return _WORKER_POOL


def close_worker_pool() -> None:
    """Close this process's warm backends (at the end of a flow; the next run loads them again)."""
    _WORKER_POOL.close()
