"""Ground-truth masks to audit the engine against, read from the layouts they come in, keyed by video.

Three layouts (`read_truth(path, fmt="auto")` tells them apart; `fmt` forces one):

- `davis`: DAVIS's folders of palette PNGs, `DIR/<video>/<frame>.png` (or `DIR/Annotations/480p/<video>/...`,
  `DIR/Annotations_unsupervised/480p/<video>/...`), the pixel value being the object id (0 background).
  As davis2017-evaluation reads them, 255 (void) counts as background. Every id seen in any frame of a video is
  one object, present (possibly empty) on every annotated frame. The frame index is the file name's number
  (`00012.png` is frame 12), or the position in name order when names are not numbers.
- `rle-json`: COCO RLE in JSON, one file or a folder of `*.json`, each holding one of: the VideoRefer-700K list
  (`[{"video", "annotation": [{frame: {"segmentation": RLE}}, ...]}]`: each annotation entry is an object of that
  video; identical entries of several items are one object; null segmentations are frames without annotation);
  an SA-V annotation file (`{"video_id", "masklet": [[RLE per object] per annotated frame], "masklet_id"}`,
  annotated every 4th frame of the 24 fps video, so entry i is frame 4 i); or a plain mapping
  `{video: [{frame: RLE}, ...]}` / `{video: {object_id: {frame: RLE}}}` (an object may also be
  `{"name": noun, "masks": {frame: RLE}}`). RLE may be compressed, uncompressed or polygons (with the size given).
- `sidecar`: the synthetic clips' `<name>.gt.json` files (`engine.synthetic`), from a folder of them, or with no
  path at all: `SidecarTruth` reads the sidecar next to each video it is asked about.

A truth video is found for a clip by its video's name (`video_key`: the file name without its extension, or a
frame folder's name); when several truth videos share a name, the one whose recorded path ends the clip's video
path wins. Objects carry a noun (`name`), `category`, `color` and whether they stay still (`is_static`) when the
layout has them (sidecars do), for matching an object to a noun. Masks are `RleMask`, keyed by absolute frame index.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from engine.errors import ConfigError
from engine.masks import encode_rle, to_rle_mask
from engine.parsing import bounded, loads_json, structure_problem
from engine.types import RleMask

__all__ = [
    "TRUTH_FORMATS",
    "SidecarTruth",
    "TruthObject",
    "TruthSet",
    "TruthSource",
    "TruthVideo",
    "detect_format",
    "read_davis",
    "read_rle_json",
    "read_sidecars",
    "read_truth",
    "video_key",
]

TruthFormat = Literal["auto", "davis", "rle-json", "sidecar"]
TRUTH_FORMATS: tuple[str, ...] = ("auto", "davis", "rle-json", "sidecar")
SAV_FRAME_STRIDE = 4  # SA-V: annotated at 6 fps on 24 fps videos
_SIDECAR_SUFFIX = ".gt.json"
_VOID = 255
_FROZEN = {"frozen": True, "slots": True, "kw_only": True}


@dataclass(**_FROZEN)
class TruthObject:
    """One ground-truth object of a video: an id unique in the video, its noun and category when known, its masks."""

    object_id: str
    masks: Mapping[int, RleMask]
    name: str = ""
    category: str = ""
    color: str = ""
    is_static: bool | None = None  # None: the layout does not say (sidecars do)

    @property
    def frames(self) -> tuple[int, ...]:
        return tuple(sorted(self.masks))


@dataclass(**_FROZEN)
class TruthVideo:
    """The ground truth of one video: its key (name), the path the truth names for it, size, objects."""

    key: str
    video: str
    height: int
    width: int
    objects: tuple[TruthObject, ...]


class TruthSource(Protocol):
    """Anything that finds the ground truth of a video by its uri (None when it has none)."""

    format: str
    location: str

    def find(self, video_uri: str) -> TruthVideo | None: ...


@dataclass(**_FROZEN)
class TruthSet:
    """Ground truth read from files: truth videos by key."""

    format: str
    location: str
    videos: Mapping[str, tuple[TruthVideo, ...]] = field(default_factory=dict)

    def find(self, video_uri: str) -> TruthVideo | None:
        found = self.videos.get(video_key(video_uri), ())
        if len(found) <= 1:
            return found[0] if found else None
        uri = os.fspath(video_uri).replace(os.sep, "/")
        ending = [video for video in found if video.video and uri.endswith(video.video.replace(os.sep, "/"))]
        return ending[0] if len(ending) == 1 else None

    def __len__(self) -> int:
        return sum(len(videos) for videos in self.videos.values())


@dataclass(**_FROZEN)
class SidecarTruth:
    """The synthetic clips' own ground truth: the `.gt.json` sidecar next to each video."""

    format: str = "sidecar"
    location: str = "sidecars next to the videos"

    def find(self, video_uri: str) -> TruthVideo | None:
        from engine.synthetic import load_ground_truth

        try:
            truth = load_ground_truth(video_uri)
        except (OSError, ValueError, KeyError):
            return None
        return None if truth is None else _sidecar_video(truth, video_key(video_uri))


