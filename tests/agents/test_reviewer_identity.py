"""Point 4 of issue 24: the reviewer rejects a masklet whose identity switches to another object."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import numpy as np
import pytest

from agents.backends.fake_chat import FakeChatBackend
from agents.reviewer import Reviewer, identity_switch
from engine.errors import RejectReason
from engine.masks import encode_rle
from engine.types import Masklet, RleMask
from tests.agents.test_reviewer import _candidates

HEIGHT, WIDTH, FRAMES, SWAP = 96, 128, 12, 6


def _disc(cx: float, cy: float, radius: float = 9.0) -> RleMask:
    ys, xs = np.mgrid[0:HEIGHT, 0:WIDTH]
    return RleMask.from_coco(encode_rle((xs - cx) ** 2 + (ys - cy) ** 2 <= radius**2))


def _two_similar_discs() -> tuple[dict[int, RleMask], dict[int, RleMask]]:
    """Two identical discs on parallel lanes, one moving right, the other left, 3 px a frame."""
    first = {t: _disc(20 + 3 * t, 28) for t in range(FRAMES)}
    second = {t: _disc(100 - 3 * t, 62) for t in range(FRAMES)}
    return first, second


def test_a_masklet_that_jumps_to_a_similar_object_is_found_at_the_jump() -> None:
    first, second = _two_similar_discs()
    assert identity_switch(Masklet(masks=first, key_frame=0), 1.5) is None
    assert identity_switch(Masklet(masks=second, key_frame=0), 1.5) is None
    swapped = {t: (first if t < SWAP else second)[t] for t in range(FRAMES)}
    frame, jump = identity_switch(Masklet(masks=swapped, key_frame=0), 1.5)
    assert frame == SWAP and jump > 3
    gaps = {t: swapped[t] for t in (0, 2, 4, 6, 8, 10)}  # sparse frames: the motion is scaled by the gap
    assert identity_switch(Masklet(masks=gaps, key_frame=0), 1.5)[0] == SWAP
    bounce = {t: _disc(20 + 6 * min(t, 8) - 6 * max(0, t - 8), 28) for t in range(FRAMES)}  # turns back at frame 8
    assert identity_switch(Masklet(masks=bounce, key_frame=0), 1.5) is None


@pytest.fixture(scope="module")
def candidates(clips):
    return asyncio.run(_candidates(clips))


def test_the_reviewer_rejects_the_switch_before_any_model_call_and_keeps_real_tracks(candidates) -> None:
    # Real synthetic masklets (straight motion, bounces off the edges, occlusions) never trip the check.
    assert all(identity_switch(record.masklet, 1.5) is None for record in candidates)
    first, second = _two_similar_discs()
    swapped = {t: (first if t < SWAP else second)[t] for t in range(FRAMES)}
    record = candidates[0]
    clip = replace(record.clip, height=HEIGHT, width=WIDTH)
    bad = replace(record, object_id="swapped", clip=clip, masklet=Masklet(masks=swapped, key_frame=0))
    captioner = FakeChatBackend()
    result = asyncio.run(Reviewer(captioner, FakeChatBackend()).run([bad]))
    assert result.records == () and [r.reason for r in result.rejects] == [RejectReason.IDENTITY_SWITCH]
    assert f"frame {SWAP}" in result.rejects[0].message
    off = asyncio.run(Reviewer(FakeChatBackend(), FakeChatBackend(), identity_jump=0).run([bad]))
    assert RejectReason.IDENTITY_SWITCH not in [r.reason for r in off.rejects]  # 0 turns the check off
