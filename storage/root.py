"""A dataset root: the storage layout of DESIGN.md section 5 over a local path or any fsspec URL, with atomic writes.

`DatasetRoot` names every path of the layout (dataset.json, sources/, shards/, stages/, rejects/, export/,
reports/) relative to the root, and reads and writes bytes and JSON there. Every write is atomic: on file systems
that can rename (local disk, `memory://`) the data goes to a temporary name in the same directory and is renamed
into place when complete; on object stores (s3, gcs, ...) a single upload only becomes visible when it is
committed on close, so the final name is written directly. A stage's output for a shard counts as done only when
its `<shard_id>.done.json` marker, written last, carries the stage-config hash the caller expects.

One writer per root: `DatasetRoot.lock(command)` creates `.videorefer.lock` exclusively, holding the writer's id
(host, pid, the process's start time, the command). A second writer fails at once with a `RootLockedError` naming
the holder; a lock whose process is gone (killed with -9 on this host, or its pid reused by another process) is
stale and taken over. The lock is re-entrant within one process (the CLI takes it, then the flow it runs), and
temporary names are unique per write, so two processes can never write into the same temporary file. The writer
that takes the lock removes the temp files interrupted writers left (`is_temp_name`). On object
stores (`s3://bucket/prefix` through s3fs, with the standard AWS variables such as `AWS_ENDPOINT_URL`) the lock is
created by the store's atomic create-if-absent (`PutObject` with `If-None-Match: *`, which S3 and SeaweedFS refuse
on an existing key), with the same holder and stale-lock rules; no reader ever sees half an object, since an
upload becomes visible only when it is committed whole.
"""

from __future__ import annotations

import json
import os
import posixpath
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO

import fsspec

from engine.errors import ConfigError

SCHEMA_VERSION = 1

DATASET_JSON = "dataset.json"
SOURCES_DIR = "sources"
SHARDS_DIR = "shards"
STAGES_DIR = "stages"
REJECTS_DIR = "rejects"
EXPORT_WDS_DIR = "export/wds"
EXPORT_JSON_DIR = "export/json"
REPORTS_DIR = "reports"
DONE_SUFFIX = ".done.json"

# File systems whose rename is a real, cheap move of a complete file; the others get direct, committed uploads.
_RENAMING_PROTOCOLS = {"file", "local", "memory"}
LOCK_NAME = ".videorefer.lock"
# A lock file that exists but cannot be read yet: its writer may be between create and write; older than this it
# was left by a process killed in that instant.
_UNREADABLE_LOCK_GRACE_S = 10.0


class RootLockedError(ConfigError):
    """Another writer holds the dataset root's lock (the message names it and what to do)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class LockHolder:
    """Who holds a root's lock: enough to tell a user who it is and to tell a live holder from a dead one."""

    host: str
    pid: int
    started: str  # when the lock was taken, UTC ISO time
    command: str
    process_start: str = ""  # the process's start time from /proc (tells a reused pid from the holder)
    token: str = ""

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host} since {self.started} (`{self.command}`)"

    @staticmethod
    def current(command: str) -> LockHolder:
        return LockHolder(host=socket.gethostname(), pid=os.getpid(),
                          started=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), command=command[:500],
                          process_start=process_start_time(os.getpid()), token=uuid.uuid4().hex)


