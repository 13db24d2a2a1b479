"""Inputs of `videorefer demo`: a deterministic synthetic corpus, optional user videos, and their manifest.

Synthetic clips go to `<root>/videos/synthetic/` (captions from the generator, ground truth in sidecars that
the fake grounder/segmenter use) and `<root>/videos/qa/` (the QA path: the ground-truth masks become the given
objects with referring expressions, as MeViS-style sources would supply). Each video of `--videos` is added
with the caption of its sidecar `<name>.txt`, or a generic caption. The manifest lists paths relative to the
root, so the same arguments on a new root give the same clips, ids and samples.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

VIDEO_SUFFIXES = (".mp4", ".mkv", ".mov", ".avi", ".webm", ".m4v")
GENERIC_CAPTION = "a person walks with a dog in the scene"
DEMO_CLIP_SIZE = {"width": 160, "height": 120, "num_frames": 24, "fps": 12.0}


def prepare_demo(root: str | Path, *, clips: int = 8, qa_clips: int | None = None, videos: str | Path | None = None,
                 seed: int = 0, clip_kwargs: dict[str, Any] | None = None) -> Path:
    """Write the demo videos and `<root>/manifest.jsonl`; return the manifest path."""
    from engine.synthetic import make_corpus

    root = Path(root)
    size = {**DEMO_CLIP_SIZE, **(clip_kwargs or {})}
    qa_clips = max(1, clips // 4) if qa_clips is None else qa_clips
    rows: list[dict[str, Any]] = []
    for clip in make_corpus(root / "videos" / "synthetic", clips, seed=seed, **size):
        rows.append({"video": _relative(clip.path, root), "caption": clip.ground_truth.caption, "source": "synthetic"})
    if qa_clips:
        for clip in make_corpus(root / "videos" / "qa", qa_clips, seed=seed + 10_000, **size):
            rows.append(_qa_row(clip, root))
    if videos is not None:
        rows.extend(user_video_rows(videos))
    manifest = root / "manifest.jsonl"
    temp = manifest.with_suffix(".jsonl.tmp")
    temp.write_text("".join(json.dumps(row, sort_keys=True) + "\n" for row in rows), encoding="utf-8")
    temp.replace(manifest)
    return manifest


def user_video_rows(videos: str | Path) -> list[dict[str, Any]]:
    """One manifest row per video file of a folder, captioned by its `.txt` sidecar or a generic caption."""
    folder = Path(videos)
    rows = []
    for path in sorted(p for p in folder.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES):
        sidecar = path.with_suffix(".txt")
        caption = sidecar.read_text(encoding="utf-8").strip() if sidecar.is_file() else ""
        rows.append({"video": str(path.resolve()), "caption": caption or GENERIC_CAPTION, "source": "user"})
    return rows


def _qa_row(clip: Any, root: Path) -> dict[str, Any]:
    truth = clip.ground_truth
    objects = [
        {
            "name": obj.name,
            "category": obj.category,
            "expression": f"the {obj.color} {obj.name}" + (" that stays still" if obj.is_static else " that moves"),
            "masks": {str(frame): rle.to_coco() for frame, rle in sorted(obj.masks.items())},
        }
        for obj in truth.objects
    ]
    video = _relative(clip.path, root)
    return {"video": video, "caption": truth.caption, "source": "synthetic-qa", "objects": objects}


def _relative(path: Path, root: Path) -> str:
    return Path(path).resolve().relative_to(root.resolve()).as_posix()
