"""Inputs of `videorefer demo`: a deterministic synthetic corpus, optional user videos, and their manifest.

Synthetic clips go to `<root>/videos/synthetic/` (captions from the generator, ground truth in sidecars that
the fake grounder/segmenter use) and `<root>/videos/qa/` (the QA path: the ground-truth masks become the given
objects with referring expressions, as MeViS-style sources would supply). Each video of `--videos` is added
with the caption of its sidecar `<name>.txt`; a video without one stops the demo with a message naming it (the
engine's analyzer works from captions: a placeholder would make every clip about the same objects). The manifest
lists paths relative to the root, so the same arguments on a new root give the same clips, ids and samples.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

VIDEO_SUFFIXES = (".mp4", ".mkv", ".mov", ".avi", ".webm", ".m4v")
DEMO_CLIP_SIZE = {"width": 160, "height": 120, "num_frames": 24, "fps": 12.0}


def prepare_demo(root: str | Path, *, clips: int = 8, qa_clips: int | None = None, videos: str | Path | None = None,
                 seed: int = 0, clip_kwargs: dict[str, Any] | None = None) -> Path:
    """Write the demo videos and `<root>/manifest.jsonl`; return the manifest path."""
    from engine.synthetic import make_corpus

    root = Path(root)
    size = {**DEMO_CLIP_SIZE, **(clip_kwargs or {})}
    qa_clips = max(1, clips // 4) if qa_clips is None else qa_clips
    user_rows = user_video_rows(videos) if videos is not None else []  # before any work: uncaptioned videos stop
    rows: list[dict[str, Any]] = []
    for clip in make_corpus(root / "videos" / "synthetic", clips, seed=seed, **size):
        rows.append({"video": _relative(clip.path, root), "caption": clip.ground_truth.caption, "source": "synthetic"})
    if qa_clips:
        for clip in make_corpus(root / "videos" / "qa", qa_clips, seed=seed + 10_000, **size):
            rows.append(_qa_row(clip, root))
    rows.extend(user_rows)
    manifest = root / "manifest.jsonl"
    temp = manifest.with_suffix(".jsonl.tmp")
    temp.write_text("".join(json.dumps(row, sort_keys=True) + "\n" for row in rows), encoding="utf-8")
    temp.replace(manifest)
    return manifest


def user_video_rows(videos: str | Path) -> list[dict[str, Any]]:
    """One manifest row per video file of a folder, captioned by its `.txt` sidecar.

    Videos without a caption are a `ConfigError` naming them (never a silent placeholder caption).
    """
    from engine.errors import ConfigError

    folder = Path(videos)
    rows, uncaptioned = [], []
    for path in sorted(p for p in folder.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES):
        sidecar = path.with_suffix(".txt")
        caption = sidecar.read_text(encoding="utf-8").strip() if sidecar.is_file() else ""
        if not caption:
            uncaptioned.append(path.name)
        rows.append({"video": str(path.resolve()), "caption": caption, "source": "user"})
    if uncaptioned:
        raise ConfigError(
            f"{len(uncaptioned)} video(s) of {folder} have no caption ({', '.join(uncaptioned[:5])}"
            f"{', ...' if len(uncaptioned) > 5 else ''}): write one sentence into <name>.txt next to each, or ingest "
            "them with a manifest that has a caption column (`videorefer ingest --manifest`)"
        )
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
