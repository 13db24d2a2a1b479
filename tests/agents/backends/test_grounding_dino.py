"""GroundingDinoGrounder on a tiny random Grounding DINO built offline: the real code path on CPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agents.backends.grounding_dino import GroundingDinoGrounder, prompt_for
from agents.backends.tiny_models import build_tiny_grounding_dino
from engine.config import GroundingDinoConfig
from engine.errors import ConfigError


@pytest.fixture(scope="module")
def tiny_dino(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_grounding_dino(tmp_path_factory.mktemp("models") / "tiny-dino")


@pytest.fixture(scope="module")
def frame() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, (48, 72, 3), dtype=np.uint8)


def test_best_detection_is_a_box_inside_the_frame(tiny_dino: Path, frame: np.ndarray) -> None:
    grounder = GroundingDinoGrounder(
        GroundingDinoConfig(model=str(tiny_dino), box_threshold=0.0, text_threshold=0.0)
    )
    detection = grounder.ground(video_uri="unused.mp4", frame_index=0, frame=frame, noun="Red Ball")
    assert detection is not None
    x0, y0, x1, y1 = detection.box
    assert 0 <= x0 < x1 <= 72 and 0 <= y0 < y1 <= 48
    assert 0.0 < detection.score <= 1.0
    again = grounder.ground(video_uri="unused.mp4", frame_index=0, frame=frame, noun="Red Ball")
    assert again == detection  # eval mode: deterministic


def test_thresholds_above_every_score_find_nothing(tiny_dino: Path, frame: np.ndarray) -> None:
    grounder = GroundingDinoGrounder(GroundingDinoConfig(model=str(tiny_dino), box_threshold=1.0))
    assert grounder.ground(video_uri="unused.mp4", frame_index=0, frame=frame, noun="dog") is None


def test_missing_model_is_a_config_error(tmp_path: Path, frame: np.ndarray) -> None:
    grounder = GroundingDinoGrounder(GroundingDinoConfig(model=str(tmp_path / "absent")))
    with pytest.raises(ConfigError):
        grounder.ground(video_uri="unused.mp4", frame_index=0, frame=frame, noun="dog")


def test_prompt_format() -> None:
    assert prompt_for("  The Red  Ball. ") == "the red ball."


def test_random_weights_build_a_tiny_model_only_when_asked_for(frame: np.ndarray) -> None:
    with pytest.raises(ValueError, match="random_weights"):
        GroundingDinoConfig()  # no model and no explicit random weights: refused at validation
    grounder = GroundingDinoGrounder(GroundingDinoConfig(random_weights=True, box_threshold=0.0, text_threshold=0.0))
    assert grounder.model == "grounding-dino-tiny-random"
    detection = grounder.ground(video_uri="unused.mp4", frame_index=0, frame=frame, noun="dog")
    assert detection is not None and 0 <= detection.box[0] < detection.box[2] <= 72