def video_key(uri: str | os.PathLike[str]) -> str:
    """The name a video is matched by: file name without extension (`a/b/dog.mp4` -> `dog`), or the folder name."""
    name = os.path.basename(os.fspath(uri).replace("\\", "/").rstrip("/"))
    if name.endswith(_SIDECAR_SUFFIX):
        return name[: -len(_SIDECAR_SUFFIX)]
    stem, dot, suffix = name.rpartition(".")
    return stem if dot and stem and suffix.isalnum() and not suffix.isdigit() else name


# ---------------------------------------------------------------- dispatch


def read_truth(path: str | os.PathLike[str] | None, *, fmt: TruthFormat = "auto") -> TruthSource:
    """The ground truth at `path` in layout `fmt` (see the module docstring); no path: the synthetic sidecars."""
    if fmt not in TRUTH_FORMATS:
        raise ConfigError(f"unknown truth format {fmt!r}; expected one of {', '.join(TRUTH_FORMATS)}")
    if path is None:
        if fmt not in ("auto", "sidecar"):
            raise ConfigError(f"truth format {fmt!r} needs a path")
        return SidecarTruth()
    location = Path(path)
    if not location.exists():
        raise ConfigError(f"ground truth {location} does not exist")
    fmt = detect_format(location) if fmt == "auto" else fmt
    readers = {"davis": read_davis, "rle-json": read_rle_json, "sidecar": read_sidecars}
    return readers[fmt](location)


def detect_format(path: Path) -> str:
    """`sidecar`, `rle-json` or `davis` from what `path` holds; a `ConfigError` when it is none of them."""
    if path.is_file():
        if path.name.endswith(_SIDECAR_SUFFIX):
            return "sidecar"
        if path.suffix.lower() == ".json":
            return "rle-json"
        raise ConfigError(f"{path}: not a ground-truth file (expected .json)")
    names = [child.name for child in path.iterdir()]
    if any(name.endswith(_SIDECAR_SUFFIX) for name in names):
        return "sidecar"
    if _davis_folder(path) is not None:
        return "davis"
    if any(name.lower().endswith(".json") for name in names):
        return "rle-json"
    raise ConfigError(
        f"{path}: no ground truth found (expected DAVIS PNG folders <video>/<frame>.png, RLE JSON files, "
        "or synthetic .gt.json sidecars)"
    )


def _truth_set(fmt: str, location: Path, videos: Iterable[TruthVideo]) -> TruthSet:
    grouped: dict[str, list[TruthVideo]] = {}
    for video in videos:
        grouped.setdefault(video.key, []).append(video)
    return TruthSet(format=fmt, location=str(location), videos={k: tuple(v) for k, v in sorted(grouped.items())})


# ---------------------------------------------------------------- DAVIS palette PNGs


def _davis_folder(path: Path) -> Path | None:
    """The folder whose sub-folders are the videos' PNG folders, or None."""
    candidates = [path / "Annotations" / "480p", path / "Annotations_unsupervised" / "480p", path]
    for folder in candidates:
        if folder.is_dir() and any(child.is_dir() and any(child.glob("*.png")) for child in folder.iterdir()):
            return folder
    return None


def read_davis(path: str | os.PathLike[str]) -> TruthSet:
    """DAVIS palette PNG folders (see the module docstring)."""
    root = Path(path)
    folder = _davis_folder(root)
    if folder is None:
        raise ConfigError(f"{root}: no DAVIS annotation folders (<video>/<frame>.png)")
    videos = []
    for video_dir in sorted(child for child in folder.iterdir() if child.is_dir()):
        pngs = sorted(video_dir.glob("*.png"))
        if pngs:
            videos.append(_davis_video(video_dir, pngs))
    return _truth_set("davis", root, videos)


