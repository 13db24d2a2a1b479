"""Where a clip's identity comes from, and that it still holds: content digests of local videos, the per-shard
record of what ingest checked, and the check every stage and export make before reading a clip.

`source_id` is what a clip id is derived from (the bytes of a local video or a folder's frames, the URI of a
remote one); ingest records each clip's digest in `sources/<shard>.fingerprints.json`; `verify_source` raises
`SourceChangedError` when the file was replaced or a symlink swapped in since, and `source_changed_rejects` turns
that into `source_changed` rejects of a stage task's items. Apart from ingest so that export and the runner use
it without importing ingest (and the stage registry it needs).
"""

from __future__ import annotations

import hashlib
import os
import stat
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from engine.errors import NotARegularFileError, RejectReason, VideoReferError, VideoTooLargeError
from engine.parsing import preview
from engine.types import Clip, Reject
from flows.pipeline import layout
from flows.pipeline.manifest import is_url


def source_id(uri: str, *, max_bytes: int | None = None) -> str:
    """What a clip id is derived from: the URI of a remote video, the content hash of a local one.

    Only a regular file, or a folder's frame images (names and bytes, in order), is read; anything else (a FIFO,
    a device) raises `NotARegularFileError` without being opened, and more than `max_bytes` `VideoTooLargeError`.
    """
    if is_url(uri):
        return uri
    path = Path(uri)
    if stat.S_ISDIR(os.stat(path).st_mode):
        from engine.video import list_frame_files

        files = list_frame_files(path)
        digest = hashlib.sha256(b"frame-folder\0")
        total = sum(f.stat().st_size for f in files)
        _check_bytes(path, total, max_bytes)
        for file in files:
            digest.update(file.name.encode("utf-8", "surrogateescape") + b"\0")
            _hash_file(file, digest, max_bytes)
        return "sha256:" + digest.hexdigest()[:32]
    digest = hashlib.sha256()
    _hash_file(path, digest, max_bytes)
    return "sha256:" + digest.hexdigest()[:32]


def _hash_file(path: Path, digest: Any, max_bytes: int | None) -> None:
    # O_NONBLOCK: opening a FIFO does not wait for a writer; fstat then refuses it (and devices) before any read.
    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    with open(descriptor, "rb", closefd=True) as handle:
        info = os.fstat(descriptor)
        if not stat.S_ISREG(info.st_mode):
            raise NotARegularFileError(f"not a regular file or a frame folder: {path}")
        _check_bytes(path, info.st_size, max_bytes)
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)


def _check_bytes(path: Path, size: int, max_bytes: int | None) -> None:
    if max_bytes is not None and size > max_bytes:
        raise VideoTooLargeError(f"{path} holds {size} bytes, above limits.max_video_bytes ({max_bytes})")


def fingerprint_path(shard: str) -> str:
    """The per-shard record of what ingest checked: clip id -> the video's content digest and size."""
    return f"sources/{shard}.fingerprints.json"


_DIGESTS: dict[tuple[str, int, int, int, int], str] = {}  # (path, dev, inode, size, mtime_ns) -> digest, per process
_DIGESTS_LOCK = threading.Lock()


def _digest(path: str, max_bytes: int | None = None) -> str:
    """The content digest of a local video (`source_id`), computed once per process for an unchanged file (a
    frame folder, whose own times do not follow its files', every time); a URL is its own id, as `source_id` says."""
    if is_url(path):
        return source_id(path, max_bytes=max_bytes)
    info = os.stat(path)
    if stat.S_ISDIR(info.st_mode):
        return source_id(path, max_bytes=max_bytes)
    key = (path, info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)
    with _DIGESTS_LOCK:
        known = _DIGESTS.get(key)
    if known is None:
        known = source_id(path, max_bytes=max_bytes)
        with _DIGESTS_LOCK:
            _DIGESTS[key] = known
    return known


def _fingerprint(uri: str) -> dict[str, str]:
    if is_url(uri):
        return {}
    return {"digest": _digest(uri)}


def verify_source(clip: Clip, fingerprints: dict[str, Any] | None) -> None:
    """`SourceChangedError` unless the clip's video is still what ingest checked: the same resolved path (no
    symlink swapped in on the way), and the same content digest when ingest recorded one (`fingerprints`, the
    shard's; None for a root ingested before they were kept, where the path check alone applies)."""
    from engine.errors import SourceChangedError

    uri = clip.video_uri
    if not uri or is_url(uri):
        return
    path = uri.removeprefix("file://")
    real = os.path.realpath(path)
    if real != os.path.normpath(path):
        raise SourceChangedError(f"{preview(uri, 300)} now leads to {preview(real, 300)} (a symlink was swapped in "
                                 "after ingest); re-ingest it to use the new video")
    expected = (fingerprints or {}).get(clip.clip_id, {}).get("digest")
    if expected is None:
        return
    try:
        actual = _digest(path)
    except OSError as exc:
        raise SourceChangedError(f"{preview(uri, 300)}: {exc.strerror or exc} (it was there at ingest)") from None
    except VideoReferError as exc:
        raise SourceChangedError(f"{preview(uri, 300)} is no longer what ingest checked: {exc}") from None
    if actual != expected:
        raise SourceChangedError(f"{preview(uri, 300)} was replaced after ingest (its bytes differ from the clip's); "
                                 "re-ingest it to use the new video")


def read_fingerprints(droot: layout.DatasetRoot, shard: str) -> dict[str, Any] | None:
    path = fingerprint_path(shard)
    return droot.read_json(path) if droot.exists(path) else None


def source_changed_rejects(
    droot: layout.DatasetRoot, shard: str, stage: str, items: Sequence[Any], item_id: Any
) -> tuple[list[Any], list[Reject]]:
    """Split a stage task's items into those whose clip's video is still what ingest checked and rejects
    (`source_changed`) of the others; each clip is checked once. `item_id(item)` names an item's reject."""
    fingerprints = read_fingerprints(droot, shard)
    problems: dict[str, str | None] = {}
    kept: list[Any] = []
    rejects: list[Reject] = []
    for item in items:
        clip = item if isinstance(item, Clip) else item.clip
        if clip.clip_id not in problems:
            try:
                verify_source(clip, fingerprints)
                problems[clip.clip_id] = None
            except VideoReferError as exc:
                problems[clip.clip_id] = str(exc)
        problem = problems[clip.clip_id]
        if problem is None:
            kept.append(item)
        else:
            rejects.append(Reject(stage=stage, item_id=item_id(item), clip_id=clip.clip_id,
                                  reason=RejectReason.SOURCE_CHANGED, message=problem))
    return kept, rejects
