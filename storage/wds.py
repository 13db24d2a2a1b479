"""WebDataset export: a deterministic, validating tar shard writer and a fast reader of the shards it writes.

Two record layouts, both plain WebDataset samples (members sharing a key up to the first dot):
- a *clip record* (`ShardWriter.write_clip`, what the engine's export writes): the frames of one clip ONCE,
  `<key>.00.jpg`, `<key>.01.jpg`, ... (every distinct frame any of its samples stores, ascending frame index), and
  `<key>.json` = `{"format": "videorefer-clip", "clip_id", "video", "frames": [frame index of 00.jpg, 01.jpg,
  ...], "samples": [sample json, ...]}`: the detailed, short and QA samples of a clip share their JPEGs instead of
  carrying three copies. A sample's stored frames (`frame_indices` then `extra_frame_indices`) are the record's
  JPEGs at the positions of those indices in `frames` (`record_samples` does the lookup);
- a *sample record* (`ShardWriter.write`, one training sample: its json and one JPEG per stored frame index), the
  layout every shard had before clip records; all readers here and in `model.training.loader` read both.

`ShardWriter` validates every sample first (an invalid one becomes a `Reject`, counted by reason) on the vision
grid it was given (`grid`, required: `storage.samples.vision_grid(image_size, patch_size)` of the model the shards
are for, e.g. 27 for SigLIP at 384 px, 8 for the 64-px tiny model; it is recorded in the stats), JPEG-encodes the
frames (at most 100 per record: a clip needing more is cut into several records, a sample needing more is
rejected) and adds them to `<split>-<NNNNNN>.tar` (numbered from `start_index`). A tar is written as
`<split>-<NNNNNN>.tar.tmp` and renamed when complete; beside it goes a `<split>-<NNNNNN>.parquet` index (one row
per training sample: key, task, counts, its record's key and the byte offset and size of that record) and, on
close, `_stats.json` (per writer, keyed by its first tar, and summed per split: samples per task, rejects per
reason, records, frames, bytes, grid). Tar headers carry fixed mtime, owner and mode, so the same samples always
give byte-identical tars. No pickle anywhere: frames are JPEG, the rest is JSON, so plain
`webdataset.WebDataset(url).decode("rgb8")` reads every record. `iter_samples` reads training samples back with
`cv2.imdecode`, each JPEG decoded once per record.
"""

from __future__ import annotations

import io
import json
import mmap
import posixpath
import tarfile
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
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
        ("offset", pa.int64()),  # byte offset of the first tar header of the sample's record
        ("size", pa.int64()),  # bytes from that header to the end of the record's last member
        ("record", pa.string()),  # the record's key: the clip's, or the sample's own for a sample record
    ]
)
CLIP_FORMAT = "videorefer-clip"


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


def bounded_size(height: int, width: int, image_size: int, *, max_aspect: float = 4.0) -> tuple[int, int]:
    """(height, width) a frame is stored at for a vision tower of `image_size`: aspect ratio kept, never enlarged.

    The processor stretches every frame to `image_size` x `image_size` (the release's `image_aspect_ratio
    'square'`: SigLIP's `preprocess` resizes to 384 x 384, no pad, no crop), so a frame whose short side is
    `image_size` keeps every pixel row and column the processor samples from; the short side is scaled down to
    `image_size` (a smaller frame is stored as it is) and the long side follows, bounded by `max_aspect` times
    `image_size` (a panorama is scaled further, so no stored frame is wider than that).
    """
    height, width = int(height), int(width)
    short, long = min(height, width), max(height, width)
    scale = min(1.0, image_size / short, max_aspect * image_size / long)
    if scale >= 1.0:
        return height, width
    return max(1, round(height * scale)), max(1, round(width * scale))


def bound_frames(frames: np.ndarray, image_size: int) -> np.ndarray:
    """RGB uint8 frames `[n, h, w, 3]` at `bounded_size`, resized with the processor's own filter (Pillow bicubic).

    The same filter as `model.processing.VideoReferProcessor.preprocess_frames`, so the stored frame stretched
    to the square at training time is what the model sees of the full frame at inference, up to JPEG loss.
    """
    array = np.asarray(frames)
    target = bounded_size(array.shape[1], array.shape[2], image_size)
    if target == tuple(array.shape[1:3]):
        return array
    from PIL import Image  # lazily: only resizing needs Pillow

    out = np.empty((len(array), *target, 3), dtype=np.uint8)
    for i, frame in enumerate(array):
        out[i] = np.asarray(Image.fromarray(frame).resize((target[1], target[0]), Image.Resampling.BICUBIC))
    return out


