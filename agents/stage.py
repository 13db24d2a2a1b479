"""What every agent's `run` returns, and how one failed item becomes a `Reject` instead of a crash.

`StageResult` pairs the records an agent produced with the items it rejected. `reject_for` sorts an
exception raised while processing one item: item-level errors become rejects with their reason code (typed
errors carry their own; an untyped data error such as a `ValueError` on a garbage mask is `item_error`, any
other untyped error `backend_error`), while errors that mean the whole run is broken (an unreachable backend,
a bad config, a strict replay miss) are re-raised so the run fails instead of marking thousands of items failed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from engine.errors import (
    DATA_ERRORS,
    BackendLoadError,
    BackendUnavailableError,
    ConfigError,
    RejectReason,
    ReplayMissError,
    VideoReferError,
)
from engine.parsing import bounded
from engine.types import Reject

RecordT = TypeVar("RecordT")
ItemT = TypeVar("ItemT")

# Errors that say "the run is misconfigured or the backend is gone", never "this item is bad".
RUN_FATAL_ERRORS: tuple[type[BaseException], ...] = (BackendUnavailableError, ConfigError, ReplayMissError)



@dataclass(frozen=True, slots=True, kw_only=True)
class StageResult(Generic[RecordT]):
    """The output of one agent over a batch of items: the records it produced and the items it rejected."""

    records: tuple[RecordT, ...]
    rejects: tuple[Reject, ...] = ()

    @staticmethod
    def merge(*results: StageResult[RecordT]) -> StageResult[RecordT]:
        """Concatenate several results (records after records, rejects after rejects)."""
        return StageResult(
            records=tuple(record for result in results for record in result.records),
            rejects=tuple(reject for result in results for reject in result.rejects),
        )


def reject_for(
    exc: BaseException, *, stage: str, item_id: str, clip_id: str, untyped: RejectReason | None = None
) -> Reject:
    """The reject of one item whose processing raised `exc`; re-raises errors that must fail the run.

    `untyped` is the reason of an error outside the taxonomy; by default a data error (`DATA_ERRORS`) is
    `item_error` and anything else `backend_error` (a backend's own reply errors pass `backend_error`).
    """
    if isinstance(exc, RUN_FATAL_ERRORS):
        raise exc
    if isinstance(exc, ImportError):  # a backend's package (or a module inside it) cannot load: no item's fault
        raise BackendLoadError(f"{stage}: a backend cannot load: {type(exc).__name__}: {bounded(exc, 500)} "
                               "(install what it needs, or pick another backend kind in the config)") from exc
    # An unexpected error on one item (a backend bug, an odd input) is still that item's failure; the
    # stage's reject-fraction check fails the run when it happens to many items.
    if isinstance(exc, VideoReferError):
        reason = exc.reason
    elif untyped is not None:
        reason = untyped
    else:
        reason = RejectReason.ITEM_ERROR if isinstance(exc, DATA_ERRORS) else RejectReason.BACKEND_ERROR
    message = f"{type(exc).__name__}: {exc}"
    return Reject(stage=stage, item_id=item_id, clip_id=clip_id, reason=reason, message=message[:2000])


def make_reject(stage: str, item_id: str, clip_id: str, reason: RejectReason, message: str = "") -> Reject:
    """A reject for an item the agent decided not to keep (no nouns, static object, review failed, ...)."""
    return Reject(stage=stage, item_id=item_id, clip_id=clip_id, reason=reason, message=message[:2000])


async def run_in_batches(
    items: Sequence[ItemT],
    batch_size: int,
    run_batch: Callable[[Sequence[ItemT]], Awaitable[StageResult[RecordT]]],
    *,
    batches_in_flight: int = 2,
) -> StageResult[RecordT]:
    """`run_batch` over consecutive batches of `items`, a few at a time, results merged in input order.

    Two batches in flight let one batch decode frames while the previous one waits for its slowest
    replies, and bound memory (JPEG frames of only those batches are held at once).
    """
    if batch_size < 1 or batches_in_flight < 1:
        raise ConfigError("batch_size and batches_in_flight must be at least 1")
    gate = asyncio.Semaphore(batches_in_flight)

    async def gated(batch: Sequence[ItemT]) -> StageResult[RecordT]:
        async with gate:
            return await run_batch(batch)

    batches = [items[start : start + batch_size] for start in range(0, len(items), batch_size)]
    results = await asyncio.gather(*(gated(batch) for batch in batches))
    return StageResult.merge(*results) if results else StageResult(records=())