def process_start_time(pid: int) -> str:
    """The start time of process `pid` in clock ticks since boot (Linux /proc), or "" where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[-1].split()[19]  # field 22 of stat; fields after the command name start at 3


def _precondition_failed(error: OSError) -> bool:
    """An object store refused a conditional write because its condition did not hold (S3 HTTP 412; s3fs turns it
    into `FileExistsError` only when the store names the `If-None-Match` condition, as AWS does and SeaweedFS not)."""
    cause = error.__cause__
    response = getattr(cause, "response", None) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code in ("PreconditionFailed", "412") or status == 412


def holder_is_alive(holder: LockHolder) -> bool:
    """False only when the holder is certainly gone: on this host, no such pid, or the pid now names another
    process (another start time). A holder on another host is taken to be alive."""
    if holder.host != socket.gethostname():
        return True
    try:
        os.kill(holder.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # a live process of another user
    now = process_start_time(holder.pid) if holder.process_start else ""
    return not now or now == holder.process_start


def is_temp_name(name: str) -> bool:
    """A file name our writers give unfinished data: `.<name>.tmp-<id>` and `<temp_name>-<id>` (`open_atomic`, e.g.
    `train-000000.tar.tmp-<id>`), `<name>.tmp` / `.<name>.<pid>.tmp` (synthetic videos, the demo manifest,
    staging files) and `.videorefer.lock.stale-<id>` (a lock being taken over)."""
    return ".tmp-" in name or name.endswith(".tmp") or name.startswith(f"{LOCK_NAME}.stale-")


# Locks this process holds: lock URL -> (holder, depth); the CLI takes the lock and the flow it runs takes it again.
_HELD: dict[str, tuple[LockHolder, int]] = {}
_HELD_GUARD = threading.Lock()


class DatasetRoot:
    """One dataset root (`/data/run1`, `memory://tests/x`, `s3://bucket/prefix`); all paths are relative to it."""

    def __init__(self, url_or_path: str | Path | DatasetRoot) -> None:
        if isinstance(url_or_path, DatasetRoot):
            url_or_path = url_or_path.url
        self.url = str(url_or_path)
        self.fs, self._base = fsspec.core.url_to_fs(self.url)
        protocols = self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,)
        self._renames = bool(set(protocols) & _RENAMING_PROTOCOLS)
        if not self._renames:  # object stores: no cached listings, so what other writers did is always seen
            with suppress(TypeError):
                self.fs, self._base = fsspec.core.url_to_fs(self.url, use_listings_cache=False)
        self.is_local = bool(set(protocols) & {"file", "local"})

    def __repr__(self) -> str:
        return f"DatasetRoot({self.url!r})"

    # ------------------------------------------------------------ layout

    def full_path(self, relative: str) -> str:
        """The file system path (without protocol) of `relative` inside the root."""
        relative = relative.strip("/")
        return posixpath.join(self._base, relative) if relative else self._base

    def url_of(self, relative: str) -> str:
        """A URL (or local path) of `relative` that fsspec and webdataset can open."""
        if self.is_local:
            return self.full_path(relative)
        return self.fs.unstrip_protocol(self.full_path(relative))

    def sub(self, relative: str) -> DatasetRoot:
        """A root for a sub-directory (used to hand `export/wds` to a writer)."""
        return DatasetRoot(self.url_of(relative))

    @staticmethod
    def source_path(part: str) -> str:
        return f"{SOURCES_DIR}/{part}.parquet"

    @staticmethod
    def shard_path(shard_id: str) -> str:
        return f"{SHARDS_DIR}/{shard_id}.json"

    @staticmethod
    def stage_path(stage: str, shard_id: str) -> str:
        return f"{STAGES_DIR}/{stage}/{shard_id}.parquet"

    @staticmethod
    def done_path(stage: str, shard_id: str) -> str:
        return f"{STAGES_DIR}/{stage}/{shard_id}{DONE_SUFFIX}"

    @staticmethod
    def reject_path(stage: str, shard_id: str) -> str:
        return f"{REJECTS_DIR}/{stage}/{shard_id}.parquet"

    # ------------------------------------------------------------ bytes and JSON

    def exists(self, relative: str) -> bool:
        return bool(self.fs.exists(self.full_path(relative)))

    def listdir(self, relative: str = "") -> list[str]:
        """Sorted names (not paths) inside a directory of the root; empty when the directory does not exist."""
        path = self.full_path(relative)
        try:
            entries = self.fs.ls(path, detail=False)
        except FileNotFoundError:
            return []
        names = {posixpath.basename(str(entry).rstrip("/")) for entry in entries}
        names.discard("")
        return sorted(names)

    def read_bytes(self, relative: str) -> bytes:
        with self.fs.open(self.full_path(relative), "rb") as handle:
            return handle.read()

    def write_bytes(self, relative: str, data: bytes) -> None:
        with self.open_atomic(relative) as handle:
            handle.write(data)

    def read_json(self, relative: str) -> Any:
        return json.loads(self.read_bytes(relative).decode("utf-8"))

    def write_json(self, relative: str, value: Any) -> None:
        # Sorted keys and a trailing newline: the same value always gives the same bytes.
        text = json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
        self.write_bytes(relative, text.encode("utf-8"))

    def delete(self, relative: str) -> None:
        """Remove a file if it exists (re-running a stage removes its old done marker first)."""
        path = self.full_path(relative)
        if self.fs.exists(path):
            self.fs.rm(path)

    def open_read(self, relative: str) -> BinaryIO:
        return self.fs.open(self.full_path(relative), "rb")

    @contextmanager
    def open_atomic(self, relative: str, *, temp_name: str | None = None) -> Iterator[BinaryIO]:
        """A writable binary file that appears at `relative` only when the block ends without an exception.

        `temp_name` (a sibling file name) replaces the default hidden temporary name, e.g. `train-000000.tar.tmp`;
        a unique suffix is added to either.
        """
        final = self.full_path(relative)
        directory = posixpath.dirname(final)
        if directory and self._renames:  # object stores have no folders to make (s3fs would list the bucket)
            self.fs.makedirs(directory, exist_ok=True)
        if not self._renames:
            # Object stores: the upload is committed on close; on failure the partial upload is discarded.
            handle = self.fs.open(final, "wb")
            try:
                yield handle
            except BaseException:
                discard = getattr(handle, "discard", None)
                if discard is not None:
                    discard()
                    handle.closed = True  # discarded: closing it later (its __del__) must not upload anything
                raise
            handle.close()
            return
        # Unique per write: two writers (processes or threads) never share a temporary file.
        unique = uuid.uuid4().hex[:12]
        name = f"{temp_name}-{unique}" if temp_name else f".{posixpath.basename(final)}.tmp-{unique}"
        temp = posixpath.join(directory, name)
        handle = self.fs.open(temp, "wb")
        try:
            yield handle
            handle.close()
        except BaseException:
            with suppress(OSError):  # closing flushes, which fails again on a full disk: remove the temp anyway
                handle.close()
            with suppress(OSError):
                if self.fs.exists(temp):
                    self.fs.rm(temp)
            raise
        self.fs.mv(temp, final)

    # ------------------------------------------------------------ dataset.json and done markers

    def write_dataset_json(self, *, name: str, config: dict[str, Any] | None = None, **fields: Any) -> None:
        """The dataset's identity card: name, schema version, a snapshot of the engine config."""
        self.write_json(DATASET_JSON, {"name": name, "schema_version": SCHEMA_VERSION, "config": config, **fields})

    def read_dataset_json(self) -> dict[str, Any]:
        return self.read_json(DATASET_JSON)

    def mark_done(self, stage: str, shard_id: str, config_hash: str, **info: Any) -> None:
        """Write the done marker of (stage, shard): call it LAST, after every output of the stage task."""
        self.write_json(
            self.done_path(stage, shard_id), {"stage": stage, "shard_id": shard_id, "config_hash": config_hash, **info}
        )

    def read_done(self, stage: str, shard_id: str) -> dict[str, Any] | None:
        path = self.done_path(stage, shard_id)
        if not self.exists(path):
            return None
        try:
            return self.read_json(path)
        except (ValueError, UnicodeDecodeError):
            return None  # a marker that cannot be read means "not done": the stage re-runs

    def stage_done(self, stage: str, shard_id: str, config_hash: str) -> bool:
        """True when (stage, shard) was completed with exactly this stage-config hash."""
        marker = self.read_done(stage, shard_id)
        if marker is None or marker.get("config_hash") != config_hash:
            return False
        return self.exists(self.stage_path(stage, shard_id))

    def done_shards(self, stage: str) -> list[str]:
        """Shard ids that carry a done marker for `stage` (whatever their config hash)."""
        names = self.listdir(f"{STAGES_DIR}/{stage}")
        return [name.removesuffix(DONE_SUFFIX) for name in names if name.endswith(DONE_SUFFIX)]

    # ------------------------------------------------------------ one writer per root

    @contextmanager
    def lock(self, command: str | None = None) -> Iterator[LockHolder]:
        """Hold the root's writer lock for the block; `RootLockedError` at once when another writer holds it."""
        key = self.url_of(LOCK_NAME)
        with _HELD_GUARD:
            held = _HELD.get(key)
            if held is not None:
                _HELD[key] = (held[0], held[1] + 1)
        if held is None:
            holder = self._acquire(LockHolder.current(command or " ".join(sys.argv)))
            with _HELD_GUARD:
                _HELD[key] = (holder, 1)
        else:
            holder = held[0]
        try:
            yield holder
        finally:
            with _HELD_GUARD:
                current, depth = _HELD[key]
                if depth > 1:
                    _HELD[key] = (current, depth - 1)
                else:
                    del _HELD[key]
                    self._release(current)

    def lock_holder(self) -> LockHolder | None:
        """Who holds the root's lock now (None when nobody does, or the lock file cannot be read)."""
        try:
            data = json.loads(self.read_bytes(LOCK_NAME).decode("utf-8"))
            return LockHolder(**{key: data[key] for key in LockHolder.__dataclass_fields__ if key in data})
        except (OSError, ValueError, TypeError, KeyError):
            return None

    def _acquire(self, me: LockHolder) -> LockHolder:
        self.fs.makedirs(self._base, exist_ok=True)
        for _ in range(20):
            if self._create_lock(me):
                self.remove_temp_files()
                return me
            holder = self.lock_holder()
            if holder is None:
                if not self.exists(LOCK_NAME):
                    continue  # released in between: try again
                if self._lock_age_s() < _UNREADABLE_LOCK_GRACE_S:
                    time.sleep(0.2)  # its writer is between create and write
                    continue
                self._take_over(None)
                continue
            if holder_is_alive(holder):
                raise RootLockedError(
                    f"dataset root {self.url} is in use by another writer: {holder.describe()}; wait for it to end "
                    f"or stop it (a lock left by a process that died on this host is taken over by itself; one from "
                    f"a host whose writer is gone: delete {self.url_of(LOCK_NAME)})"
                )
            self._take_over(holder)
        raise RootLockedError(f"could not take the writer lock of {self.url} ({self.url_of(LOCK_NAME)})")

    def _create_lock(self, me: LockHolder) -> bool:
        data = (json.dumps(asdict(me), indent=2, sort_keys=True) + "\n").encode("utf-8")
        path = self.full_path(LOCK_NAME)
        if self.is_local:
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            return True
        # Object stores: the store's own create-if-absent (S3 `PutObject` with `If-None-Match: *`, refused with
        # HTTP 412 when the key exists), so of two writers exactly one creates the lock.
        try:
            self.fs.pipe_file(path, data, mode="create")
        except FileExistsError:
            return False
        except OSError as error:
            if _precondition_failed(error):
                return False
            raise
        holder = self.lock_holder()  # read back: a store that ignored the condition shows the real winner
        return holder is not None and holder.token == me.token

    def _lock_age_s(self) -> float:
        try:
            modified = self.fs.modified(self.full_path(LOCK_NAME))
            return time.time() - modified.timestamp()
        except (OSError, NotImplementedError, AttributeError):
            return _UNREADABLE_LOCK_GRACE_S

    def _take_over(self, stale: LockHolder | None) -> None:
        """Remove a stale lock; of two processes taking over at once only one rename succeeds."""
        path = self.full_path(LOCK_NAME)
        if self.is_local:
            aside = f"{path}.stale-{uuid.uuid4().hex[:12]}"
            try:
                os.rename(path, aside)
            except FileNotFoundError:
                return
            moved = self._read_local(aside)
            if stale is not None and moved is not None and moved.get("token") != stale.token:
                # Between our read and our rename a live writer took the lock: give it back (link: never over a
                # lock a third process created meanwhile).
                with suppress(FileExistsError):
                    os.link(aside, path)
                os.remove(aside)
                return
            os.remove(aside)
            return
        # Object stores: delete only the stale lock we read; a lock another writer took since stays.
        current = self.lock_holder()
        if stale is None or (current is not None and current.token == stale.token):
            self.delete(LOCK_NAME)

    def remove_temp_files(self) -> list[str]:
        """Remove what interrupted writes left in a local root (`is_temp_name`); called by the next writer once it
        holds the lock, so no other writer of the root can be at work. The removed paths, relative to the root."""
        if not self.is_local:
            return []  # object stores: uploads become visible only when committed, so there are no temp names
        base = Path(self.full_path(""))
        removed = []
        for folder, _dirs, files in os.walk(base):
            for name in files:
                if is_temp_name(name):
                    with suppress(FileNotFoundError):
                        os.remove(os.path.join(folder, name))
                        removed.append(str((Path(folder) / name).relative_to(base)))
        return removed

    @staticmethod
    def _read_local(path: str) -> dict[str, Any] | None:
        try:
            return json.loads(Path(path).read_text())
        except (OSError, ValueError):
            return None

    def _release(self, me: LockHolder) -> None:
        holder = self.lock_holder()
        if holder is not None and holder.token == me.token:
            self.delete(LOCK_NAME)
