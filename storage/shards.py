"""Pinned shard membership: which clips belong to which shard, decided once and never recomputed.

`pin_shards` cuts the clip ids that no shard holds yet into new shards (`shards/shard-NNNNNN.json`), in the
order given, numbering on from the last existing shard; existing shards are never changed, so an incremental
ingest only adds work and a resumed run never shifts clips between shards. Each shard file is written
atomically, and a pin interrupted half-way re-pins the rest into the same boundaries when re-run.
"""

from __future__ import annotations

from collections.abc import Iterable

from engine.errors import ConfigError
from engine.ids import shard_id as shard_name
from storage.root import SHARDS_DIR, DatasetRoot

_PREFIX = "shard-"


def list_shards(root: DatasetRoot) -> list[str]:
    """Ids of every pinned shard, in creation order."""
    names = root.listdir(SHARDS_DIR)
    return [n.removesuffix(".json") for n in names if n.startswith(_PREFIX) and n.endswith(".json")]


def read_shard(root: DatasetRoot, shard_id: str) -> list[str]:
    """The pinned clip ids of one shard, in their pinned order."""
    return list(root.read_json(root.shard_path(shard_id))["clip_ids"])


def pinned_clip_ids(root: DatasetRoot) -> dict[str, str]:
    """Every pinned clip id and the shard that holds it."""
    return {clip: shard for shard in list_shards(root) for clip in read_shard(root, shard)}


def pin_shards(root: DatasetRoot, clip_ids: Iterable[str], shard_size: int) -> list[str]:
    """Pin the clip ids that no shard holds yet into new shards of at most `shard_size`; return the new shard ids.

    Duplicates and already-pinned ids are skipped; the last new shard may be smaller than `shard_size` and stays
    as it is (the next ingest opens a new shard rather than growing it).
    """
    if shard_size <= 0:
        raise ConfigError(f"shard_size must be positive, got {shard_size}")
    existing = list_shards(root)
    pinned = set(pinned_clip_ids(root))
    fresh: list[str] = []
    for clip in clip_ids:
        if "." in clip or "/" in clip:
            raise ValueError(f"clip id {clip!r} contains '.' or '/', which shard files and WebDataset keys forbid")
        if clip not in pinned:
            pinned.add(clip)
            fresh.append(clip)
    next_index = 1 + max((int(s.removeprefix(_PREFIX)) for s in existing), default=-1)
    created = []
    for offset in range(0, len(fresh), shard_size):
        new_id = shard_name(next_index + len(created))
        members = fresh[offset : offset + shard_size]
        root.write_json(root.shard_path(new_id), {"shard_id": new_id, "clip_ids": members})
        created.append(new_id)
    return created
