"""Run an async worker over many items with a bounded number in flight, failing fast on run-level errors.

Items are independent; each worker writes its own result as it finishes. An exception that escapes a worker
(by design only run-level ones: `BackendUnavailableError`, `ConfigError`) cancels the rest and is re-raised
as itself, not wrapped in an `ExceptionGroup`, so callers and the CLI see the real cause.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

T = TypeVar("T")


async def run_bounded(items: Iterable[T], worker: Callable[[T], Awaitable[None]], *, concurrency: int) -> None:
    """Await `worker(item)` for every item, at most `concurrency` at a time."""
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    gate = asyncio.Semaphore(concurrency)

    async def one(item: T) -> None:
        async with gate:
            await worker(item)

    try:
        async with asyncio.TaskGroup() as group:
            for item in items:
                group.create_task(one(item))
    except BaseExceptionGroup as failures:
        raise _first_leaf(failures) from None


def _first_leaf(group: BaseExceptionGroup) -> BaseException:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first
