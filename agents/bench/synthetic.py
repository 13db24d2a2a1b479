"""Small synthetic VideoRefer-Bench files in the published format, over synthetic clips with known objects.

Used by tests, benchmarks and offline demos (there is no benchmark download here): each entry gets its own
`engine.synthetic` clip, masks on up to 32 uniformly sampled frames from the clip's ground truth, and text that
is true of the clip (Bench-D: a reference caption naming the object's colour and motion; Bench-Q: a colour
question with four options, types cycling through the five published ones). Bench-Q entries alternate between
an mp4 and a folder of JPEG frames, as the real benchmark mixes both (MeViS/DAVIS frame folders).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from agents.bench.files import Q_TYPES

_MASK_FRAMES = 32  # the published benchmark stores masks on 32 uniformly sampled frames


def make_synthetic_bench(
    directory: str | Path,
    *,
    kind: str,
    num_items: int = 4,
    seed: int = 0,
    num_frames: int = 24,
    width: int = 64,
    height: int = 48,
    frame_folders: bool = True,
) -> Path:
    """Write `VideoRefer-Bench-{D,Q}.json` and its videos under `directory`; returns the JSON path.

    Videos are referenced relative to `directory`, which is therefore the data root.
    """
    from engine.synthetic import make_clip
    from engine.video import n_uniform_frames

    if kind not in ("d", "q"):
        raise ValueError(f"kind must be 'd' or 'q', got {kind!r}")
    root = Path(directory)
    entries: list[dict[str, Any]] = []
    type_names = list(Q_TYPES)
    for index in range(num_items):
        clip = make_clip(root / "videos" / f"{kind}{index:03d}.mp4", seed=seed * 1000 + index,
                         num_frames=num_frames, width=width, height=height, num_objects=2)
        truth = clip.ground_truth
        frames = n_uniform_frames(truth.num_frames, _MASK_FRAMES)
        video = clip.path.relative_to(root).as_posix()
        if kind == "q" and frame_folders and index % 2 == 1:
            video = _as_frame_folder(clip.path, root / "frames" / f"q{index:03d}", truth.num_frames)
        frame_idx = frames[len(frames) // 2]
        if kind == "d":
            obj = truth.objects[0]
            motion = "stays still" if obj.is_static else "moves across the frame"
            entries.append({
                "id": index, "video": video, "frame_idx": str(frame_idx),
                "caption": f"A {obj.color} {obj.name} on a grey background. The {obj.name} {motion}.",
                "annotation": [_annotation(obj, frames)],
            })
        else:
            objects = truth.objects[: 1 + index % 2]  # one or two referred objects
            names = [f"<object{n}>" for n in range(len(objects))]
            regions = " and ".join(f"{name}<region>" for name in names)
            target = objects[0]
            colors = _options(target.color, index)
            letter = "ABCD"[colors.index(target.color)]
            entries.append({
                "id": index, "video": video, "frame_idx": str(frame_idx),
                "Question": f"Looking at {regions}, what colour is {names[0]}?",
                "type": type_names[index % len(type_names)],
                "options": [f"({'ABCD'[n]}) {color}" for n, color in enumerate(colors)],
                "Answer": f"({letter}) {target.color}",
                "annotation": [_annotation(obj, frames) for obj in objects],
            })
    path = root / f"VideoRefer-Bench-{kind.upper()}.json"
    path.write_text(json.dumps(entries, indent=1))
    return path


def _annotation(obj: Any, frames: list[int]) -> dict[str, Any]:
    return {str(f): {"segmentation": obj.masks[f].to_coco()} for f in frames if f in obj.masks}


def _options(answer: str, index: int) -> list[str]:
    from engine.synthetic import COLORS

    others = [c for c in COLORS if c != answer][:3]
    colors = [answer, *others]
    shift = index % 4  # the right answer is not always (A)
    return colors[shift:] + colors[:shift]


def _as_frame_folder(video: Path, folder: Path, num_frames: int) -> str:
    from PIL import Image

    from engine.video import read_frames

    folder.mkdir(parents=True, exist_ok=True)
    for number, frame in enumerate(read_frames(video, list(range(num_frames)))):
        Image.fromarray(frame).save(folder / f"{number:05d}.jpg", quality=95)
    video.unlink()
    return folder.relative_to(folder.parents[1]).as_posix()
