"""The 700K import never raises on malformed items: structurally fuzzed items each end as a sample or a reject."""

from __future__ import annotations

import copy
import random
from collections import Counter
from typing import Any

from engine.errors import RejectReason
from storage.videorefer_json import import_700k

ATOMS: list[Any] = [None, 0, -1, 1.5, float("nan"), "", "x", [], {}, [1, 2], {"size": [4, 4], "counts": "0"}, True,
                    "<region>", 10**12, {"size": [4, 4], "counts": [0, 50]}, [[0.0, 0.0, 9.0, 0.0, 9.0, 9.0]]]
KEYS = ["video", "conversations", "annotation", "frame_idx", "from", "value", "segmentation", "height", "width",
        "size", "counts"]
PATHS = [("video",), ("conversations",), ("conversations", 0), ("conversations", 0, "value"),
         ("conversations", 1, "from"), ("annotation",), ("annotation", 0), ("annotation", 0, "0"),
         ("annotation", 0, "0", "segmentation"), ("annotation", 0, "0", "segmentation", "size"),
         ("annotation", 0, "0", "segmentation", "counts"), ("height",), ("width",), ("frame_idx",)]
GOOD = {"video": "a.mp4",
        "conversations": [{"from": "human", "value": "<video>\nWhat is <region> doing?"},
                          {"from": "gpt", "value": "It runs."}],
        "annotation": [{"0": {"segmentation": {"size": [4, 4], "counts": "52203"}}}], "height": 4, "width": 4}


def _garbage(rng: random.Random, depth: int = 0) -> Any:
    if depth > 2 or rng.random() < 0.4:
        return copy.deepcopy(rng.choice(ATOMS))  # JSON has no shared (let alone circular) objects
    if rng.random() < 0.5:
        return [_garbage(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return {rng.choice(KEYS): _garbage(rng, depth + 1) for _ in range(rng.randint(0, 4))}


def _fuzzed(rng: random.Random) -> Any:
    item = copy.deepcopy(GOOD)
    for _ in range(rng.randint(1, 3)):
        target: Any = item
        path = rng.choice(PATHS)
        try:
            for key in path[:-1]:
                target = target[key]
            target[path[-1]] = _garbage(rng)
        except (KeyError, IndexError, TypeError):
            pass
    return item


def test_fuzzed_700k_items_each_become_a_sample_or_a_typed_reject(tmp_path) -> None:
    rng = random.Random(7)
    items = [GOOD, *(_fuzzed(rng) for _ in range(2000)), *ATOMS]
    samples, rejects = import_700k(items, video_root=str(tmp_path), grid=8, allow_outside=True)
    assert len(samples) + len(rejects) == len(items)
    assert samples[0].video_uri.endswith("a.mp4")  # the good item is kept
    reasons = Counter(r.reason for r in rejects)
    assert reasons[RejectReason.ITEM_ERROR] == 0, [r.message for r in rejects if r.reason == RejectReason.ITEM_ERROR]
    assert {RejectReason.MALFORMED_SAMPLE, RejectReason.MISSING_MASK, RejectReason.INVALID_MASK} <= set(reasons)
    assert all(r.message for r in rejects)


def test_an_error_no_check_names_rejects_only_its_item(tmp_path) -> None:
    # A structure no JSON file holds (it contains itself) still fails only its own item: `item_error`.
    looped = copy.deepcopy(GOOD)
    looped["conversations"][1]["extra"] = looped
    samples, rejects = import_700k([GOOD, looped, GOOD], video_root=str(tmp_path), grid=8, allow_outside=True)
    assert len(samples) == 2
    assert [(r.item_id, r.reason) for r in rejects] == [("item1", RejectReason.ITEM_ERROR)]