class ShardWriter:
    """Writes validated samples into `<split>-<NNNNNN>.tar` shards of at most `max_samples_per_tar` samples.

    `root_or_dir`: a `DatasetRoot` (shards go to its `export/wds/`), or a directory path / fsspec URL (shards go
    right there). `grid`: the side of the vision feature grid masks are validated on, with no default (see
    `storage.samples.vision_grid`). `max_samples_per_tar=None`: one tar, however many samples; `empty_tar`: write
    the first tar (an empty one) even when no sample is written, so a numbered tar set has no gaps. A record is
    never split over two tars. Use as a context manager, or call `close()`; `close()` finishes the open tar and
    writes stats.
    """

    def __init__(
        self,
        root_or_dir: DatasetRoot | str | Path,
        split: str = "train",
        max_samples_per_tar: int | None = 1000,
        *,
        start_index: int = 0,
        jpeg_quality: int = 90,
        grid: int,
        empty_tar: bool = False,
    ) -> None:
        if max_samples_per_tar is not None and max_samples_per_tar <= 0:
            raise ValueError("max_samples_per_tar must be positive")
        if "." in split or "/" in split or not split:
            raise ValueError(f"split {split!r} must be a plain name")
        self.dir = root_or_dir.sub("export/wds") if isinstance(root_or_dir, DatasetRoot) else DatasetRoot(root_or_dir)
        self.split = split
        self.max_samples_per_tar = max_samples_per_tar
        self.jpeg_quality = jpeg_quality
        self.grid = require_grid(grid)
        self.empty_tar = empty_tar
        self._next_index = start_index
        self._stack = ExitStack()
        self._tar: tarfile.TarFile | None = None
        self._tar_name = ""
        self._index_rows: list[dict[str, Any]] = []
        self._keys: set[str] = set()
        self._record_keys: set[str] = set()
        self.tars: list[str] = []
        self.samples_per_task: Counter[str] = Counter()
        self.rejects_per_reason: Counter[str] = Counter()
        self.bytes_written = 0
        self.frames_written = 0
        self.records_written = 0
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
        """Validate and add one sample record with its frames (RGB uint8 `[n, h, w, 3]`, one per
        `stored_frame_indices` entry, repeats included).

        Returns None when written, or the `Reject` (also counted in the stats) when the sample is invalid.
        """
        problems = self._problems(sample)
        problems.extend(self._frame_problems(sample, frames))
        if sample.key in self._record_keys:
            problems.append((RejectReason.MALFORMED_SAMPLE, f"duplicate record key {sample.key!r}"))
        payload = self._payload(sample, problems)
        if problems:
            return self._reject(sample, problems)
        members = [(f"{sample.key}.{frame_name(i)}", data) for i, data in enumerate(self._encode(frames))]
        members.append((f"{sample.key}.json", payload))
        self._add_record(sample.key, members, [sample], [len(frames)])
        return None

    def write_clip(
        self, samples: Sequence[Sample], frames: Mapping[int, np.ndarray], *, key: str | None = None
    ) -> list[Reject]:
        """Validate the samples of one clip and add the valid ones as one clip record (see the module docstring).

        `frames`: the clip's RGB uint8 frames `[h, w, 3]` (all of one size) by frame index, at least every index
        a sample stores. `key`: the record's key (default: the samples' `clip_id`). Returns the rejects (also
        counted in the stats); an empty list when every sample was written.
        """
        rejects: list[Reject] = []
        good: list[tuple[Sample, bytes]] = []
        shapes = {getattr(f, "shape", None) for f in frames.values()}
        dtypes = {getattr(f, "dtype", None) for f in frames.values()}
        frames_bad = (len(shapes) > 1 or dtypes != {np.dtype(np.uint8)}
                      or any(s is None or len(s) != 3 or s[-1] != 3 for s in shapes))
        for sample in samples:
            problems = self._problems(sample)
            wanted = list(dict.fromkeys(int(i) for i in sample.stored_frame_indices))
            missing = [i for i in wanted if i not in frames]
            if frames_bad:
                got = sorted(map(str, shapes))
                problems.append((RejectReason.MALFORMED_SAMPLE, f"frames must be uint8 [h, w, 3], one size: {got}"))
            elif missing:
                problems.append((RejectReason.MALFORMED_SAMPLE, f"no frame given for stored frame indices {missing}"))
            elif not wanted:
                problems.append((RejectReason.MALFORMED_SAMPLE, "no frames"))
            elif len(wanted) > MAX_SAMPLE_FRAMES:
                problems.append((RejectReason.TOO_MANY_FRAMES,
                                 f"{len(wanted)} frames; a shard holds at most {MAX_SAMPLE_FRAMES}"))
            if any(s.key == sample.key for s, _ in good):
                problems.append((RejectReason.MALFORMED_SAMPLE, f"duplicate sample key {sample.key!r}"))
            payload = self._payload(sample, problems)
            if problems:
                rejects.append(self._reject(sample, problems))
            else:
                good.append((sample, payload))
        if not good:
            return rejects
        base = key or good[0][0].clip_id
        # Records of at most MAX_SAMPLE_FRAMES distinct frames (two-digit names): samples are taken in order and a
        # new record starts when the next sample's frames would not fit (the engine's clips always fit one).
        groups: list[list[tuple[Sample, bytes]]] = [[]]
        union: set[int] = set()
        for sample, payload in good:
            needed = union | {int(i) for i in sample.stored_frame_indices}
            if len(needed) > MAX_SAMPLE_FRAMES and groups[-1]:
                groups.append([])
                needed = {int(i) for i in sample.stored_frame_indices}
            groups[-1].append((sample, payload))
            union = needed
        for number, group in enumerate(groups):
            record_key = base if number == 0 else f"{base}_{number}"
            if record_key in self._record_keys or "." in record_key or "/" in record_key:
                problem = [(RejectReason.MALFORMED_SAMPLE, f"bad or duplicate record key {record_key!r}")]
                rejects.extend(self._reject(sample, problem) for sample, _ in group)
                continue
            indices = sorted({int(i) for sample, _ in group for i in sample.stored_frame_indices})
            jpegs = self._encode(np.stack([frames[i] for i in indices]))
            head = (b'{"clip_id":' + _json_bytes(group[0][0].clip_id) + b',"format":"' + CLIP_FORMAT.encode()
                    + b'","frames":' + _json_bytes(indices) + b',"samples":[')
            payload = head + b",".join(p for _, p in group) + b'],"video":' + _json_bytes(group[0][0].video_uri) + b"}"
            members = [(f"{record_key}.{frame_name(i)}", data) for i, data in enumerate(jpegs)]
            members.append((f"{record_key}.json", payload))
            self._add_record(record_key, members, [s for s, _ in group],
                             [len(s.stored_frame_indices) for s, _ in group])
        return rejects

    def _problems(self, sample: Sample) -> list[tuple[RejectReason, str]]:
        if self._closed:
            raise RuntimeError("ShardWriter is closed")
        problems = validate_sample(sample, grid=self.grid)
        if sample.key in self._keys:
            problems.append((RejectReason.MALFORMED_SAMPLE, f"duplicate sample key {sample.key!r}"))
        return problems

    @staticmethod
    def _payload(sample: Sample, problems: list[tuple[RejectReason, str]]) -> bytes:
        try:
            return _json_bytes(sample_to_json(sample))
        except (TypeError, ValueError) as exc:  # e.g. a non-JSON value in `extra`
            problems.append((RejectReason.MALFORMED_SAMPLE, f"sample is not JSON-serialisable: {exc}"))
            return b""

    def _reject(self, sample: Sample, problems: Sequence[tuple[RejectReason, str]]) -> Reject:
        reject = reject_for(sample, problems)
        self.rejects_per_reason[str(reject.reason)] += 1
        return reject

    def _encode(self, frames: np.ndarray) -> list[bytes]:
        return encode_frames(frames, self.jpeg_quality)

    def _add_record(
        self,
        record_key: str,
        members: Sequence[tuple[str, bytes]],
        samples: Sequence[Sample],
        frame_counts: Sequence[int],
    ) -> None:
        tar = self._open_tar()
        offset = tar.offset
        fileobj = tar.fileobj
        for name, data in members:
            # Header and payload written directly (the bytes `tarfile.addfile` writes, without its per-member
            # copy through a BytesIO): JPEG members are most of an export's bytes.
            info = _tar_info(name, len(data))
            header = info.tobuf(tarfile.USTAR_FORMAT, tarfile.ENCODING, "surrogateescape")
            fileobj.write(header)
            fileobj.write(data)
            padding = -len(data) % tarfile.BLOCKSIZE
            if padding:
                fileobj.write(_END_BLOCK[:padding])
            tar.offset += len(header) + len(data) + padding
        size = tar.offset - offset
        self._record_keys.add(record_key)
        for sample, count in zip(samples, frame_counts, strict=True):
            self._keys.add(sample.key)
            self._index_rows.append(
                {
                    "key": sample.key,
                    "task": sample.task,
                    "clip_id": sample.clip_id,
                    "num_objects": len(sample.objects),
                    "num_frames": count,
                    "offset": offset,
                    "size": size,
                    "record": record_key,
                }
            )
            self.samples_per_task[sample.task] += 1
        self.frames_written += sum(name.endswith(".jpg") for name, _ in members)
        self.records_written += 1
        if self.max_samples_per_tar is not None and len(self._index_rows) >= self.max_samples_per_tar:
            self._finish_tar()

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
            "records": self.records_written,
            "frames": self.frames_written,
            "bytes": self.bytes_written,
            "grid": self.grid,
        }

    def close(self) -> dict[str, Any]:
        """Finish the open tar and write `_stats.json` (this writer's figures under `writers`, keyed by its first
        tar, replacing an earlier writer of that tar; `splits` summed over the writers of each split); return stats.
        """
        if self._closed:
            return self.stats()
        if self.empty_tar and not self.tars and self._tar is None:
            self._open_tar()
        self._finish_tar()
        self._closed = True
        stats = self.stats()
        merged: dict[str, Any] = {}
        if self.dir.exists(STATS_NAME):
            try:
                merged = self.dir.read_json(STATS_NAME)
            except ValueError:
                merged = {}
        writers = merged.setdefault("writers", {})
        if stats["tars"]:
            writers[stats["tars"][0]] = stats
        merged.setdefault("splits", {})[self.split] = _summed(
            [w for w in writers.values() if w.get("split") == self.split] or [stats], self.split
        )
        self.dir.write_json(STATS_NAME, dict(sorted(merged.items())))
        return stats


