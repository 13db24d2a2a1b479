"""Synthetic test clips: small H.264 videos of moving, textured objects with exact ground-truth masks and a caption.

The project has no model hub and no dataset downloads, so tests and demos need videos whose content is
known. `make_clip` renders a scene (a noisy background and a few coloured, striped or checkered shapes:
ball, box, star, car, kite), moves the objects along straight lines that bounce off the frame edges,
encodes the frames as a real H.264 mp4 with PyAV's bundled libx264, and writes a sidecar
`<name>.gt.json` with, per object, its noun, category, colour, whether it stays still, and its visible
mask (COCO RLE) and box on every frame. The first object is the caption's subject and always moves;
each later object may be static (probability 0.35). Objects may occlude each other: the masks are the
visible parts, and a layout is re-drawn until every object stays clearly visible on every frame.
Rendering is pure numpy from a seeded generator and encoding is single-threaded without mbtree, so the
same seed gives byte-identical mp4 files and sidecars. Boxes are `(x0, y0, x1, y1)` in pixel-edge coordinates
(`x1`, `y1` exclusive), like `engine.masks.bbox`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from engine.masks import encode_rle
from engine.types import RleMask

__all__ = [
    "COLORS",
    "SHAPES",
    "SyntheticClip",
    "SyntheticGroundTruth",
    "SyntheticObject",
    "load_ground_truth",
    "make_clip",
    "make_corpus",
    "render_scene",
    "sidecar_path",
]

_FROZEN = {"frozen": True, "slots": True, "kw_only": True}

# Colour names and RGB values far from each other and from the grey background, so that a colour
# still reads as itself after H.264 chroma subsampling.
COLORS: Mapping[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "blue": (40, 80, 230),
    "green": (40, 180, 60),
    "yellow": (235, 215, 40),
    "purple": (150, 60, 200),
    "orange": (245, 140, 30),
}

# noun -> (category, verb used when it moves)
SHAPES: Mapping[str, tuple[str, str]] = {
    "ball": ("ball", "rolls"),
    "box": ("box", "slides"),
    "star": ("star", "floats"),
    "car": ("car", "drives"),
    "kite": ("kite", "glides"),
}

_STATIC_PROBABILITY = 0.35
_MIN_VISIBLE_FRACTION = 0.3
_MIN_VISIBLE_PIXELS = 24
_LAYOUT_ATTEMPTS = 200


@dataclass(**_FROZEN)
class SyntheticObject:
    """One drawn object: its noun (`name`), category, colour name, and visible mask and box on every frame."""

    name: str
    category: str
    color: str
    is_static: bool
    masks: Mapping[int, RleMask]
    boxes: Mapping[int, tuple[float, float, float, float]]


@dataclass(**_FROZEN)
class SyntheticGroundTruth:
    """Everything known about a synthetic clip; `objects[0]` is the caption's subject."""

    video_path: str
    caption: str
    width: int
    height: int
    num_frames: int
    fps: float
    objects: tuple[SyntheticObject, ...]


@dataclass(**_FROZEN)
class SyntheticClip:
    """A written synthetic mp4 and its ground truth."""

    path: Path
    ground_truth: SyntheticGroundTruth


@dataclass(**_FROZEN)
class _ObjectPlan:
    name: str
    color: str
    pattern: str
    size: float
    start: tuple[float, float]
    velocity: tuple[float, float]
    is_static: bool


def sidecar_path(video_path: str | os.PathLike[str]) -> Path:
    """The ground-truth sidecar of a video: `<path without .mp4>.gt.json`."""
    path = Path(video_path)
    return path.with_name(path.stem + ".gt.json") if path.suffix else path.with_name(path.name + ".gt.json")