def _davis_video(video_dir: Path, pngs: list[Path]) -> TruthVideo:
    from PIL import Image  # lazily: only DAVIS truth needs it

    numbered = all(png.stem.isdigit() for png in pngs)
    labels: dict[int, np.ndarray] = {}
    for position, png in enumerate(pngs):
        with Image.open(png) as image:
            if image.mode not in ("P", "L"):
                raise ConfigError(f"{png}: DAVIS masks are palette (P) or greyscale (L) PNGs, got mode {image.mode}")
            array = np.array(image)
        array = np.where(array == _VOID, 0, array)  # as davis2017-evaluation: void is background
        labels[int(png.stem) if numbered else position] = array
    labels = dict(sorted(labels.items()))
    shapes = {array.shape for array in labels.values()}
    if len(shapes) != 1:
        raise ConfigError(f"{video_dir}: annotation PNGs of different sizes {sorted(shapes)}")
    ids = sorted({int(v) for array in labels.values() for v in np.unique(array)} - {0})
    objects = tuple(
        TruthObject(
            object_id=str(object_id),
            masks={frame: RleMask.from_coco(encode_rle(array == object_id)) for frame, array in labels.items()},
        )
        for object_id in ids
    )
    height, width = shapes.pop()
    return TruthVideo(key=video_dir.name, video=video_dir.name, height=int(height), width=int(width), objects=objects)


# ---------------------------------------------------------------- RLE JSON


def read_rle_json(path: str | os.PathLike[str]) -> TruthSet:
    """RLE JSON: one file or a folder of `*.json` (700K lists, SA-V files, plain mappings; module docstring)."""
    location = Path(path)
    files = [location] if location.is_file() else sorted(p for p in location.glob("*.json") if p.is_file())
    if not files:
        raise ConfigError(f"{location}: no .json files")
    videos: list[TruthVideo] = []
    for file in files:
        try:
            data = loads_json(file.read_bytes(), str(file))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{file}: not readable JSON ({bounded(exc, 300)})") from None
        if (problem := structure_problem(data)) is not None:
            raise ConfigError(f"{file}: {problem}")
        videos.extend(_rle_videos(data, file))
    return _truth_set("rle-json", location, videos)


def _rle_videos(data: Any, file: Path) -> list[TruthVideo]:
    if isinstance(data, list):
        return _videorefer_700k(data, file)
    if isinstance(data, Mapping) and "masklet" in data:
        return [_sav_video(data, file)]
    if isinstance(data, Mapping):
        return [_mapped_video(str(video), objects, file) for video, objects in data.items()]
    raise ConfigError(f"{file}: expected a list of 700K items, an SA-V file or a mapping of videos")


def _videorefer_700k(items: list[Any], file: Path) -> list[TruthVideo]:
    from storage.videorefer_json import segmentation_to_rle

    per_video: dict[str, list[dict[int, RleMask]]] = {}
    for position, item in enumerate(items):
        if not isinstance(item, Mapping) or not isinstance(item.get("video"), str):
            raise ConfigError(f"{file}: item {position} has no video")
        height, width = item.get("height"), item.get("width")
        for annotation in item.get("annotation") or []:
            masks: dict[int, RleMask] = {}
            for frame, value in (annotation or {}).items():
                segmentation = _unwrap(value)
                if segmentation is None:
                    continue
                try:
                    masks[int(frame)] = segmentation_to_rle(segmentation, height, width)
                except Exception as exc:  # a broken mask makes the truth unusable: say where
                    raise ConfigError(f"{file}: item {position}, frame {frame}: {exc}") from exc
            objects = per_video.setdefault(item["video"], [])
            if masks and masks not in objects:
                objects.append(masks)
    return [_video(video, video, [(str(k), masks, "") for k, masks in enumerate(objects)]) for video, objects in
            per_video.items()]


