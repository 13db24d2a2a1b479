"""The training data loader: WebDataset shards -> encoded, collated micro-batches, deterministic and resumable.

Each (process rank, DataLoader worker) pair is one *slot*. Per data source (a shard glob of the recipe's
mixture) and per epoch, the shard list is shuffled with the seed and split over the slots (by node, then by
worker); with fewer shards than slots, every slot reads all shards and keeps every n-th sample instead, so
no sample is duplicated. Each slot keeps a seeded shuffle buffer of *raw* samples (bytes, nothing decoded),
draws from its sources by weight with a counter-based RNG, decides the sample's single- or multi-frame mode, and
only then decodes the pre-sampled JPEG frames (OpenCV) and lets the processor turn the json (conversations,
RLE masks) and frames into tensors. Micro-batches are collated inside the workers. Frames (`plan_frames`): a
sample stores its video frames (`frame_indices`) then its extra mask frames (`extra_frame_indices`); when the
recipe's `frames_per_sample` differs from the stored video frames, the release's uniform rule picks among them
and every mask frame left out becomes an extra frame, so no mask is ever dropped.

Mode (one place decides, never two coins): a sample that records its mode (`mode`, or `extra.mode` as the
export writes it) is encoded in that mode. The export already drew it with `SamplingConfig.multi_frame_ratio`
and kept only that mode's masks, so drawing again would turn half of the multi-frame samples single-frame.
The recipe's `DataMixture.multi_frame_ratio` draws the mode, per sample key and epoch, only for samples that
record none (e.g. imported 700K items with several annotated frames); with the ratio None those are left to
the processor (single-frame when every object has one mask frame).

Resume: every batch carries its slot's `SlotPosition` (per source: epoch and raw samples consumed in it, plus
the mixer's draw count). The training loop keeps the position of the last batch it used from each slot and
saves them with its checkpoint; a loader built with those positions replays each slot's current epoch up to
the saved count without decoding and continues exactly where the run stopped, in the same worker order.

A sample that cannot be decoded or encoded is counted and logged with its key and reason (never dropped
silently); its record travels with the next batch to the loop, which writes it to `<out>/rejects.jsonl`. A few
bad samples among good ones are just counted; a slot that cannot make a batch fails with `NoUsableSamplesError`
(a `ConfigError`, naming the shards and the reasons) once `DataMixture.max_consecutive_bad` samples in a row
failed, or once every source made a full pass without one good sample (every sample of every shard the slot
reads failed since that source's last good one), instead of epoch-looping forever.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import json
import logging
import random
import tarfile
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from engine.errors import ConfigError, InvalidSampleError, RejectReason
from engine.ids import stable_hash
from model.training.recipes import DataMixture, DataSource

LOGGER = logging.getLogger(__name__)
_FROZEN = {"frozen": True, "slots": True, "kw_only": True}
_FRAME_SUFFIX = ".jpg"
MODES = ("single", "multi")


class NoUsableSamplesError(ConfigError):
    """A loader slot found no usable sample: too many failed in a row, or every source a full pass without one.

    A `ConfigError` (the data given cannot train the model); its message names the shards and the reasons.
    Constructed from the message alone, so a DataLoader worker's error re-raises with this type in the trainer.
    """


class SampleEncoder(Protocol):
    """What the loader needs from the processor (`model.processing.VideoReferProcessor` is one).

    The training loop hands it a processor made with `do_normalize=False` (and `do_resize=False` on a GPU), so
    frames leave the workers as uint8 and the trainer's `normalize_pixels` finishes them on its device.
    """

    def encode_wds(self, sample_json: dict, frames: Any, *, mode: str | None = None) -> dict: ...

    def collate(self, items: list[dict]) -> dict: ...


# ---------------------------------------------------------------- shards


def expand_shards(pattern: str) -> list[str]:
    """The sorted .tar files a pattern names: whitespace-separated globs, each with optional {a,b} / {00..09};
    a URL pattern (`s3://b/x/export/wds/train-{000000..000003}.tar`) names the store's objects."""
    import braceexpand

    from engine.remote import is_url, remote_glob

    paths: set[str] = set()
    for part in pattern.split():
        for expanded in braceexpand.braceexpand(part):
            if is_url(expanded):
                paths.update(remote_glob(expanded))
                continue
            matches = glob.glob(expanded)
            if not matches and Path(expanded).is_file():
                matches = [expanded]
            paths.update(matches)
    if not paths:
        raise ConfigError(f"no shards match {pattern!r}")
    return sorted(paths)