def write_split_stats(folder: DatasetRoot, split: str, writers: Sequence[Mapping[str, Any]]) -> None:
    """Rewrite the `_stats.json` of `folder` with exactly `writers` (each a `ShardWriter.stats()`) for `split`,
    keeping the writers of other splits: how an export repairs a merge lost to writers in parallel processes
    (each `close` is a read-modify-write of the one file)."""
    merged: dict[str, Any] = {}
    if folder.exists(STATS_NAME):
        with suppress(ValueError):
            merged = folder.read_json(STATS_NAME)
    kept = {tar: w for tar, w in (merged.get("writers") or {}).items() if w.get("split") != split}
    kept |= {w["tars"][0]: dict(w) for w in writers if w.get("tars")}
    splits = {name: v for name, v in (merged.get("splits") or {}).items() if name != split}
    if writers:
        splits[split] = _summed(list(writers), split)
    value = {"splits": dict(sorted(splits.items())), "writers": dict(sorted(kept.items()))}
    if value != merged:  # the same figures: nothing to write
        folder.write_json(STATS_NAME, value)


def _summed(writers: Sequence[Mapping[str, Any]], split: str) -> dict[str, Any]:
    # The figures of one split over its writers, in the shape a single writer's `stats()` has.
    samples: Counter[str] = Counter()
    rejects: Counter[str] = Counter()
    for figures in writers:
        samples.update(figures.get("samples_per_task") or {})
        rejects.update(figures.get("rejects_per_reason") or {})
    ordered = sorted(writers, key=lambda w: (w.get("tars") or [""])[0])
    return {
        "split": split,
        "tars": [tar for w in ordered for tar in w.get("tars") or ()],
        "samples": sum(samples.values()),
        "samples_per_task": dict(sorted(samples.items())),
        "rejects": sum(rejects.values()),
        "rejects_per_reason": dict(sorted(rejects.items())),
        "records": sum(int(w.get("records") or 0) for w in writers),
        "frames": sum(int(w.get("frames") or 0) for w in writers),
        "bytes": sum(int(w.get("bytes") or 0) for w in writers),
        "grid": ordered[-1].get("grid") if ordered else None,
    }


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


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


