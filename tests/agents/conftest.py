"""Shared fixtures of the agent tests: a small synthetic corpus (real H.264 clips with known objects) as clips."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from engine.ids import clip_id
from engine.synthetic import SyntheticClip, make_clip, make_corpus
from engine.types import Clip

CLIP_FRAMES = 12
CLIP_WIDTH = 128
CLIP_HEIGHT = 96


@dataclass(frozen=True)
class SyntheticCase:
    clip: Clip
    synthetic: SyntheticClip


def user_text(payload: Mapping[str, Any]) -> str:
    """The text of the user message of an OpenAI chat-completions request body (as a stub server sees it)."""
    content = payload["messages"][1]["content"]
    if isinstance(content, str):
        return content
    return " ".join(part.get("text", "") for part in content if part.get("type") == "text")


def as_clip(synthetic: SyntheticClip) -> Clip:
    truth = synthetic.ground_truth
    return Clip(
        clip_id=clip_id(str(synthetic.path), None, None),
        video_uri=str(synthetic.path),
        caption=truth.caption,
        fps=truth.fps,
        width=truth.width,
        height=truth.height,
        num_frames=truth.num_frames,
        source="synthetic",
    )


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("agents-corpus")


@pytest.fixture(scope="session")
def cases(corpus_dir: Path) -> list[SyntheticCase]:
    """Six synthetic clips with one to three moving objects each."""
    corpus = make_corpus(corpus_dir / "main", 6, seed=7, num_frames=CLIP_FRAMES, width=CLIP_WIDTH, height=CLIP_HEIGHT)
    return [SyntheticCase(clip=as_clip(item), synthetic=item) for item in corpus]


@pytest.fixture(scope="session")
def clips(cases: list[SyntheticCase]) -> list[Clip]:
    return [case.clip for case in cases]


@pytest.fixture(scope="session")
def static_case(corpus_dir: Path) -> SyntheticCase:
    """A clip in which one object never moves (the first seed that gives one)."""
    for seed in range(200):
        path = corpus_dir / "static" / f"static-{seed}.mp4"
        synthetic = make_clip(
            path, seed=seed, num_frames=CLIP_FRAMES, width=CLIP_WIDTH, height=CLIP_HEIGHT, num_objects=3
        )
        if any(obj.is_static for obj in synthetic.ground_truth.objects):
            return SyntheticCase(clip=as_clip(synthetic), synthetic=synthetic)
    raise AssertionError("no synthetic seed below 200 gave a static object")