def make_clip(
    path: str | os.PathLike[str],
    *,
    seed: int,
    num_frames: int = 32,
    width: int = 256,
    height: int = 192,
    fps: float = 12.0,
    num_objects: int = 2,
    enters_at: int = 0,
) -> SyntheticClip:
    """Render a scene from `seed`, write it as an H.264 mp4 at `path` and its sidecar next to it.

    `enters_at > 0` keeps the last object out of the frames before it (it enters the clip there: empty masks and no
    box before), for objects that enter after the first frame.

    Both files are written to a temporary name and renamed into place, so a killed run never leaves a
    half-written clip behind. `width` and `height` must be even (yuv420p).
    """
    path = Path(path)
    frames, objects, caption = render_scene(
        seed=seed, num_frames=num_frames, width=width, height=height, num_objects=num_objects, enters_at=enters_at
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_h264(path, frames, fps)
    ground_truth = SyntheticGroundTruth(
        video_path=str(path),
        caption=caption,
        width=width,
        height=height,
        num_frames=num_frames,
        fps=float(fps),
        objects=objects,
    )
    _write_json_atomic(sidecar_path(path), _ground_truth_to_json(ground_truth, video_name=path.name))
    return SyntheticClip(path=path, ground_truth=ground_truth)


def make_corpus(
    directory: str | os.PathLike[str], n: int, *, seed: int = 0, **clip_kwargs: Any
) -> list[SyntheticClip]:
    """Write `n` clips `clip-<seed>-<index>.mp4` into `directory`; clip `i` uses seed `seed * 100003 + i`.

    Object counts vary from clip to clip (1 to `num_objects`, default up to 3) unless `num_objects`
    is given. The same arguments always give byte-identical files.
    """
    if n < 0:
        raise ValueError(f"make_corpus needs n >= 0, got {n}")
    directory = Path(directory)
    fixed_count = clip_kwargs.pop("num_objects", None)
    clips = []
    for index in range(n):
        clip_seed = seed * 100003 + index
        count = fixed_count if fixed_count is not None else 1 + int(np.random.default_rng(clip_seed).integers(0, 3))
        clips.append(
            make_clip(directory / f"clip-{seed}-{index:05d}.mp4", seed=clip_seed, num_objects=count, **clip_kwargs)
        )
    return clips


def sidecar_url(video_url: str) -> str:
    """The sidecar of a video named by a URL (`s3://b/x/clip.mp4` -> `s3://b/x/clip.gt.json`)."""
    folder, _, name = video_url.rpartition("/")
    return f"{folder}/{sidecar_path(name).name}"


def load_ground_truth(video_path: str | os.PathLike[str]) -> SyntheticGroundTruth | None:
    """The ground truth of a synthetic clip, read from its sidecar (beside a local file or a URL); None when the
    video has no sidecar."""
    from engine.remote import is_url, open_remote

    if is_url(str(video_path)):
        try:
            with open_remote(sidecar_url(str(video_path))) as handle:
                data = json.loads(handle.read())
        except FileNotFoundError:
            return None
    else:
        sidecar = sidecar_path(video_path)
        if not sidecar.is_file():
            return None
        data = json.loads(sidecar.read_text())
    objects = tuple(
        SyntheticObject(
            name=item["name"],
            category=item["category"],
            color=item["color"],
            is_static=bool(item["is_static"]),
            masks={
                int(frame): RleMask(height=data["height"], width=data["width"], counts=counts)
                for frame, counts in item["masks"].items()
            },
            boxes={int(frame): tuple(float(v) for v in box) for frame, box in item["boxes"].items()},
        )
        for item in data["objects"]
    )
    return SyntheticGroundTruth(
        video_path=str(video_path),
        caption=data["caption"],
        width=int(data["width"]),
        height=int(data["height"]),
        num_frames=int(data["num_frames"]),
        fps=float(data["fps"]),
        objects=objects,
    )


def moving_patch_frames(rng: np.random.Generator, *, num_frames: int, height: int, width: int) -> np.ndarray:
    """uint8 `[num_frames, height, width, 3]` frames that JPEG-compress like real ones (a smooth coloured background,
    a moving flat patch, sensor-like noise): the pixels of the storage and loader benchmarks, no masks needed."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    phase = rng.uniform(0, 6.28, size=3).astype(np.float32)
    base = np.stack([np.sin(xs / 40 + phase[0]), np.cos(ys / 55 + phase[1]), np.sin((xs + ys) / 70 + phase[2])], -1)
    frames = []
    for mask in moving_patch_masks(num_frames=num_frames, height=height, width=width):
        frame = (base + 1) * 100
        frame[mask] = rng.uniform(0, 255, size=3)
        frame += rng.normal(0, 4, size=frame.shape).astype(np.float32)
        frames.append(np.clip(frame, 0, 255).astype(np.uint8))
    return np.stack(frames)


def moving_patch_masks(*, num_frames: int, height: int, width: int) -> np.ndarray:
    """bool `[num_frames, height, width]`: where `moving_patch_frames` draws its patch on each frame."""
    masks = np.zeros((num_frames, height, width), bool)
    for t in range(num_frames):
        y, x = 40 + 8 * t, 60 + 10 * t
        masks[t, y : y + 80, x : x + 90] = True
    return masks


def render_scene(
    *, seed: int, num_frames: int = 32, width: int = 256, height: int = 192, num_objects: int = 2, enters_at: int = 0
) -> tuple[np.ndarray, tuple[SyntheticObject, ...], str]:
    """Render the frames `[T, H, W, 3]` uint8 RGB, the objects with exact visible masks, and the caption (the last
    object is absent before frame `enters_at`)."""
    _check_scene_args(num_frames=num_frames, width=width, height=height, num_objects=num_objects)
    rng = np.random.default_rng(seed)
    background = _background(rng, height, width)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32) + np.float32(0.5)
    for _ in range(_LAYOUT_ATTEMPTS):
        plans = _plan_objects(rng, num_objects, width, height, num_frames)
        drawn = _draw(plans, background, xs, ys, num_frames, enters_at)
        if drawn is not None:
            frames, visible = drawn
            break
    else:
        raise ValueError(f"could not lay out {num_objects} visible objects in a {width}x{height} frame")
    objects = tuple(
        SyntheticObject(
            name=plan.name,
            category=SHAPES[plan.name][0],
            color=plan.color,
            is_static=plan.is_static,
            masks={t: RleMask.from_coco(encode_rle(visible[k][t])) for t in range(num_frames)},
            boxes={t: _box(visible[k][t]) for t in range(num_frames) if visible[k][t].any()},
        )
        for k, plan in enumerate(plans)
    )
    return frames, objects, _caption(plans)


# ------------------------------------------------------------------------------------------ scene plan


def _check_scene_args(*, num_frames: int, width: int, height: int, num_objects: int) -> None:
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if width < 32 or height < 32 or width % 2 or height % 2:
        raise ValueError(f"width and height must be even and >= 32, got {width}x{height}")
    if not 1 <= num_objects <= len(SHAPES):
        raise ValueError(f"num_objects must be in 1..{len(SHAPES)}, got {num_objects}")


def _plan_objects(
    rng: np.random.Generator, num_objects: int, width: int, height: int, num_frames: int
) -> list[_ObjectPlan]:
    names = [str(v) for v in rng.permutation(list(SHAPES))[:num_objects]]
    colors = [str(v) for v in rng.permutation(list(COLORS))[:num_objects]]
    short_side = min(width, height)
    plans = []
    for index, (name, color) in enumerate(zip(names, colors, strict=True)):
        size = float(short_side * rng.uniform(0.13, 0.19))  # half-extent of the shape, pixels
        start = (float(rng.uniform(size, width - size)), float(rng.uniform(size, height - size)))
        is_static = index > 0 and bool(rng.random() < _STATIC_PROBABILITY)
        # Fast enough to travel a good part of the frame in a short clip, slow enough to track.
        speed = float(rng.uniform(0.012, 0.025) * short_side * 32 / max(num_frames, 8))
        angle = float(rng.uniform(0, 2 * np.pi))
        velocity = (0.0, 0.0) if is_static else (speed * np.cos(angle), speed * np.sin(angle))
        pattern = str(rng.choice(["stripes", "checker", "dots"]))
        plans.append(
            _ObjectPlan(
                name=name, color=color, pattern=pattern, size=size, start=start, velocity=velocity, is_static=is_static
            )
        )
    return plans


def _position(plan: _ObjectPlan, t: int, width: int, height: int) -> tuple[float, float]:
    """Centre at frame `t`: straight motion reflected off the frame edges (the shape stays inside)."""
    return (
        _bounce(plan.start[0] + plan.velocity[0] * t, plan.size, width - plan.size),
        _bounce(plan.start[1] + plan.velocity[1] * t, plan.size, height - plan.size),
    )


def _bounce(value: float, low: float, high: float) -> float:
    span = high - low
    if span <= 0:
        return low
    phase = (value - low) % (2 * span)
    return low + (phase if phase <= span else 2 * span - phase)


def _caption(plans: list[_ObjectPlan]) -> str:
    subject, others = plans[0], plans[1:]
    verb = SHAPES[subject.name][1]
    text = f"{_article(subject.color)} {subject.color} {subject.name} {verb}"
    if not others:
        return text + " across the frame"
    text += f" past {_article(others[0].color)} {others[0].color} {others[0].name}"
    for other in others[1:]:
        text += f" and {_article(other.color)} {other.color} {other.name}"
    return text


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


# ------------------------------------------------------------------------------------------ drawing


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Grey, gently varying, noisy backdrop: texture for the codec, far from every object colour."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    wave = 12 * np.sin(xs / 9.0 + rng.uniform(0, 6)) * np.cos(ys / 13.0 + rng.uniform(0, 6))
    noise = rng.normal(0, 6, size=(height, width)).astype(np.float32)
    grey = np.clip(120 + wave + noise, 0, 255)
    return np.repeat(grey[..., None], 3, axis=2).astype(np.float32)


def _draw(
    plans: list[_ObjectPlan], background: np.ndarray, xs: np.ndarray, ys: np.ndarray, num_frames: int,
    enters_at: int = 0,
) -> tuple[np.ndarray, list[np.ndarray]] | None:
    """Draw every frame (later objects on top); None when some object is hidden too much on some frame."""
    height, width = xs.shape
    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    visible = [np.zeros((num_frames, height, width), dtype=bool) for _ in plans]
    for t in range(num_frames):
        canvas = background.copy()
        shapes = []
        for k, plan in enumerate(plans):
            if k == len(plans) - 1 and t < enters_at:
                shapes.append(np.zeros((height, width), dtype=bool))  # not entered yet
                continue
            cx, cy = _position(plan, t, width, height)
            shape = _shape_mask(plan.name, cx, cy, plan.size, xs, ys)
            canvas[shape] = _textured(plan, cx, cy, xs[shape], ys[shape])
            shapes.append(shape)
        covered = np.zeros((height, width), dtype=bool)
        for k in range(len(plans) - 1, -1, -1):
            visible_now = shapes[k] & ~covered
            full_area = int(shapes[k].sum())
            area_now = int(visible_now.sum())
            if full_area and area_now < max(_MIN_VISIBLE_PIXELS, _MIN_VISIBLE_FRACTION * full_area):
                return None
            visible[k][t] = visible_now
            covered |= shapes[k]
        frames[t] = np.clip(canvas, 0, 255).astype(np.uint8)
    return frames, visible


def _textured(plan: _ObjectPlan, cx: float, cy: float, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Object colour modulated by a pattern fixed to the object, so it moves with it and survives H.264."""
    u, v = xs - cx, ys - cy
    if plan.pattern == "stripes":
        light = (np.floor((u + v) / 5.0) % 2) == 0
    elif plan.pattern == "checker":
        light = ((np.floor(u / 5.0) + np.floor(v / 5.0)) % 2) == 0
    else:
        light = ((u % 7.0) - 3.5) ** 2 + ((v % 7.0) - 3.5) ** 2 > 4.0
    shade = np.where(light, 1.0, 0.72).astype(np.float32)
    return np.asarray(COLORS[plan.color], dtype=np.float32)[None, :] * shade[:, None]


def _shape_mask(name: str, cx: float, cy: float, size: float, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Pixels whose centres lie inside the shape `name` centred at (cx, cy) with half-extent `size`."""
    u, v = xs - cx, ys - cy
    if name == "ball":
        return u * u + v * v <= size * size
    if name == "box":
        return (np.abs(u) <= size * 0.9) & (np.abs(v) <= size * 0.8)
    if name == "star":
        angles = np.pi / 2 + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, size, size * 0.45)
        return _inside_polygon(u, v, radii * np.cos(angles), -radii * np.sin(angles))
    if name == "kite":
        return _inside_polygon(u, v, np.array([0, size * 0.7, 0, -size * 0.7]), np.array([-size, 0, size, 0]) * 1.0)
    if name == "car":
        body = (np.abs(u) <= size) & (v >= -size * 0.1) & (v <= size * 0.45)
        cabin = _inside_polygon(
            u,
            v,
            np.array([-size * 0.55, -size * 0.3, size * 0.3, size * 0.55]),
            np.array([-size * 0.1, -size * 0.55, -size * 0.55, -size * 0.1]),
        )
        wheel_r = size * 0.27
        wheels = ((u + size * 0.55) ** 2 + (v - size * 0.45) ** 2 <= wheel_r**2) | (
            (u - size * 0.55) ** 2 + (v - size * 0.45) ** 2 <= wheel_r**2
        )
        return body | cabin | wheels
    raise ValueError(f"unknown synthetic shape {name!r}")


def _inside_polygon(u: np.ndarray, v: np.ndarray, px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """Even-odd rule point-in-polygon test of every point (u, v) against the polygon (px, py)."""
    inside = np.zeros(u.shape, dtype=bool)
    count = len(px)
    for i in range(count):
        x0, y0, x1, y1 = px[i], py[i], px[(i + 1) % count], py[(i + 1) % count]
        if y0 == y1:
            continue
        crosses = (v >= min(y0, y1)) & (v < max(y0, y1))
        x_at = x0 + (v - y0) * (x1 - x0) / (y1 - y0)
        inside ^= crosses & (u < x_at)
    return inside


def _box(mask: np.ndarray) -> tuple[float, float, float, float]:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return (float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1))


# ------------------------------------------------------------------------------------------ writing


def _write_h264(path: Path, frames: np.ndarray, fps: float) -> None:
    """Encode RGB frames as H.264 yuv420p in mp4 with libx264, single-threaded so the bytes are reproducible."""
    import av  # lazily: PyAV is heavy and only needed when a clip is written

    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    rate = Fraction(fps).limit_denominator(1001)
    try:
        with av.open(str(temporary), mode="w", format="mp4") as container:
            stream = container.add_stream(
                "libx264",
                rate=rate,
                # mbtree's lookahead reads uninitialised padding rows when the height is not a multiple of
                # 16, which made about 1 encode in 15 differ; without it (and single-threaded) bytes repeat.
                options={"crf": "18", "preset": "veryfast", "threads": "1", "g": "12", "x264-params": "no-mbtree=1"},
            )
            stream.width = frames.shape[2]
            stream.height = frames.shape[1]
            stream.pix_fmt = "yuv420p"
            stream.thread_count = 1
            for frame in frames:
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _ground_truth_to_json(ground_truth: SyntheticGroundTruth, *, video_name: str) -> dict[str, Any]:
    # The video is named relative to the sidecar, so a corpus written twice into two folders has
    # byte-identical sidecars.
    return {
        "video": video_name,
        "caption": ground_truth.caption,
        "width": ground_truth.width,
        "height": ground_truth.height,
        "num_frames": ground_truth.num_frames,
        "fps": ground_truth.fps,
        "objects": [
            {
                "name": obj.name,
                "category": obj.category,
                "color": obj.color,
                "is_static": obj.is_static,
                "masks": {str(t): rle.counts for t, rle in sorted(obj.masks.items())},
                "boxes": {str(t): list(box) for t, box in sorted(obj.boxes.items())},
            }
            for obj in ground_truth.objects
        ],
    }


def _write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temporary.write_text(json.dumps(payload, sort_keys=True, separators=(",", ":")))
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