def _sav_video(data: Mapping[str, Any], file: Path) -> TruthVideo:
    ids = [str(v) for v in data.get("masklet_id") or []]
    frames = data["masklet"]
    count = len(ids) or (len(frames[0]) if frames else 0)
    ids = ids or [str(k) for k in range(count)]
    height, width = data.get("video_height"), data.get("video_width")
    per_object: list[dict[int, RleMask]] = [{} for _ in ids]
    for position, row in enumerate(frames):
        if len(row) != len(ids):
            raise ConfigError(f"{file}: masklet entry {position} has {len(row)} masks for {len(ids)} objects")
        for k, rle in enumerate(row):
            if rle is not None:
                per_object[k][position * SAV_FRAME_STRIDE] = _rle(rle, height, width)
    video = str(data.get("video_id") or file.name.removesuffix(".json").removesuffix("_manual").removesuffix("_auto"))
    return _video(video, video, [(object_id, masks, "") for object_id, masks in zip(ids, per_object, strict=True)])


def _mapped_video(video: str, objects: Any, file: Path) -> TruthVideo:
    if isinstance(objects, Mapping):
        entries = list(objects.items())
    elif isinstance(objects, list):
        entries = [(str(k), value) for k, value in enumerate(objects)]
    else:
        raise ConfigError(f"{file}: the objects of {video!r} must be a list or a mapping")
    parsed = []
    for object_id, value in entries:
        name = ""
        masks = value
        if isinstance(value, Mapping) and "masks" in value:
            name, masks = str(value.get("name") or ""), value["masks"]
        if not isinstance(masks, Mapping):
            raise ConfigError(f"{file}: object {object_id!r} of {video!r} has no {{frame: RLE}} masks")
        frames = {int(frame): _rle(_unwrap(rle)) for frame, rle in masks.items() if _unwrap(rle) is not None}
        parsed.append((str(object_id), frames, name))
    return _video(video, video, parsed)


def _unwrap(value: Any) -> Any:
    """`{"segmentation": RLE}` (the 700K form) -> the RLE; a bare RLE (or None) as it is."""
    return value.get("segmentation") if isinstance(value, Mapping) and "size" not in value else value


def _rle(value: Any, height: Any = None, width: Any = None) -> RleMask:
    return to_rle_mask(value, height=int(height) if height else None, width=int(width) if width else None)


def _video(key_source: str, video: str, objects: list[tuple[str, dict[int, RleMask], str]]) -> TruthVideo:
    sizes = {(m.height, m.width) for _, masks, _ in objects for m in masks.values()}
    if len(sizes) > 1:
        raise ConfigError(f"ground truth of {video!r} has masks of different sizes {sorted(sizes)}")
    height, width = sizes.pop() if sizes else (0, 0)
    return TruthVideo(
        key=video_key(key_source),
        video=video,
        height=height,
        width=width,
        objects=tuple(
            TruthObject(object_id=object_id, masks=dict(sorted(masks.items())), name=name, category=name)
            for object_id, masks, name in objects
        ),
    )


# ---------------------------------------------------------------- synthetic sidecars


def read_sidecars(path: str | os.PathLike[str]) -> TruthSet:
    """Synthetic `.gt.json` sidecars: one file, or every sidecar of a folder."""
    from engine.synthetic import load_ground_truth

    location = Path(path)
    files = [location] if location.is_file() else sorted(location.glob(f"*{_SIDECAR_SUFFIX}"))
    videos = []
    for file in files:
        try:
            video_name = json.loads(file.read_text(encoding="utf-8"))["video"]
            truth = load_ground_truth(file.with_name(video_name))
        except (OSError, ValueError, KeyError) as exc:
            raise ConfigError(f"{file}: not a synthetic ground-truth sidecar ({exc})") from exc
        if truth is not None:
            videos.append(_sidecar_video(truth, video_key(file)))
    return _truth_set("sidecar", location, videos)


def _sidecar_video(truth: Any, key: str) -> TruthVideo:
    names = [obj.name for obj in truth.objects]
    objects = tuple(
        TruthObject(
            object_id=obj.name if names.count(obj.name) == 1 else f"{obj.name}-{k}",
            masks=obj.masks,
            name=obj.name,
            category=obj.category,
            color=obj.color,
            is_static=obj.is_static,
        )
        for k, obj in enumerate(truth.objects)
    )
    return TruthVideo(key=key, video=str(truth.video_path), height=truth.height, width=truth.width, objects=objects)