def record_samples(raw: Mapping[str, Any]) -> list[tuple[dict[str, Any], list[Any]]]:
    """The training samples of one raw record: (sample json, its frames' JPEG payloads in stored order) each.

    A clip record's samples take their JPEGs from the record's `frames` list (one member per distinct frame
    index; the same payload objects are shared, not copied); a sample record is its json and its JPEGs in name
    order. Raises ValueError for a record whose json is missing or names a frame it does not hold.
    """
    if "json" not in raw:
        raise ValueError(f"record {raw.get('__key__')!r} has no json member")
    value = json.loads(bytes(raw["json"]))
    jpegs = [raw[name] for name in sorted(name for name in raw if name.endswith(".jpg"))]
    if not (isinstance(value, dict) and isinstance(value.get("samples"), list)):
        return [(value, jpegs)]
    position = {int(index): number for number, index in enumerate(value.get("frames") or ())}
    if len(position) != len(jpegs):
        raise ValueError(f"record {raw.get('__key__')!r} lists {len(position)} frames but holds {len(jpegs)} JPEGs")
    out = []
    for sample in value["samples"]:
        stored = [*sample.get("frame_indices", ()), *sample.get("extra_frame_indices", ())]
        missing = [i for i in stored if int(i) not in position]
        if missing:
            raise ValueError(f"sample {sample.get('key')!r}: its record holds no frame {missing}")
        out.append((sample, [jpegs[position[int(i)]] for i in stored]))
    return out


