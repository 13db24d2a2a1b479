"""WebDataset export: a deterministic, validating tar shard writer and a fast reader of the shards it writes.

`ShardWriter.write(sample, frames)` validates the sample first (an invalid one becomes a `Reject`, counted by
reason) on the vision grid the writer was given (`grid`, required: `storage.samples.vision_grid(image_size,
patch_size)` of the model the shards are for, e.g. 27 for SigLIP at 384 px, 8 for the 64-px tiny model; it is
recorded in the stats), JPEG-encodes its frames as `00.jpg`, `01.jpg`, ... (one per `frame_indices` entry, then one per
`extra_frame_indices` entry: the processor's `frames` layout; at most 100, a sample needing more is rejected) and
adds them with the sample's `json` to `<split>-<NNNNNN>.tar`. A tar is written as `<split>-<NNNNNN>.tar.tmp` and
renamed when complete; beside it goes a `<split>-<NNNNNN>.parquet` index (key, task, counts, byte offset and size
of each sample) and, on close, `_stats.json` (samples per task, rejects per reason, bytes, grid). Tar headers carry
fixed mtime, owner and mode, so the same samples always give byte-identical tars. No pickle anywhere: frames are JPEG,
the rest is JSON, so plain `webdataset.WebDataset(url).decode("rgb8")` reads the shards. `iter_samples` reads them
back with `cv2.imdecode`.
"""

from __future__ import annotations

import io
import json
import mmap
import posixpath
import tarfile
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import ExitStack, suppress
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from engine.errors import RejectReason
from engine.types import Reject, Sample
from storage.root import DatasetRoot
from storage.samples import (
    MAX_SAMPLE_FRAMES,
    reject_for,
    require_grid,
    sample_from_json,
    sample_to_json,
    validate_sample,
)

STATS_NAME = "_stats.json"
INDEX_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("task", pa.string()),
        ("clip_id", pa.string()),
        ("num_objects", pa.int32()),
        ("num_frames", pa.int32()),
        ("offset", pa.int64()),  # byte offset of the sample's first tar header
        ("size", pa.int64()),  # bytes from that header to the end of the sample's last member
    ]
)


def frame_name(index: int) -> str:
    """Member extension of the `index`-th frame of a sample: `00.jpg`, `01.jpg`, ..."""
    return f"{index:02d}.jpg"


def _tar_info(name: str, size: int) -> tarfile.TarInfo:
    # Fixed metadata: identical inputs must give byte-identical tars on any machine and at any time.
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info


def encode_frames(frames: np.ndarray, quality: int = 90) -> list[bytes]:
    """JPEG bytes of RGB uint8 frames `[n, h, w, 3]` (OpenCV, loaded lazily)."""
    import cv2

    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
    out = []
    for frame in frames:
        ok, data = cv2.imencode(".jpg", cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2BGR), params)
        if not ok:
            raise ValueError("OpenCV failed to JPEG-encode a frame")
        out.append(data.tobytes())
    return out


def decode_jpeg(data: bytes) -> np.ndarray:
    """One JPEG to an RGB uint8 array `[h, w, 3]` (decoded straight to RGB: no extra colour pass)."""
    import cv2

    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR_RGB)
    if image is None:
        raise ValueError("undecodable JPEG")
    return image


