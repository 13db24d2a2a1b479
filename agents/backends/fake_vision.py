"""FAKE grounder and segmenter: ground truth of synthetic clips instead of models, for tests and the offline profile.

These are fakes, not models. `FakeGrounder` detects from the frame's pixels: it looks up the colour of the noun's
object (the synthetic object whose name or category is that noun, in the clip's `.gt.json` sidecar from
`engine.synthetic`; or a colour word of the noun, e.g. "the red ball", for a video without a sidecar), finds the
pixels of that colour on the frame it is given (`colour_box`: shaded copies of the colour, as the synthetic
textures draw it) and returns the box around their connected regions, or None when there is none (the object
is not on that frame: it has not entered yet, or has left) or the sidecar has no such object. A noun without a
sidecar or colour word gets a deterministic box near the centre derived from a hash of the noun.
`FakeSegmenter` returns, on every requested frame, the ground-truth mask
of the synthetic object whose key-frame box best matches the prompt box (for a prompt of points only: whose
key-frame mask holds the first point labelled 1); without a sidecar (or with no matching object) it returns the
prompt box (or a box of a fifth of the frame around the point) filled on every requested frame. Masks are COCO
RLE keyed by absolute frame index, as the real SAM 2 segmenter returns them, so the segmentor agent runs unchanged.
`FakeSegmenter.segment_many` answers every prompt of a clip in one call, each exactly as `segment` would, and
counts its calls in `stats` like the real segmenter (it never decodes frames: it reads the sidecar).
A point prompt (the web app's clicks) picks the object under the most positive points and no negative one.
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
from engine.masks import box_iou, decode_rle, encode_rle
from engine.remote import is_url, remote_info
from engine.synthetic import (
    COLORS,
    SyntheticGroundTruth,
    SyntheticObject,
    load_ground_truth,
    sidecar_path,
    sidecar_url,
)
from engine.types import Masklet, RleMask
from engine.video import probe

# A prompt box must overlap an object's true box at least this much (box IoU) to be taken as that object.
_MIN_BOX_IOU = 0.3
_MIN_HELD = 0.6  # ... or lie inside it this much (a box of part of an occluded object)


class FakeGrounder:
    """FAKE: boxes found by the colour of the noun's object in the frame's pixels (module docstring)."""

    kind = "fake"
    model = "fake-grounder"

    def __init__(self, config: FakeGrounderConfig | None = None) -> None:
        self.config = config or FakeGrounderConfig()

    def ground(self, *, video_uri: str, frame_index: int, frame: np.ndarray, noun: str) -> Detection | None:
        truth = _ground_truth(video_uri)
        if truth is not None:
            obj = _object_named(truth, noun)
            if obj is None:
                return None
            color, label, score = obj.color, obj.name, 1.0
        else:
            color = next((word for word in noun.lower().split() if word in COLORS), None)
            label, score = noun, 0.8
            if color is None:
                height, width = frame.shape[:2]
                return Detection(box=hashed_central_box(noun, width=width, height=height), score=0.5, label=noun)
        box = colour_box(frame, COLORS[color])
        return None if box is None else Detection(box=box, score=score, label=label)


def colour_box(
    frame: np.ndarray, rgb: Sequence[int], *, tolerance: float = 40.0, min_pixels: int = 12
) -> tuple[float, float, float, float] | None:
    """The box `(x0, y0, x1, y1)` around the connected regions of at least `min_pixels` pixels that are a shade (0.6x
    to 1.1x) of `rgb` within `tolerance` (RGB distance; an occluder may split the object in parts), or None."""
    import cv2  # lazily: only the fake grounder needs connected components

    pixels = np.asarray(frame, dtype=np.float32)
    colour = np.asarray(rgb, dtype=np.float32)
    shade = pixels @ colour / float(colour @ colour)
    residual = np.linalg.norm(pixels - shade[..., None] * colour, axis=-1)
    hit = ((shade >= 0.6) & (shade <= 1.1) & (residual <= tolerance)).astype(np.uint8)
    count, _labels, stats, _ = cv2.connectedComponentsWithStats(hit, connectivity=8)
    if count <= 1:
        return None
    parts = stats[1:][stats[1:, cv2.CC_STAT_AREA] >= min_pixels]
    if len(parts) == 0:
        return None
    x0, y0 = parts[:, cv2.CC_STAT_LEFT].min(), parts[:, cv2.CC_STAT_TOP].min()
    x1 = (parts[:, cv2.CC_STAT_LEFT] + parts[:, cv2.CC_STAT_WIDTH]).max()
    y1 = (parts[:, cv2.CC_STAT_TOP] + parts[:, cv2.CC_STAT_HEIGHT]).max()
    return (float(x0), float(y0), float(x1), float(y1))


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
        return [self._segment_one(video_uri, frame_indices, p.key_frame, p.box, p.points) for p in prompts]

    def _count(self, *, objects: int) -> None:
        with self._stats_lock:
            stats = self._stats
            self._stats = dataclasses.replace(stats, calls=stats.calls + 1, objects=stats.objects + objects)

    def _segment_one(
        self,
        video_uri: str,
        frame_indices: Sequence[int],
        key_frame: int,
        box: tuple[float, float, float, float] | None,
        points: Sequence[tuple[float, float, int]] = (),
    ) -> Masklet:
        indices = sorted({int(i) for i in (*frame_indices, key_frame)})
        positive = [(x, y) for x, y, label in points if label == 1]
        negative = [(x, y) for x, y, label in points if label == 0]
        if box is None and not positive:
            raise ValueError("a point prompt needs at least one point on the object (label 1)")
        truth = _ground_truth(video_uri)
        if truth is not None:
            if box is not None:
                obj = _object_at_box(truth, key_frame, box)
            else:
                obj = _object_at_points(truth, key_frame, positive, negative)
            if obj is not None:
                empty = _rle(np.zeros((truth.height, truth.width), dtype=bool))
                masks = {i: self._degraded(obj.masks.get(i, empty)) for i in indices}
                return Masklet(masks=masks, key_frame=key_frame, box=_box_or_none(box), score=1.0)
            height, width = truth.height, truth.width
        else:
            info = probe(video_uri)
            height, width = info.height, info.width
        if box is None:  # no object under the points: the box around them, padded by a tenth of the short side
            pad = 0.1 * min(height, width)
            xs, ys = [x for x, _ in positive], [y for _, y in positive]
            box = (max(0.0, min(xs) - pad), max(0.0, min(ys) - pad), min(float(width), max(xs) + pad),
                   min(float(height), max(ys) + pad))
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


def _box_or_none(box: Sequence[float] | None) -> tuple[float, float, float, float] | None:
    return None if box is None else (float(box[0]), float(box[1]), float(box[2]), float(box[3]))


def _object_at_points(
    truth: SyntheticGroundTruth,
    key_frame: int,
    positive: Sequence[tuple[float, float]],
    negative: Sequence[tuple[float, float]] = (),
) -> SyntheticObject | None:
    """The synthetic object whose mask on `key_frame` holds the most `positive` points and no `negative` one (on a
    tie the topmost drawn: the last), if any holds one."""

    def hits(obj: SyntheticObject, chosen: Sequence[tuple[float, float]]) -> int:
        if key_frame not in obj.masks:
            return 0
        mask = decode_rle(obj.masks[key_frame])
        inside = [(int(y), int(x)) for x, y in chosen if 0 <= y < mask.shape[0] and 0 <= x < mask.shape[1]]
        return sum(bool(mask[row, column]) for row, column in inside)

    scored = [(hits(obj, positive), order, obj) for order, obj in enumerate(truth.objects) if not hits(obj, negative)]
    best = max(scored, key=lambda item: item[:2], default=None)
    return best[2] if best is not None and best[0] else None


def _object_at_box(truth: SyntheticGroundTruth, key_frame: int, box: Sequence[float]) -> SyntheticObject | None:
    """The object whose key-frame box overlaps `box` best (IoU >= 0.3), else the one whose box holds most of `box`
    (at least 60% of it: a detection of part of an occluded object)."""
    scored = [(box_iou(o.boxes[key_frame], box), o) for o in truth.objects if key_frame in o.boxes]
    if not scored:
        return None
    best_iou, best = max(scored, key=lambda pair: pair[0])
    if best_iou >= _MIN_BOX_IOU:
        return best
    area = max((box[2] - box[0]) * (box[3] - box[1]), 1e-9)
    held = [(_intersection(o.boxes[key_frame], box) / area, o) for _, o in scored]
    share, holder = max(held, key=lambda pair: pair[0])
    return holder if share >= _MIN_HELD else None


def _intersection(a: Sequence[float], b: Sequence[float]) -> float:
    return max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))


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