def decode_record(raw: Mapping[str, Any]) -> list[tuple[Sample, list[np.ndarray]]]:
    """Every training sample of a raw record with its RGB frames in stored order; each JPEG is decoded once."""
    pairs = record_samples(raw)
    distinct = list({id(data): data for _, jpegs in pairs for data in jpegs}.values())
    decoded = dict(zip((id(d) for d in distinct), decode_frames(distinct), strict=True))
    return [(sample_from_json(value), [decoded[id(d)] for d in jpegs]) for value, jpegs in pairs]


def decode_raw(raw: dict[str, Any]) -> tuple[Sample, list[np.ndarray]]:
    """A raw record from `read_raw` holding ONE training sample, as the `Sample` and its RGB frames in order."""
    samples = decode_record(raw)
    if len(samples) != 1:
        raise ValueError(f"record {raw.get('__key__')!r} holds {len(samples)} samples; use decode_record")
    return samples[0]


def iter_samples(paths: str | Path | Iterable[str | Path]) -> Iterator[tuple[Sample, list[np.ndarray]]]:
    """Every training sample of the given tars, in order, with its decoded RGB uint8 frames (both layouts)."""
    for path in _as_list(paths):
        for raw in _grouped(_members(path)):
            yield from decode_record(raw)


def count_samples(paths: str | Path | Iterable[str | Path]) -> int:
    """Training samples in the tars, from their json members only (no JPEG is decoded)."""
    total = 0
    for path in _as_list(paths):
        for name, payload in _members(path):
            if name.endswith(".json"):
                value = json.loads(bytes(payload))
                samples = value.get("samples") if isinstance(value, dict) else None
                total += len(samples) if isinstance(samples, list) else 1
    return total


def read_index(path: str | Path) -> list[dict[str, Any]]:
    """The Parquet index beside a tar (`x.tar` -> `x.parquet`), as rows."""
    import fsspec

    index_path = str(path).removesuffix(".tar") + ".parquet"
    with fsspec.open(index_path, "rb") as handle:
        return pq.read_table(handle).to_pylist()


def read_sample_at(
    path: str | Path, offset: int, size: int, *, key: str | None = None
) -> tuple[Sample, list[np.ndarray]]:
    """Random access: the sample `key` of the record stored at (`offset`, `size`) of a tar, as given by its index
    (`key` may be left out when the record holds one sample)."""
    import fsspec

    with fsspec.open(str(path), "rb") as handle:
        handle.seek(offset)
        chunk = handle.read(size)
    raws = list(read_raw_bytes(chunk + b"\0" * 1024))
    if len(raws) != 1:
        raise ValueError(f"{path} at {offset}: expected one record, found {len(raws)}")
    pairs = record_samples(raws[0])
    chosen = [i for i, (value, _) in enumerate(pairs) if key is None or value.get("key") == key]
    if len(chosen) != 1:
        raise ValueError(f"{path} at {offset}: {len(pairs)} samples, none or several match key {key!r}")
    value, jpegs = pairs[chosen[0]]
    return sample_from_json(value), decode_frames(jpegs)


def list_tars(root_or_dir: DatasetRoot | str | Path, split: str | None = None) -> list[str]:
    """URLs (or local paths) of the finished tars of a dataset root's `export/wds/` or of a directory."""
    directory = root_or_dir.sub("export/wds") if isinstance(root_or_dir, DatasetRoot) else DatasetRoot(root_or_dir)
    prefix = f"{split}-" if split else ""
    return [directory.url_of(n) for n in directory.listdir() if n.endswith(".tar") and n.startswith(prefix)]