_CLIP_RECORD = b'"format":"videorefer-clip","frames":'  # unescaped: only a clip record's own keys read so


def read_tar_records(path: str) -> Iterator[dict[str, Any]]:
    """Raw records of one WebDataset tar, in file order: {"__key__", "__url__", extension: bytes, ...}.

    The key is the file name up to its first dot (WebDataset's rule); members of one record are contiguous.
    """
    current: dict[str, Any] | None = None
    with _open_tar(path, "r|*") as archive:
        for member in archive:
            if not member.isreg() or "/" in member.name and member.name.rsplit("/", 1)[1].startswith("__"):
                continue
            directory, _, base = member.name.rpartition("/")
            key, dot, extension = base.partition(".")
            if not dot:
                continue
            key = f"{directory}/{key}" if directory else key
            data = archive.extractfile(member).read()
            if current is not None and current["__key__"] != key:
                yield current
                current = None
            if current is None:
                current = {"__key__": key, "__url__": path}
            current[extension.lower()] = data
    if current is not None:
        yield current


@contextlib.contextmanager
def _open_tar(path: str, mode: str) -> Iterator[tarfile.TarFile]:
    """A tar read from a local path, or streamed from a URL by range requests (bounded read-ahead)."""
    from engine.remote import is_url, open_remote

    if not is_url(path):
        with tarfile.open(path, mode=mode) as archive:
            yield archive
        return
    with open_remote(path) as handle, tarfile.open(fileobj=handle, mode=mode) as archive:
        yield archive


def is_clip_record(raw: Mapping[str, Any]) -> bool:
    """Whether a raw record is a clip record (`storage.wds`: a clip's frames once, its samples in the json)."""
    data = raw.get("json")
    return isinstance(data, bytes | bytearray) and _CLIP_RECORD in data


def expand_record(raw: dict[str, Any]) -> list[dict[str, Any]]:
    """The raw training samples of one record: a sample record as it is; a clip record (its frames once, a json
    listing its samples) as one raw sample per listed sample, `{"__key__": sample key, "__url__", "json": the
    sample's json, "00.jpg", ...: the record's JPEG bytes of its stored frames in order}` (shared, not copied).

    A clip record that cannot be expanded becomes one raw sample without frames under the record's key, so it
    fails in `_encode` and is counted as a bad sample like any other.
    """
    if not is_clip_record(raw):
        return [raw]
    try:
        value = json.loads(raw["json"])
        jpegs = [raw[name] for name in frame_names(raw)]
        position = {int(index): number for number, index in enumerate(value["frames"])}
        if len(position) != len(jpegs):
            raise ValueError(f"the record lists {len(position)} frames but holds {len(jpegs)} JPEGs")
        out = []
        for sample in value["samples"]:
            stored = [*sample.get("frame_indices", ()), *sample.get("extra_frame_indices", ())]
            expanded = {"__key__": str(sample["key"]), "__url__": raw.get("__url__", ""),
                        "json": json.dumps(sample, ensure_ascii=False).encode("utf-8")}
            for number, index in enumerate(stored):
                expanded[f"{number:02d}{_FRAME_SUFFIX}"] = jpegs[position[int(index)]]
            out.append(expanded)
        return out
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        message = f"unreadable clip record: {type(exc).__name__}: {exc}"
        return [{"__key__": raw.get("__key__", "?"), "__url__": raw.get("__url__", ""),
                 "json": json.dumps({"__error__": message}).encode("utf-8")}]


def read_tar_samples(path: str) -> Iterator[dict[str, Any]]:
    """Raw training samples of one WebDataset tar, in file order (clip records expanded: `expand_record`)."""
    for raw in read_tar_records(path):
        yield from expand_record(raw)


