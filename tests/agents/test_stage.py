"""Stage results: batches merged in input order, and per-item errors sorted into rejects or run failures."""

from __future__ import annotations

import asyncio

import pytest

from agents.stage import StageResult, make_reject, reject_for, run_in_batches
from engine.errors import (
    BackendUnavailableError,
    ConfigError,
    NoMaskError,
    RejectReason,
    ReplayMissError,
    VideoNotFoundError,
)


def test_batches_run_a_few_at_a_time_and_merge_in_order() -> None:
    active, peak = 0, 0

    async def run_batch(batch):
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.01 * (5 - batch[0] % 5))  # later batches finish first
        active -= 1
        rejects = tuple(make_reject("s", str(i), "c", RejectReason.NO_NOUNS) for i in batch if i % 4 == 0)
        return StageResult(records=tuple(i for i in batch if i % 4), rejects=rejects)

    result = asyncio.run(run_in_batches(list(range(20)), 3, run_batch, batches_in_flight=2))
    assert list(result.records) == [i for i in range(20) if i % 4]
    assert [r.item_id for r in result.rejects] == ["0", "4", "8", "12", "16"]
    assert peak == 2
    assert asyncio.run(run_in_batches([], 3, run_batch)) == StageResult(records=())
    with pytest.raises(ConfigError):
        asyncio.run(run_in_batches([1], 0, run_batch))


def test_item_errors_become_rejects_with_their_reason() -> None:
    cases = [
        (VideoNotFoundError("gone"), RejectReason.VIDEO_NOT_FOUND),
        (NoMaskError("none", reason=RejectReason.NO_BOX), RejectReason.NO_BOX),
        (ValueError("odd input"), RejectReason.ITEM_ERROR),  # an untyped data error is the item's, not the backend's
        (IndexError("frame -1"), RejectReason.ITEM_ERROR),
        (RuntimeError("CUDA out of memory"), RejectReason.BACKEND_ERROR),
    ]
    for error, reason in cases:
        reject = reject_for(error, stage="segment", item_id="o1", clip_id="c1")
        assert (reject.stage, reject.item_id, reject.clip_id, reject.reason) == ("segment", "o1", "c1", reason)
        assert type(error).__name__ in reject.message


@pytest.mark.parametrize("error", [BackendUnavailableError("down"), ConfigError("bad"), ReplayMissError("miss")])
def test_run_fatal_errors_are_re_raised(error: Exception) -> None:
    with pytest.raises(type(error)):
        reject_for(error, stage="segment", item_id="o1", clip_id="c1")
