"""FAKE grounder and segmenter: ground truth of synthetic clips instead of models, for tests and the offline profile.

These are fakes, not models. `FakeGrounder` answers a noun with the ground-truth box of the synthetic object
whose name or category is that noun (the clip's `.gt.json` sidecar from `engine.synthetic`), or None when the
clip has ground truth but no such object; for a video without a sidecar it returns a deterministic box near the
centre derived from a hash of the noun. `FakeSegmenter` returns, on every requested frame, the ground-truth mask
of the synthetic object whose key-frame box best matches the prompt box; without a sidecar (or with no
matching object) it returns the prompt box filled on every requested frame. Masks are COCO RLE keyed by
absolute frame index, as the real SAM 2 segmenter returns them, so the segmentor agent runs unchanged.
`FakeSegmenter.segment_many` answers every prompt of a clip in one call, each exactly as `segment` would, and
counts its calls in `stats` like the real segmenter (it never decodes frames: it reads the sidecar).
`FakeSegmenterConfig.degrade` (`engine.config.MaskDegradation`: shift, erode, dilate; off by default) damages
every mask it returns on purpose, so that mask audits (J&F) can be seen to fall; a degraded segmenter says so in
its model name, which provenance records.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import threading
from collections.abc import Mapping, Sequence

import numpy as np

from agents.backends.base import Detection, SegmenterStats, SegmentPrompt
from engine.config import FakeGrounderConfig, FakeSegmenterConfig, MaskDegradation
from engine.ids import stable_hash
from engine.masks import decode_rle, encode_rle
from engine.remote import is_url, remote_info
from engine.synthetic import SyntheticGroundTruth, SyntheticObject, load_ground_truth, sidecar_path, sidecar_url
from engine.types import Masklet, RleMask
from engine.video import probe

# A prompt box must overlap an object's true box at least this much (box IoU) to be taken as that object.
_MIN_BOX_IOU = 0.3


class FakeGrounder:
    """FAKE: ground-truth boxes of synthetic clips; a deterministic central box for other videos."""

    kind = "fake"
    model = "fake-grounder"

    def __init__(self, config: FakeGrounderConfig | None = None) -> None:
        self.config = config or FakeGrounderConfig()

    def ground(self, *, video_uri: str, frame_index: int, frame: np.ndarray, noun: str) -> Detection | None:
        truth = _ground_truth(video_uri)
        if truth is not None:
            obj = _object_named(truth, noun)
            if obj is None or frame_index not in obj.boxes:
                return None
            return Detection(box=tuple(float(v) for v in obj.boxes[frame_index]), score=1.0, label=obj.name)
        height, width = frame.shape[:2]
        return Detection(box=hashed_central_box(noun, width=width, height=height), score=0.5, label=noun)


class FakeSegmenter:
    """FAKE: ground-truth masks of the prompted synthetic object; the filled box for other videos."""

    kind = "fake"
    model = "fake-segmenter"

    def __init__(self, config: FakeSegmenterConfig | None = None) -> None:
        self.config = config or FakeSegmenterConfig()
        self.model = degraded_model_name(type(self).model, self.config.degrade)
        self._stats = SegmenterStats()
        self._stats_lock = threading.Lock()

    @property
    def stats(self) -> SegmenterStats:
        """Calls and objects so far (frames are never decoded, no model state is ever started)."""
        return self._stats

    def segment(
        self,
        *,
        video_uri: str,
        frame_indices: Sequence[int],
        key_frame: int,
        box: tuple[float, float, float, float],
    ) -> Masklet:
        self._count(objects=1)
        return self._segment_one(video_uri, frame_indices, key_frame, box)

    def segment_many(
        self,
        *,
        video_uri: str,
        frame_indices: Sequence[int],
        prompts: Sequence[SegmentPrompt],
        frames: Mapping[int, np.ndarray] | None = None,
    ) -> list[Masklet]:
        """One masklet per prompt, in order, each as `segment` returns it (`frames` are not needed)."""
        self._count(objects=len(prompts))
        return [self._segment_one(video_uri, frame_indices, p.key_frame, p.box) for p in prompts]

    def _count(self, *, objects: int) -> None:
        with self._stats_lock:
            stats = self._stats
            self._stats = dataclasses.replace(stats, calls=stats.calls + 1, objects=stats.objects + objects)

    def _segment_one(
        self, video_uri: str, frame_indices: Sequence[int], key_frame: int, box: tuple[float, float, float, float]
    ) -> Masklet:
        indices = sorted({int(i) for i in (*frame_indices, key_frame)})
        truth = _ground_truth(video_uri)
        if truth is not None:
            obj = _object_at_box(truth, key_frame, box)
            if obj is not None:
                empty = _rle(np.zeros((truth.height, truth.width), dtype=bool))
                masks = {i: self._degraded(obj.masks.get(i, empty)) for i in indices}
                return Masklet(masks=masks, key_frame=key_frame, box=tuple(box), score=1.0)
            height, width = truth.height, truth.width
        else:
            info = probe(video_uri)
            height, width = info.height, info.width
        filled = self._degraded(_rle(filled_box_mask(box, width=width, height=height)))
        return Masklet(masks=dict.fromkeys(indices, filled), key_frame=key_frame, box=tuple(box), score=0.5)


    def _degraded(self, mask: RleMask) -> RleMask:
        degrade = self.config.degrade
        return _rle(degrade_mask(decode_rle(mask), degrade)) if degrade.active else mask


def degraded_model_name(model: str, degrade: MaskDegradation) -> str:
    """`model`, labelled with the damage done when `degrade` is active: `fake-segmenter+degraded(shift_px=4)`."""
    if not degrade.active:
        return model
    settings = ",".join(f"{name}={value}" for name, value in degrade.model_dump().items() if value)
    return f"{model}+degraded({settings})"


def degrade_mask(mask: np.ndarray, degrade: MaskDegradation) -> np.ndarray:
    """A boolean mask moved `shift_px` right and down (pixels leaving the frame are lost), then eroded and
    dilated by disks of radius `erode_px` and `dilate_px` (see `engine.config.MaskDegradation`)."""
    out = np.asarray(mask, dtype=bool)
    shift = degrade.shift_px
    if shift:
        moved = np.zeros_like(out)
        if shift < out.shape[0] and shift < out.shape[1]:
            moved[shift:, shift:] = out[:-shift, :-shift]
        out = moved
    if degrade.erode_px or degrade.dilate_px:
        import cv2  # lazily: only a degraded fake needs morphology

        for radius, operation in ((degrade.erode_px, cv2.erode), (degrade.dilate_px, cv2.dilate)):
            if radius:
                kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
                out = operation(out.astype(np.uint8), kernel, borderValue=0).astype(bool)
    return out


def hashed_central_box(noun: str, *, width: int, height: int) -> tuple[float, float, float, float]:
    """A box of 30-50% of the frame, centred within the middle fifth, placed by a hash of the noun."""
    digest = int(stable_hash("fake-box", noun.strip().lower()), 16)
    fractions = [((digest >> shift) & 0xFFFF) / 0xFFFF for shift in (0, 16, 32, 48)]
    centre_x = width * (0.4 + 0.2 * fractions[0])
    centre_y = height * (0.4 + 0.2 * fractions[1])
    half_w = width * (0.15 + 0.1 * fractions[2])
    half_h = height * (0.15 + 0.1 * fractions[3])
    return (
        round(max(0.0, centre_x - half_w), 2),
        round(max(0.0, centre_y - half_h), 2),
        round(min(float(width), centre_x + half_w), 2),
        round(min(float(height), centre_y + half_h), 2),
    )


def filled_box_mask(box: tuple[float, float, float, float], *, width: int, height: int) -> np.ndarray:
    """A boolean `[height, width]` mask with the pixels whose centres lie inside `box` set."""
    x0, y0, x1, y1 = box
    columns = (np.arange(width) + 0.5 >= x0) & (np.arange(width) + 0.5 <= x1)
    rows = (np.arange(height) + 0.5 >= y0) & (np.arange(height) + 0.5 <= y1)
    return rows[:, None] & columns[None, :]


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two `(x0, y0, x1, y1)` boxes."""
    inter_w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    inter_h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    intersection = inter_w * inter_h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - intersection
    return intersection / union if union > 0 else 0.0