def count_samples(paths: Sequence[str]) -> int:
    """Number of training samples in the shards, from their json members only (no JPEG is read)."""
    total = 0
    for path in paths:
        with _open_tar(path, "r|*") as archive:
            for member in archive:
                if member.isreg() and member.name.endswith(".json"):
                    data = archive.extractfile(member).read()
                    total += len(json.loads(data)["samples"]) if _CLIP_RECORD in data else 1
    return total


# ---------------------------------------------------------------- positions


@dataclass(**_FROZEN)
class SourcePosition:
    """How far one slot is into one source: the epoch and the raw samples of it already consumed."""

    epoch: int = 0
    consumed: int = 0


@dataclass(**_FROZEN)
class SlotPosition:
    """The resumable position of one (rank, worker) slot: per source, and the mixer's draws so far."""

    draws: int = 0
    sources: Mapping[str, SourcePosition] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"draws": self.draws, "sources": {k: dataclasses.asdict(v) for k, v in self.sources.items()}}

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> SlotPosition:
        sources = {k: SourcePosition(**v) for k, v in value.get("sources", {}).items()}
        return cls(draws=int(value.get("draws", 0)), sources=sources)


@dataclass(**_FROZEN)
class LoaderState:
    """What a rank saves in a checkpoint: batches it consumed and the last position seen from each worker."""

    batches: int = 0
    workers: Mapping[int, SlotPosition] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"batches": self.batches, "workers": {str(k): v.to_json() for k, v in self.workers.items()}}

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> LoaderState:
        workers = {int(k): SlotPosition.from_json(v) for k, v in value.get("workers", {}).items()}
        return cls(batches=int(value.get("batches", 0)), workers=workers)

    def advanced(self, worker: int, position: SlotPosition) -> LoaderState:
        return LoaderState(batches=self.batches + 1, workers={**self.workers, worker: position})


@dataclass(**_FROZEN)
class BadSample:
    """A sample the loader could not use, with its key and reason (reported, never dropped silently)."""

    key: str
    url: str
    reason: str
    message: str

    def to_json(self) -> dict[str, str]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------- per-slot streams


def _rng(*parts: Any) -> random.Random:
    return random.Random(stable_hash(*parts, length=16))