class ShardWriter:
    """Writes validated samples into `<split>-<NNNNNN>.tar` shards of at most `max_samples_per_tar` samples.

    `root_or_dir`: a `DatasetRoot` (shards go to its `export/wds/`), or a directory path / fsspec URL (shards go
    right there). `grid`: the side of the vision feature grid masks are validated on, with no default (see
    `storage.samples.vision_grid`). Use as a context manager, or call `close()`; `close()` finishes the open tar
    and writes stats.
    """

    def __init__(
        self,
        root_or_dir: DatasetRoot | str | Path,
        split: str = "train",
        max_samples_per_tar: int = 1000,
        *,
        start_index: int = 0,
        jpeg_quality: int = 90,
        grid: int,
    ) -> None:
        if max_samples_per_tar <= 0:
            raise ValueError("max_samples_per_tar must be positive")
        if "." in split or "/" in split or not split:
            raise ValueError(f"split {split!r} must be a plain name")
        self.dir = root_or_dir.sub("export/wds") if isinstance(root_or_dir, DatasetRoot) else DatasetRoot(root_or_dir)
        self.split = split
        self.max_samples_per_tar = max_samples_per_tar
        self.jpeg_quality = jpeg_quality
        self.grid = require_grid(grid)
        self._next_index = start_index
        self._stack = ExitStack()
        self._tar: tarfile.TarFile | None = None
        self._tar_name = ""
        self._index_rows: list[dict[str, Any]] = []
        self._keys: set[str] = set()
        self.tars: list[str] = []
        self.samples_per_task: Counter[str] = Counter()
        self.rejects_per_reason: Counter[str] = Counter()
        self.bytes_written = 0
        self.frames_written = 0
        self._closed = False

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self._abort()

    # ------------------------------------------------------------ writing

    def write(self, sample: Sample, frames: np.ndarray) -> Reject | None:
        """Validate and add one sample with its frames (RGB uint8 `[n, h, w, 3]`, one per `stored_frame_indices`).

        Returns None when written, or the `Reject` (also counted in the stats) when the sample is invalid.
        """
        if self._closed:
            raise RuntimeError("ShardWriter is closed")
        problems = validate_sample(sample, grid=self.grid)
        problems.extend(self._frame_problems(sample, frames))
        if sample.key in self._keys:
            problems.append((RejectReason.MALFORMED_SAMPLE, f"duplicate sample key {sample.key!r}"))
        payload = ""
        try:
            payload = json.dumps(sample_to_json(sample), sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        except (TypeError, ValueError) as exc:  # e.g. a non-JSON value in `extra`
            problems.append((RejectReason.MALFORMED_SAMPLE, f"sample is not JSON-serialisable: {exc}"))
        if problems:
            reject = reject_for(sample, problems)
            self.rejects_per_reason[str(reject.reason)] += 1
            return reject
        members = [(f"{sample.key}.{frame_name(i)}", data) for i, data in enumerate(encode_frames(frames))]
        members.append((f"{sample.key}.json", payload.encode("utf-8")))
        tar = self._open_tar()
        offset = tar.offset
        for name, data in members:
            tar.addfile(_tar_info(name, len(data)), io.BytesIO(data))
        self._keys.add(sample.key)
        self._index_rows.append(
            {
                "key": sample.key,
                "task": sample.task,
                "clip_id": sample.clip_id,
                "num_objects": len(sample.objects),
                "num_frames": len(frames),
                "offset": offset,
                "size": tar.offset - offset,
            }
        )
        self.samples_per_task[sample.task] += 1
        self.frames_written += len(frames)
        if len(self._index_rows) >= self.max_samples_per_tar:
            self._finish_tar()
        return None

    @staticmethod
    def _frame_problems(sample: Sample, frames: Any) -> list[tuple[RejectReason, str]]:
        bad = RejectReason.MALFORMED_SAMPLE
        if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
            shape = getattr(frames, "shape", None)
            return [(bad, f"frames must be a uint8 array [n, h, w, 3], got {type(frames).__name__} {shape}")]
        if len(frames) > MAX_SAMPLE_FRAMES:
            return [(RejectReason.TOO_MANY_FRAMES, f"{len(frames)} frames; a shard holds at most {MAX_SAMPLE_FRAMES}")]
        if len(frames) == 0:
            return [(bad, "no frames")]
        expected = len(sample.frame_indices) + len(sample.extra_frame_indices)
        if len(frames) != expected:
            return [
                (
                    bad,
                    f"{len(frames)} frames but {len(sample.frame_indices)} frame indices"
                    f" + {len(sample.extra_frame_indices)} extra frame indices",
                )
            ]
        return []

    def _open_tar(self) -> tarfile.TarFile:
        if self._tar is None:
            name = f"{self.split}-{self._next_index:06d}"
            self._next_index += 1
            self._tar_name = name
            self._stack = ExitStack()
            handle = self._stack.enter_context(self.dir.open_atomic(f"{name}.tar", temp_name=f"{name}.tar.tmp"))
            tar = tarfile.open(fileobj=handle, mode="w|", format=tarfile.USTAR_FORMAT)  # noqa: SIM115  # stack closes it
            self._tar = self._stack.enter_context(tar)
        return self._tar

    def _finish_tar(self) -> None:
        if self._tar is None:
            return
        self._stack.close()  # end-of-archive blocks, then rename .tar.tmp -> .tar
        self._tar = None
        self.bytes_written += int(self.dir.fs.size(self.dir.full_path(f"{self._tar_name}.tar")))
        table = pa.Table.from_pylist(self._index_rows, schema=INDEX_SCHEMA)
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        self.dir.write_bytes(f"{self._tar_name}.parquet", buffer.getvalue())
        self.tars.append(f"{self._tar_name}.tar")
        self._index_rows = []

    def _abort(self) -> None:
        if self._tar is not None:
            error = RuntimeError("ShardWriter aborted")
            self._stack.__exit__(RuntimeError, error, None)  # removes the .tar.tmp, renames nothing
        self._tar = None
        self._closed = True

    def stats(self) -> dict[str, Any]:
        return {
            "split": self.split,
            "tars": list(self.tars),
            "samples": sum(self.samples_per_task.values()),
            "samples_per_task": dict(sorted(self.samples_per_task.items())),
            "rejects": sum(self.rejects_per_reason.values()),
            "rejects_per_reason": dict(sorted(self.rejects_per_reason.items())),
            "frames": self.frames_written,
            "bytes": self.bytes_written,
            "grid": self.grid,
        }

    def close(self) -> dict[str, Any]:
        """Finish the open tar and write `_stats.json` (merged per split with stats already there); return stats."""
        if self._closed:
            return self.stats()
        self._finish_tar()
        self._closed = True
        stats = self.stats()
        merged: dict[str, Any] = {"splits": {}}
        if self.dir.exists(STATS_NAME):
            try:
                merged = self.dir.read_json(STATS_NAME)
            except ValueError:
                merged = {"splits": {}}
        merged.setdefault("splits", {})[self.split] = stats
        self.dir.write_json(STATS_NAME, merged)
        return stats


# ---------------------------------------------------------------- reading


def _as_list(paths: str | Path | Iterable[str | Path]) -> list[str]:
    if isinstance(paths, str | Path):
        return [str(paths)]
    return [str(p) for p in paths]


def _octal(field: bytes) -> int:
    if field[:1] == b"\x80":  # GNU base-256 for sizes of 8 GiB and more
        return int.from_bytes(field[1:], "big")
    text = field.split(b"\0", 1)[0].strip()
    return int(text, 8) if text else 0


def _pax_path(data: bytes) -> str | None:
    # Records are "<length> <key>=<value>\n"; only the path matters for grouping members into samples.
    position = 0
    while position < len(data):
        space = data.index(b" ", position)
        length = int(data[position:space])
        key, _, value = data[space + 1 : position + length - 1].partition(b"=")
        if key == b"path":
            return value.decode("utf-8")
        position += length
    return None


_END_BLOCK = bytes(512)


def _checked_size(header: bytes) -> int:
    if _octal(header[148:156]) != sum(header[:148]) + 256 + sum(header[156:]):
        raise ValueError("corrupt tar header (checksum mismatch)")
    return _octal(header[124:136])


def _stream_entries(handle: BinaryIO) -> Iterator[tuple[bytes, bytes]]:
    # (header, payload) of every tar entry, read sequentially from a file object.
    while True:
        header = handle.read(512)
        if len(header) < 512 or header == _END_BLOCK:
            return
        size = _checked_size(header)
        payload = handle.read(size)
        if len(payload) < size:
            raise ValueError("truncated tar member")
        if size % 512:
            handle.read(512 - size % 512)
        yield header, payload


def _buffer_entries(view: memoryview) -> Iterator[tuple[bytes, memoryview]]:
    # (header, payload) of every tar entry of a tar in memory or memory-mapped; payloads are views, not copies.
    position, end = 0, len(view)
    while position + 512 <= end:
        header = bytes(view[position : position + 512])
        if header == _END_BLOCK:
            return
        size = _checked_size(header)
        start = position + 512
        if start + size > end:
            raise ValueError("truncated tar member")
        yield header, view[start : start + size]
        position = start + -(-size // 512) * 512


def _files(entries: Iterable[tuple[bytes, Any]]) -> Iterator[tuple[str, Any]]:
    # The regular files among the entries, named by their ustar prefix, GNU long name or pax path when present.
    long_name: str | None = None
    for header, payload in entries:
        kind = header[156:157]
        if kind in (b"L", b"x"):
            data = bytes(payload)
            long_name = data.rstrip(b"\0").decode("utf-8") if kind == b"L" else _pax_path(data)
            continue
        if kind not in (b"0", b"\0", b"7"):
            long_name = None
            continue  # directories, links, global pax headers: no sample data
        name = long_name
        if name is None:
            name = header[:100].split(b"\0", 1)[0].decode("utf-8")
            prefix = header[345:500].split(b"\0", 1)[0]
            if header[257:262] == b"ustar" and prefix:
                name = prefix.decode("utf-8") + "/" + name
        long_name = None
        yield name, payload


def iter_tar_members(handle: BinaryIO) -> Iterator[tuple[str, bytes]]:
    """(name, payload) of every regular file of a tar stream, read sequentially.

    A small parser of the ustar format (plus GNU long names and pax paths, which other tools may write) instead of
    `tarfile`, whose per-member overhead was a tenth of the reading time in benchmarks/shard_io.py.
    """
    return _files(_stream_entries(handle))


def _grouped(members: Iterable[tuple[str, Any]]) -> Iterator[dict[str, Any]]:
    # WebDataset's rule: consecutive members sharing the name up to the first dot form one sample.
    current: dict[str, Any] | None = None
    for name, payload in members:
        key, _, extension = posixpath.basename(name).partition(".")
        if current is None or current["__key__"] != key:
            if current is not None:
                yield current
            current = {"__key__": key}
        current[extension] = payload
    if current is not None:
        yield current


def _open_binary(path: str | Path) -> BinaryIO:
    # Plain local files skip fsspec's wrapper (a measurable share of read time on many small members).
    text = str(path)
    if "://" not in text:
        return open(text, "rb")  # noqa: SIM115  # the caller's with-block closes it
    import fsspec

    return fsspec.open(text, "rb").open()


def _members(path: str | Path) -> Iterator[tuple[str, Any]]:
    # Local tars are memory-mapped: no read call and no copy per member, payloads are views of the page cache.
    # Other URLs (and files that cannot be mapped) are streamed through fsspec with bytes payloads.
    text = str(path)
    if "://" in text:
        with _open_binary(text) as handle:
            yield from iter_tar_members(handle)
        return
    with open(text, "rb") as handle:
        try:
            mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        except (ValueError, OSError):  # empty file or not mappable (a pipe, some network file systems)
            yield from iter_tar_members(handle)
            return
    if hasattr(mapped, "madvise"):
        mapped.madvise(mmap.MADV_SEQUENTIAL)
    try:
        yield from _files(_buffer_entries(memoryview(mapped)))
    finally:
        with suppress(BufferError):  # a caller still holds a payload view: unmapped once that is collected
            mapped.close()


def read_raw(path: str | Path) -> Iterator[dict[str, Any]]:
    """Raw samples of one tar (local path or fsspec URL): `{"__key__": key, "json": bytes, "00.jpg": bytes, ...}`."""
    yield from _grouped((name, bytes(payload)) for name, payload in _members(path))


def read_raw_bytes(data: bytes) -> Iterator[dict[str, Any]]:
    """Raw samples of a tar held in memory (see `read_raw`)."""
    yield from _grouped((name, bytes(payload)) for name, payload in _files(_buffer_entries(memoryview(data))))


def decode_frames(jpegs: Sequence[bytes | memoryview]) -> list[np.ndarray]:
    """RGB uint8 frames `[h, w, 3]` of JPEGs (bytes or memoryviews); frames of one size share one `[n, h, w, 3]` block.

    One block per sample instead of one allocation per frame: with separate frame-sized arrays the allocator
    handed memory back to the OS between samples and page faults cost up to a third of the read time in
    benchmarks/shard_io.py on a loaded machine.
    """
    import cv2

    frames: list[np.ndarray] = []
    block: np.ndarray | None = None
    for index, data in enumerate(jpegs):
        image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR_RGB)
        if image is None:
            raise ValueError("undecodable JPEG")
        if block is None:
            block = np.empty((len(jpegs), *image.shape), dtype=image.dtype)
        if image.shape == block.shape[1:]:
            block[index] = image
            image = block[index]
        frames.append(image)
    return frames


def decode_raw(raw: dict[str, Any]) -> tuple[Sample, list[np.ndarray]]:
    """A raw sample from `read_raw` as the `Sample` and its RGB frames in order (`sample.stored_frame_indices`)."""
    sample = sample_from_json(json.loads(bytes(raw["json"])))
    return sample, decode_frames([raw[name] for name in sorted(name for name in raw if name.endswith(".jpg"))])


def iter_samples(paths: str | Path | Iterable[str | Path]) -> Iterator[tuple[Sample, list[np.ndarray]]]:
    """Every sample of the given tars, in order, with its decoded RGB uint8 frames."""
    for path in _as_list(paths):
        for raw in _grouped(_members(path)):
            yield decode_raw(raw)


def read_index(path: str | Path) -> list[dict[str, Any]]:
    """The Parquet index beside a tar (`x.tar` -> `x.parquet`), as rows."""
    import fsspec

    index_path = str(path).removesuffix(".tar") + ".parquet"
    with fsspec.open(index_path, "rb") as handle:
        return pq.read_table(handle).to_pylist()


def read_sample_at(path: str | Path, offset: int, size: int) -> tuple[Sample, list[np.ndarray]]:
    """Random access: the sample stored at (`offset`, `size`) of a tar, as given by its index."""
    import fsspec

    with fsspec.open(str(path), "rb") as handle:
        handle.seek(offset)
        chunk = handle.read(size)
    raws = list(read_raw_bytes(chunk + b"\0" * 1024))
    if len(raws) != 1:
        raise ValueError(f"{path} at {offset}: expected one sample, found {len(raws)}")
    return decode_raw(raws[0])


def list_tars(root_or_dir: DatasetRoot | str | Path, split: str | None = None) -> list[str]:
    """URLs (or local paths) of the finished tars of a dataset root's `export/wds/` or of a directory."""
    directory = root_or_dir.sub("export/wds") if isinstance(root_or_dir, DatasetRoot) else DatasetRoot(root_or_dir)
    prefix = f"{split}-" if split else ""
    return [directory.url_of(n) for n in directory.listdir() if n.endswith(".tar") and n.startswith(prefix)]
