"""Content-derived identifiers: hex strings without dots, stable across runs and machines.

WebDataset splits a sample key at its first dot, so no id produced here ever contains one.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any


def stable_hash(*parts: Any, length: int = 16) -> str:
    """Hex digest of the canonical JSON of `parts` (order-sensitive), `length` characters long."""
    canonical = json.dumps(parts, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:length]


def bytes_hash(data: bytes, length: int = 16) -> str:
    """Hex digest of raw bytes (images, files)."""
    return hashlib.sha256(data).hexdigest()[:length]


def clip_id(source: str, start_s: float | None, end_s: float | None) -> str:
    """Id of a clip: a hash of its source (URI or content hash) and its time span."""
    return stable_hash("clip", source, _span(start_s), _span(end_s))


def object_id(clip: str, noun: str, key_frame: int | None) -> str:
    """Id of one object of a clip: (clip id, noun, key frame)."""
    return stable_hash("object", clip, noun.strip().lower(), key_frame)


def sample_key(task: str, *parts: Any) -> str:
    """WebDataset key of a training sample: the task name and a hash of what it is made of."""
    return f"{task}_{stable_hash('sample', task, *parts)}"


def shard_id(index: int) -> str:
    """Name of the `index`-th pinned shard of a dataset root."""
    return f"shard-{index:06d}"


def _span(value: float | None) -> str | None:
    # Rounded so that 1.0 and 1.0000000001 (float noise from a CSV) give the same id.
    return None if value is None else f"{float(value):.3f}"