class _SourceStream:
    """Endless raw samples of one source for one slot, epoch after epoch, with its position."""

    def __init__(self, source: DataSource, mixture: DataMixture, *, seed: int, slot: int, slots: int,
                 start: SourcePosition) -> None:
        self.source = source
        self.paths = expand_shards(source.shards)
        self.mixture = mixture
        self.seed = seed
        self.slot = slot
        self.slots = slots
        self.position = start
        # The shards this slot ever reads: with unshuffled shards, one per `slots`; else every one (over epochs).
        fixed = not mixture.shuffle_shards and len(self.paths) >= slots
        self.reachable = self.paths[slot::slots] if fixed else list(self.paths)
        # Failure bookkeeping: samples of each shard this slot reads (learnt as it reads them) and the keys per
        # shard that failed since this source's last good sample (at most the shard's samples are kept).
        self._sizes: dict[str, int] = {}
        self._bad_keys: dict[str, set[str]] = {}
        self._iterator = self._epoch_iterator(start.epoch, skip=start.consumed)

    def good(self) -> None:
        """The last sample drawn from this source trained: its failure bookkeeping starts over."""
        self._bad_keys.clear()

    def bad(self, raw: Mapping[str, Any]) -> None:
        """The last sample drawn from this source (`raw`) could not be used."""
        url = str(raw.get("__url__", ""))
        keys = self._bad_keys.setdefault(url, set())
        if url not in self._sizes or len(keys) < self._sizes[url]:
            keys.add(str(raw.get("__key__", "")))

    @property
    def spent(self) -> bool:
        """A full pass without a good sample: since the last good one, every sample of every shard this slot reads
        failed (a shard counts once this slot has read it through and knows its samples)."""
        return all(path in self._sizes and len(self._bad_keys.get(path, ())) >= self._sizes[path]
                   for path in self.reachable)

    def _read(self, path: str) -> Iterator[dict[str, Any]]:
        count = 0
        for raw in read_tar_samples(path):
            count += 1
            yield raw
        self._sizes[path] = count

    def _epoch_samples(self, epoch: int) -> Iterator[dict[str, Any]]:
        paths = list(self.paths)
        if self.mixture.shuffle_shards:
            _rng("shards", self.seed, self.source.shards, epoch).shuffle(paths)
        if len(paths) >= self.slots:
            for path in paths[self.slot :: self.slots]:
                yield from self._read(path)
        else:
            # Fewer shards than slots: split by sample so that no slot idles and none repeats another's data.
            index = 0
            for path in paths:
                mine = 0
                for raw in read_tar_samples(path):
                    if index % self.slots == self.slot:
                        mine += 1
                        yield raw
                    index += 1
                self._sizes[path] = mine

    def _shuffled(self, samples: Iterator[dict[str, Any]], epoch: int) -> Iterator[dict[str, Any]]:
        size = self.mixture.shuffle_buffer
        if size <= 1:
            yield from samples
            return
        rng = _rng("buffer", self.seed, self.source.shards, epoch, self.slot)
        buffer: list[dict[str, Any]] = []
        for raw in samples:
            buffer.append(raw)
            if len(buffer) >= size:
                index = rng.randrange(len(buffer))
                buffer[index], buffer[-1] = buffer[-1], buffer[index]
                yield buffer.pop()
        rng.shuffle(buffer)
        yield from buffer

    def _epoch_iterator(self, epoch: int, *, skip: int) -> Iterator[dict[str, Any]]:
        stream = self._shuffled(self._epoch_samples(epoch), epoch)
        for _ in range(skip):  # replay of a resumed epoch: raw bytes only, nothing decoded
            if next(stream, None) is None:
                break
        return stream

    def next(self) -> dict[str, Any]:
        raw = next(self._iterator, None)
        if raw is None:
            epoch = self.position.epoch + 1
            self.position = SourcePosition(epoch=epoch, consumed=0)
            self._iterator = self._epoch_iterator(epoch, skip=0)
            raw = next(self._iterator, None)
            if raw is None:
                raise ConfigError(f"source {self.source.shards!r} has no samples for slot {self.slot}")
        self.position = SourcePosition(epoch=self.position.epoch, consumed=self.position.consumed + 1)
        return raw


class _BadRun:
    """The samples of one slot that failed since its last good one: how many, their shards and reasons."""

    EXAMPLES = 3

    def __init__(self) -> None:
        self.count = 0
        self.urls: Counter[str] = Counter()
        self.reasons: Counter[str] = Counter()
        self.examples: list[BadSample] = []

    def add(self, record: BadSample) -> None:
        self.count += 1
        self.urls[record.url] += 1
        self.reasons[record.reason] += 1
        if len(self.examples) < self.EXAMPLES:
            self.examples.append(record)

    def error(self, why: str, slot: int) -> NoUsableSamplesError:
        shards = sorted(self.urls)
        named = ", ".join(f"{url} ({self.urls[url]})" for url in shards[:10])
        if len(shards) > 10:
            named += f" and {len(shards) - 10} more"
        reasons = ", ".join(f"{reason} ({n})" for reason, n in self.reasons.most_common())
        examples = "; ".join(f"{b.key} in {b.url}: {b.message}" for b in self.examples)
        return NoUsableSamplesError(
            f"no usable training sample in slot {slot}: {why}; {self.count} samples failed in a row from shards "
            f"{named}; reasons: {reasons}; e.g. {examples}"
        )


# ---------------------------------------------------------------- decoding


def frame_names(raw: Mapping[str, Any]) -> list[str]:
    """The frame members of a raw sample (`00.jpg`, `01.jpg`, ...) in order."""
    return sorted(name for name in raw if name.endswith(_FRAME_SUFFIX) and name[: -len(_FRAME_SUFFIX)].isdigit())


def _indices(value: Any, name: str) -> list[int]:
    if value is None:
        return []
    if not isinstance(value, list | tuple):
        raise InvalidSampleError(f"{name} is not a list", reason=RejectReason.MALFORMED_SAMPLE)
    return [int(i) for i in value]


