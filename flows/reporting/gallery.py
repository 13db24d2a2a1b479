"""The report's gallery: a deterministic, bounded sample of exported training samples per task, drawn with masks.

Sampling reads only the Parquet index beside each exported tar (key and byte range of every sample), one tar at
a time, and keeps, per task (`detailed`, `short`, `qa`), the `per_kind` samples with the smallest seeded hash of
their key (`sha256("<seed>:<key>")`): the same root and seed always show the same samples, a sample's place does
not depend on which tar it is in, and memory is bounded by `per_kind` whatever the size of the root. Only the
picked samples are read, by random access into their tar (`storage.wds.read_sample_at`).

Each picked sample becomes one frame strip (WebP): up to `max_frames` of its stored frames, every frame that
holds a mask first, then evenly spaced others, shown at the source video's aspect ratio with each object tinted
and outlined in its own colour (`engine.render`) and its frame index in the corner. The card beside it holds the
conversation (caption, or question with options and answer) and the provenance of each field: agent, backend
kind, model and prompt version (exported samples keep tokens but not latency; timings stay in the stage tables).
"""

from __future__ import annotations

import hashlib
import heapq
import io
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from engine.types import Provenance, Sample
from storage.root import DatasetRoot

TASKS = ("detailed", "short", "qa")
DEFAULT_PER_KIND = 6
MAX_FRAMES = 8
DISPLAY_HEIGHT = 144
GAP_PX = 4