def _rle(mask: np.ndarray) -> RleMask:
    return RleMask.from_coco(encode_rle(mask))


def _object_named(truth: SyntheticGroundTruth, noun: str) -> SyntheticObject | None:
    wanted = " ".join(noun.lower().split())
    words = wanted.split()
    exact = [o for o in truth.objects if wanted in (o.name.lower(), o.category.lower())]
    if exact:
        return exact[0]
    # "the red ball" / "balls": the head noun is the last word; a colour word picks between two objects.
    head = words[-1] if words else ""
    candidates = [
        o for o in truth.objects
        if head in (o.name.lower(), o.category.lower()) or head.rstrip("s") in (o.name.lower(), o.category.lower())
    ]
    coloured = [o for o in candidates if o.color.lower() in words]
    return (coloured or candidates or [None])[0]


def _object_at_box(truth: SyntheticGroundTruth, key_frame: int, box: Sequence[float]) -> SyntheticObject | None:
    scored = [(box_iou(o.boxes[key_frame], box), o) for o in truth.objects if key_frame in o.boxes]
    if not scored:
        return None
    best_iou, best = max(scored, key=lambda pair: pair[0])
    return best if best_iou >= _MIN_BOX_IOU else None


def _ground_truth(video_uri: str) -> SyntheticGroundTruth | None:
    path = os.fspath(video_uri)
    try:
        if is_url(path):  # a video on an object store: its sidecar's ETag tells a rewritten sidecar
            stamp = hash(str(remote_info(sidecar_url(path)).get("ETag") or ""))
        else:
            stamp = sidecar_path(path).stat().st_mtime_ns
    except (FileNotFoundError, NotADirectoryError):
        return None
    return _cached_ground_truth(path, stamp)


@functools.lru_cache(maxsize=64)
def _cached_ground_truth(path: str, stamp: int) -> SyntheticGroundTruth | None:
    # `stamp` (the sidecar's mtime) is part of the cache key so that a rewritten sidecar is read again.
    return load_ground_truth(path)