def plan_frames(sample_json: dict[str, Any], available: int, wanted: int) -> tuple[dict[str, Any], list[int]]:
    """The sample json for `wanted` video frames and the stored frame positions to decode, in the processor's order.

    Stored frames are one per `frame_indices` entry, then one per `extra_frame_indices` entry (shards written
    before extras existed have none; a json without `frame_indices` counts every stored frame as a video frame).
    With `wanted` video frames stored the sample is used as stored. Otherwise the video frames kept are the
    positions `engine.video.uniform_indices(len(frame_indices), wanted)` (repeats allowed, as the release), and
    every mask frame then not among them becomes an extra frame, its image taken from wherever it is stored (a
    dropped video frame or an old extra frame): masks are never dropped. Returns (json with the new
    `frame_indices` and `extra_frame_indices`, positions of the stored frames: the kept video frames, then the
    extra frames ascending).
    """
    from engine.video import uniform_indices

    extras = _indices(sample_json.get("extra_frame_indices"), "extra_frame_indices")
    video = _indices(sample_json.get("frame_indices"), "frame_indices") or list(range(available - len(extras)))
    if not video or len(video) + len(extras) != available:
        raise InvalidSampleError(
            f"{available} frames stored for {len(video)} frame indices and {len(extras)} extra frame indices",
            reason=RejectReason.MALFORMED_SAMPLE,
        )
    if len(video) == wanted:
        return sample_json, list(range(available))
    kept = uniform_indices(len(video), wanted)
    chosen = [video[position] for position in kept]
    stored_at: dict[int, int] = {}
    for position, index in enumerate(video + extras):
        stored_at.setdefault(index, position)
    try:
        masked = {int(frame) for obj in sample_json.get("objects", []) for frame in obj.get("masks", {})}
    except (AttributeError, TypeError, ValueError) as exc:
        raise InvalidSampleError(f"malformed masks: {exc!r}", reason=RejectReason.MALFORMED_SAMPLE) from exc
    new_extras = sorted(masked - set(chosen))
    missing = [index for index in new_extras if index not in stored_at]
    if missing:
        raise InvalidSampleError(f"mask frames {missing} are not among the stored frames",
                                 reason=RejectReason.MISSING_MASK)
    positions = kept + [stored_at[index] for index in new_extras]
    return {**sample_json, "frame_indices": chosen, "extra_frame_indices": new_extras}, positions


def decode_jpeg(data: bytes) -> np.ndarray | None:
    """RGB uint8 `[h, w, 3]` of one JPEG (decoded straight to RGB where OpenCV can), None when undecodable.

    Without OpenCV (a GPU machine carrying only small wheels, `scripts/gpu_check.sh`) Pillow decodes it."""
    try:
        import cv2
    except ImportError:
        return _pillow_decode(data)

    buffer = np.frombuffer(data, dtype=np.uint8)
    if hasattr(cv2, "IMREAD_COLOR_RGB"):
        return cv2.imdecode(buffer, cv2.IMREAD_COLOR_RGB)
    image = cv2.imdecode(buffer, cv2.IMREAD_COLOR)
    return None if image is None else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _pillow_decode(data: bytes) -> np.ndarray | None:
    import io

    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError):
        return None


def decode_frames(raw: Mapping[str, Any], positions: Sequence[int] | None = None) -> np.ndarray:
    """The sample's JPEG frames at stored `positions` (all by default; repeats allowed) as RGB uint8 `[n, h, w, 3]`.

    Each distinct JPEG is decoded once, however often its position repeats.
    """
    names = frame_names(raw)
    if not names:
        raise InvalidSampleError("sample has no frames", reason=RejectReason.MALFORMED_SAMPLE)
    order = list(range(len(names))) if positions is None else [int(p) for p in positions]
    decoded: dict[int, np.ndarray] = {}
    for position in dict.fromkeys(order):
        if not 0 <= position < len(names):
            raise InvalidSampleError(f"no stored frame at position {position}", reason=RejectReason.MALFORMED_SAMPLE)
        image = decode_jpeg(raw[names[position]])
        if image is None:
            raise InvalidSampleError(f"undecodable frame {names[position]}", reason=RejectReason.MALFORMED_SAMPLE)
        decoded[position] = image
    if len({frame.shape for frame in decoded.values()}) != 1:
        raise InvalidSampleError("frames differ in size", reason=RejectReason.MALFORMED_SAMPLE)
    return np.stack([decoded[position] for position in order])