# What each agent's provenance entry stands for in a sample.
FIELD_OF_AGENT = {
    "analyzer": "noun",
    "annotator": "appearance + motion",
    "segmentor": "box + masks",
    "reviewer.region_captioner": "region caption",
    "reviewer.judge": "same-object verdict",
    "refiner": "detailed caption",
    "qa_generator": "question + answer",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Picked:
    """One sample chosen for the gallery: where it is stored and its rank (smaller first)."""

    task: str
    key: str
    tar: str
    offset: int
    size: int
    rank: int


@dataclass(frozen=True, slots=True, kw_only=True)
class GalleryItem:
    """One drawn sample of the gallery."""

    task: str
    key: str
    clip_id: str = ""
    video: str = ""
    image: str = ""  # path relative to reports/ (empty when the sample could not be drawn)
    turns: tuple[tuple[str, str], ...] = ()
    objects: tuple[tuple[str, str, int], ...] = ()  # (object id, category, mask frames)
    frames: tuple[int, ...] = ()  # frame indices shown, in order
    provenance: tuple[tuple[str, Provenance], ...] = ()  # (field, provenance)
    mode: str = ""
    error: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Gallery:
    """The drawn samples per task, and how many samples of each task the indexes listed."""

    items: Mapping[str, tuple[GalleryItem, ...]]
    available: Mapping[str, int]
    tars: int
    notes: tuple[str, ...] = ()

    @property
    def shown(self) -> int:
        return sum(len(items) for items in self.items.values())


def rank_of(seed: int, key: str) -> int:
    """The seeded, content-derived rank of a sample key (smaller ranks are shown)."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "big")


def pick_samples(
    root: DatasetRoot, *, per_kind: int, seed: int
) -> tuple[dict[str, list[Picked]], Counter[str], int, list[str]]:
    """Per task, the `per_kind` samples of smallest rank, from the tars' indexes read one at a time."""
    from storage.wds import list_tars, read_index

    heaps: dict[str, list[tuple[int, str, Picked]]] = {}
    available: Counter[str] = Counter()
    notes: list[str] = []
    tars = list_tars(root)
    for tar in tars:
        try:
            rows = read_index(tar)
        except Exception as exc:  # noqa: BLE001 - one unreadable index must not hide the other tars' samples
            notes.append(f"{tar.rsplit('/', 1)[-1]}: its index cannot be read ({type(exc).__name__}); skipped")
            continue
        for row in rows:
            task, key = str(row.get("task", "")), str(row.get("key", ""))
            available[task] += 1
            if per_kind <= 0:
                continue
            picked = Picked(task=task, key=key, tar=tar, offset=int(row["offset"]), size=int(row["size"]),
                            rank=rank_of(seed, key))
            heap = heaps.setdefault(task, [])
            entry = (-picked.rank, key, picked)  # a max-heap of the kept ranks: the largest is dropped first
            if len(heap) < per_kind:
                heapq.heappush(heap, entry)
            elif entry[:2] > heap[0][:2]:
                heapq.heapreplace(heap, entry)
    picked_per_task = {task: sorted((entry[2] for entry in heap), key=lambda p: (p.rank, p.key))
                       for task, heap in heaps.items()}
    return picked_per_task, available, len(tars), notes


def _evenly(values: Sequence[int], n: int) -> list[int]:
    if n <= 0:
        return []
    if len(values) <= n:
        return list(values)
    if n == 1:
        return [values[len(values) // 2]]
    return [values[round(k * (len(values) - 1) / (n - 1))] for k in range(n)]


def shown_frames(sample: Sample, max_frames: int = MAX_FRAMES) -> list[int]:
    """The frame indices a strip shows: every mask frame first (evenly thinned), then evenly spaced others."""
    stored = sorted(set(sample.stored_frame_indices))
    with_masks = sorted({frame for obj in sample.objects for frame in obj.masks} & set(stored))
    chosen = _evenly(with_masks, max_frames)
    others = [frame for frame in stored if frame not in set(chosen)]
    chosen += _evenly(others, max_frames - len(chosen))
    return sorted(chosen)


def render_strip(sample: Sample, frames: Sequence[Any], *, max_frames: int = MAX_FRAMES,
                 height: int = DISPLAY_HEIGHT) -> tuple[bytes, list[int]]:
    """The sample's frame strip as WebP bytes, and the frame indices it shows."""
    import cv2
    import numpy as np
    from PIL import Image

    from engine.masks import resize_mask
    from engine.render import MARK_COLORS, draw_contour, tint_mask

    by_index: dict[int, Any] = {}
    for index, frame in zip(sample.stored_frame_indices, frames, strict=False):
        by_index.setdefault(int(index), frame)
    indices = [index for index in shown_frames(sample, max_frames) if index in by_index]
    if not indices:
        raise ValueError("the sample has no stored frames")
    first = np.asarray(by_index[indices[0]])
    known = sample.width > 0 and sample.height > 0
    aspect = sample.width / sample.height if known else first.shape[1] / first.shape[0]
    width = max(16, round(height * aspect))
    tiles = []
    for index in indices:
        frame = np.ascontiguousarray(np.asarray(by_index[index], dtype=np.uint8)[..., :3])
        shrinking = frame.shape[0] * frame.shape[1] > height * width
        tile = cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
        for k, obj in enumerate(sample.objects):
            mask = obj.masks.get(index)
            if mask is None:
                continue
            color = MARK_COLORS[k % len(MARK_COLORS)]
            binary = resize_mask(mask, height, width)
            tile = draw_contour(tint_mask(tile, binary, color, alpha=0.4), binary, color, thickness=2)
        label = f"#{index}"
        cv2.putText(tile, label, (5, 15), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(tile, label, (5, 15), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (255, 255, 255), 1, cv2.LINE_AA)
        tiles.append(tile)
    strip = np.full((height, len(tiles) * width + (len(tiles) - 1) * GAP_PX, 3), 245, dtype=np.uint8)
    for k, tile in enumerate(tiles):
        strip[:, k * (width + GAP_PX) : k * (width + GAP_PX) + width] = tile
    buffer = io.BytesIO()
    Image.fromarray(strip).save(buffer, format="WEBP", quality=85, method=4)
    return buffer.getvalue(), indices


def field_of(entry: Provenance, task: str) -> str:
    if entry.agent == "analyzer" and entry.prompt_version.startswith("analyzer_single_subject"):
        return "subject noun"
    if entry.agent == "annotator" and task == "qa":
        return "object description"
    return FIELD_OF_AGENT.get(entry.agent, entry.agent)


def _file_name(task: str, position: int, key: str) -> str:
    return f"{task}-{position:02d}-{re.sub(r'[^A-Za-z0-9_-]+', '_', key)[:80]}.webp"


def build_gallery(
    root: DatasetRoot,
    write: Callable[[str, bytes], None],
    *,
    per_kind: int = DEFAULT_PER_KIND,
    seed: int = 0,
    max_frames: int = MAX_FRAMES,
    directory: str = "assets/gallery",
) -> Gallery:
    """Pick and draw the gallery; `write(path relative to reports/, bytes)` stores each strip."""
    from storage.wds import read_sample_at

    picked, available, tars, notes = pick_samples(root, per_kind=per_kind, seed=seed)
    items: dict[str, tuple[GalleryItem, ...]] = {}
    for task in [*TASKS, *sorted(set(picked) - set(TASKS))]:
        drawn = []
        for position, choice in enumerate(picked.get(task, ())):
            try:
                sample, frames = read_sample_at(choice.tar, choice.offset, choice.size, key=choice.key)
                image, indices = render_strip(sample, frames, max_frames=max_frames)
            except Exception as exc:  # noqa: BLE001 - a sample that cannot be drawn is shown with its error
                drawn.append(GalleryItem(task=task, key=choice.key, error=f"{type(exc).__name__}: {exc}"))
                continue
            relative = f"{directory}/{_file_name(task, position, sample.key)}"
            write(relative, image)
            drawn.append(GalleryItem(
                task=task,
                key=sample.key,
                clip_id=sample.clip_id,
                video=sample.video_uri,
                image=relative,
                turns=tuple((turn.role, turn.value) for turn in sample.conversations),
                objects=tuple((obj.object_id, obj.category, len(obj.masks)) for obj in sample.objects),
                frames=tuple(indices),
                provenance=tuple((field_of(entry, task), entry) for entry in sample.provenance),
                mode=str(sample.extra.get("mode", "")),
            ))
        if drawn or available.get(task):
            items[task] = tuple(drawn)
    return Gallery(items=items, available=dict(available), tars=tars, notes=tuple(notes))
