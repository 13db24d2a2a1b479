"""A dataset root: the storage layout of DESIGN.md section 5 over a local path or any fsspec URL, with atomic writes.

`DatasetRoot` names every path of the layout (dataset.json, sources/, shards/, stages/, rejects/, export/,
reports/) relative to the root, and reads and writes bytes and JSON there. Every write is atomic: on file systems
that can rename (local disk, `memory://`) the data goes to a temporary name in the same directory and is renamed
into place when complete; on object stores (s3, gcs, ...) a single upload only becomes visible when it is
committed on close, so the final name is written directly. A stage's output for a shard counts as done only when
its `<shard_id>.done.json` marker, written last, carries the stage-config hash the caller expects.
"""

from __future__ import annotations

import json
import posixpath
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import fsspec

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


class DatasetRoot:
    """One dataset root (`/data/run1`, `memory://tests/x`, `s3://bucket/prefix`); all paths are relative to it."""

    def __init__(self, url_or_path: str | Path | DatasetRoot) -> None:
        if isinstance(url_or_path, DatasetRoot):
            url_or_path = url_or_path.url
        self.url = str(url_or_path)
        self.fs, self._base = fsspec.core.url_to_fs(self.url)
        protocols = self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,)
        self._renames = bool(set(protocols) & _RENAMING_PROTOCOLS)
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

        `temp_name` (a sibling file name) overrides the default hidden temporary name, e.g. `train-000000.tar.tmp`.
        """
        final = self.full_path(relative)
        directory = posixpath.dirname(final)
        if directory:
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
                raise
            handle.close()
            return
        name = temp_name or f".{posixpath.basename(final)}.tmp-{uuid.uuid4().hex[:12]}"
        temp = posixpath.join(directory, name)
        handle = self.fs.open(temp, "wb")
        try:
            yield handle
            handle.close()
        except BaseException:
            handle.close()
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