def recorded_mode(sample_json: Mapping[str, Any]) -> str | None:
    """The mode a sample records (`mode`, else `extra.mode` as the export writes it), None when it records none.

    The loader encodes such a sample in this mode whatever the recipe's ratio (see the module docstring); a value
    other than "single" or "multi" makes the sample a bad one.
    """
    value = sample_json.get("mode")
    if value is None:
        extra = sample_json.get("extra")
        value = extra.get("mode") if isinstance(extra, Mapping) else None
    if value is None:
        return None
    if value not in MODES:
        raise InvalidSampleError(f"unknown sample mode {value!r}", reason=RejectReason.MALFORMED_SAMPLE)
    return str(value)


def decode_json(raw: Mapping[str, Any]) -> dict[str, Any]:
    if "json" not in raw:
        raise InvalidSampleError("sample has no json member", reason=RejectReason.MALFORMED_SAMPLE)
    value = json.loads(raw["json"])
    if not isinstance(value, dict):
        raise InvalidSampleError("sample json is not an object", reason=RejectReason.MALFORMED_SAMPLE)
    return value


# ---------------------------------------------------------------- the dataset


@dataclass(**_FROZEN)
class LoaderSpec:
    """Everything that fixes the stream of one rank: the mixture, the seed, micro batch and the slot layout."""

    mixture: DataMixture
    micro_batch: int
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    num_workers: int = 0


