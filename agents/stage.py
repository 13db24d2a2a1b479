"""What every agent's `run` returns, and how one failed item becomes a `Reject` instead of a crash.

`StageResult` pairs the records an agent produced with the items it rejected. `reject_for` sorts an
exception raised while processing one item: item-level errors become rejects with their reason code,
while errors that mean the whole run is broken (an unreachable backend, a bad config, a strict replay
miss) are re-raised so the run fails instead of marking thousands of items failed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

from engine.errors import BackendUnavailableError, ConfigError, RejectReason, ReplayMissError, VideoReferError
from engine.types import Reject

RecordT = TypeVar("RecordT")

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


def reject_for(exc: BaseException, *, stage: str, item_id: str, clip_id: str) -> Reject:
    """The reject of one item whose processing raised `exc`; re-raises errors that must fail the run."""
    if isinstance(exc, RUN_FATAL_ERRORS):
        raise exc
    # An unexpected error on one item (a backend bug, an odd input) is still that item's failure; the
    # stage's reject-fraction check fails the run when it happens to many items.
    reason = exc.reason if isinstance(exc, VideoReferError) else RejectReason.BACKEND_ERROR
    message = f"{type(exc).__name__}: {exc}"
    return Reject(stage=stage, item_id=item_id, clip_id=clip_id, reason=reason, message=message[:2000])


def make_reject(stage: str, item_id: str, clip_id: str, reason: RejectReason, message: str = "") -> Reject:
    """A reject for an item the agent decided not to keep (no nouns, static object, review failed, ...)."""
    return Reject(stage=stage, item_id=item_id, clip_id=clip_id, reason=reason, message=message[:2000])