class TrainingStream:
    """An iterable of micro-batches for one rank (a torch IterableDataset is built around it in `build_loader`).

    Each yielded item is a dict: "batch" (the processor's collated tensors), "worker" (the logical worker id),
    "position" (that worker's `SlotPosition` after this batch, as JSON), "keys", and "bad" (`BadSample` records
    met since the previous batch of this worker).
    """

    def __init__(self, spec: LoaderSpec, encoder: SampleEncoder, *, state: LoaderState | None = None) -> None:
        if not spec.mixture.sources:
            raise ConfigError("the data mixture has no sources (give --data)")
        if any(source.weight <= 0 for source in spec.mixture.sources):
            raise ConfigError("data source weights must be positive")
        if spec.mixture.max_consecutive_bad <= 0:
            raise ConfigError("max_consecutive_bad must be positive")
        for source in spec.mixture.sources:
            expand_shards(source.shards)  # fail fast, before any worker starts
        self.spec = spec
        self.encoder = encoder
        self.state = state or LoaderState()

    def logical_worker(self, physical: int) -> int:
        # DataLoader starts every iteration at worker 0; rotate so that the worker that was next continues.
        workers = max(1, self.spec.num_workers)
        return (physical + self.state.batches) % workers

    def iterate(self, physical_worker: int) -> Iterator[dict[str, Any]]:
        spec = self.spec
        workers = max(1, spec.num_workers)
        worker = self.logical_worker(physical_worker)
        slot, slots = spec.rank * workers + worker, spec.world_size * workers
        start = self.state.workers.get(worker, SlotPosition())
        names = [source.name or f"source{i}" for i, source in enumerate(spec.mixture.sources)]
        streams = {
            name: _SourceStream(source, spec.mixture, seed=spec.seed, slot=slot, slots=slots,
                                start=start.sources.get(name, SourcePosition()))
            for name, source in zip(names, spec.mixture.sources, strict=True)
        }
        weights = [source.weight for source in spec.mixture.sources]
        draws = start.draws
        items: list[dict] = []
        keys: list[str] = []
        bad: list[BadSample] = []
        run = _BadRun()
        limit = spec.mixture.max_consecutive_bad
        while True:
            rng = _rng("draw", spec.seed, slot, draws)
            draws += 1
            name = rng.choices(names, weights=weights)[0] if len(names) > 1 else names[0]
            stream = streams[name]
            raw = stream.next()
            try:
                items.append(self._encode(raw, stream.position.epoch))
                keys.append(raw["__key__"])
            except Exception as error:  # noqa: BLE001 - any failure of one sample is that sample's, not the run's
                record = BadSample(key=raw.get("__key__", "?"), url=raw.get("__url__", "?"),
                                   reason=str(getattr(error, "reason", RejectReason.MALFORMED_SAMPLE)),
                                   message=f"{type(error).__name__}: {error}")
                LOGGER.warning("bad training sample %s (%s): %s", record.key, record.url, record.message)
                bad.append(record)
                run.add(record)
                stream.bad(raw)
                if run.count >= limit:
                    raise run.error(f"{run.count} consecutive samples failed (max_consecutive_bad={limit})",
                                    slot) from None
                if all(s.spent for s in streams.values()):
                    raise run.error(f"a full pass over every source ({', '.join(names)}) gave no good sample",
                                    slot) from None
                continue
            stream.good()
            run = _BadRun()
            if len(items) == spec.micro_batch:
                position = SlotPosition(draws=draws, sources={k: s.position for k, s in streams.items()})
                yield {"batch": self.encoder.collate(items), "worker": worker, "position": position.to_json(),
                       "keys": keys, "bad": [b.to_json() for b in bad]}
                items, keys, bad = [], [], []

    def _mode(self, raw: Mapping[str, Any], sample_json: Mapping[str, Any], epoch: int) -> str | None:
        """The sample's recorded mode when it has one, else the recipe ratio's draw (None: the processor's)."""
        recorded = recorded_mode(sample_json)
        if recorded is not None:
            return recorded
        ratio = self.spec.mixture.multi_frame_ratio
        if ratio is None:
            return None
        # Keyed by the sample and epoch, not the slot: the same sample gets the same mode whatever the layout.
        return "multi" if _rng("mode", self.spec.seed, raw.get("__key__"), epoch).random() < ratio else "single"

    def _encode(self, raw: Mapping[str, Any], epoch: int) -> dict:
        sample_json = decode_json(raw)
        mode = self._mode(raw, sample_json, epoch)
        available = len(frame_names(raw))
        if available == 0:
            raise InvalidSampleError("sample has no frames", reason=RejectReason.MALFORMED_SAMPLE)
        planned, positions = plan_frames(sample_json, available, self.spec.mixture.frames_per_sample)
        return self.encoder.encode_wds(planned, decode_frames(raw, positions), mode=mode)


def build_loader(stream: TrainingStream, *, prefetch_factor: int = 2) -> Any:
    """A torch DataLoader over `stream` (persistent workers, batches collated inside the workers)."""
    import torch
    from torch.utils.data import DataLoader, IterableDataset, get_worker_info

    class _Dataset(IterableDataset):
        def __iter__(self) -> Iterator[dict[str, Any]]:
            info = get_worker_info()
            return stream.iterate(0 if info is None else info.id)

    workers = stream.spec.num_workers
    generator = torch.Generator().manual_seed(stream.spec.seed)
    return DataLoader(
        _Dataset(),
        batch_size=None,
        num_workers=workers,
        persistent_workers=workers > 0,
        prefetch_factor=prefetch_factor if workers > 0 else None,
        generator=generator,
    )


def raw_frames_of(raw: Mapping[str, Any]) -> list[bytes]:
    """The JPEG bytes of a raw sample's frames in order (benchmarks compare against plain decoding)."""
    return [raw[name] for name in frame_names(raw)]


def jpeg_bytes(frame: np.ndarray, quality: int = 90) -> bytes:
    """JPEG-encode an RGB uint8 frame (used to write synthetic shards in tests and benchmarks); Pillow encodes it
    where OpenCV is not installed."""
    try:
        import cv2
    except ImportError:
        import io

        from PIL import Image

        buffer = io.BytesIO()
        Image.fromarray(frame).save(buffer, format="JPEG", quality=quality)
        return buffer.getvalue()
    ok, buffer = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buffer.tobytes()
