"""The open-vocabulary grounder: transformers' Grounding DINO finds the best box for a noun on one frame.

The model and processor load on first use from `config.model` (a hub id on machines with a hub, or a local
directory) through `AutoModelForZeroShotObjectDetection` / `AutoProcessor`. With `config.random_weights` (asked
for explicitly: tests and demos) the tiny random model of `agents.backends.tiny_models` is built into a
temporary folder and loaded from there; its boxes are meaningless. The noun is lower-cased and ended with a period, the
text prompt format Grounding DINO was trained on. Detections below `box_threshold` (box score) or
`text_threshold` (token score) are dropped; the best remaining one is returned with its box clipped to the
frame, or None when nothing passes. A model that cannot be loaded is a `ConfigError`.
"""

from __future__ import annotations

import logging
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np

from agents.backends.base import Detection
from engine.config import GroundingDinoConfig
from engine.errors import ConfigError

log = logging.getLogger(__name__)
RANDOM_WEIGHTS_MODEL = "grounding-dino-tiny-random"


class GroundingDinoGrounder:
    """`Grounder` over transformers' Grounding DINO; see the module docstring."""

    kind = "grounding_dino"

    def __init__(self, config: GroundingDinoConfig) -> None:
        self.config = config
        self.model = config.model or RANDOM_WEIGHTS_MODEL
        self._lock = threading.Lock()
        self._detector: Any = None
        self._processor: Any = None
        self._random_folder: tempfile.TemporaryDirectory[str] | None = None

    def __repr__(self) -> str:
        return f"GroundingDinoGrounder(model={self.model!r}, device={self.config.device!r})"

    def ground(self, *, video_uri: str, frame_index: int, frame: np.ndarray, noun: str) -> Detection | None:
        import torch
        from PIL import Image

        self._ensure_loaded()
        height, width = frame.shape[:2]
        prompt = prompt_for(noun)
        inputs = self._processor(images=Image.fromarray(np.ascontiguousarray(frame)), text=prompt, return_tensors="pt")
        inputs = inputs.to(self.config.device)
        with torch.inference_mode():
            outputs = self._detector(**inputs)
        [found] = self._processor.post_process_grounded_object_detection(
            outputs,
            inputs["input_ids"],
            threshold=self.config.box_threshold,
            text_threshold=self.config.text_threshold,
            target_sizes=[(height, width)],
        )
        scores = found["scores"]
        if len(scores) == 0:
            return None
        best = int(torch.argmax(scores))
        x0, y0, x1, y1 = (float(v) for v in found["boxes"][best].tolist())
        box = (
            min(max(x0, 0.0), float(width)),
            min(max(y0, 0.0), float(height)),
            min(max(x1, 0.0), float(width)),
            min(max(y1, 0.0), float(height)),
        )
        if box[2] <= box[0] or box[3] <= box[1]:
            return None  # the box lies entirely outside the frame
        labels = found.get("text_labels") or found.get("labels") or []
        label = str(labels[best]).strip() if best < len(labels) and str(labels[best]).strip() else noun
        return Detection(box=box, score=float(scores[best]), label=label)

    def _ensure_loaded(self) -> None:
        with self._lock:
            if self._detector is not None:
                return
            from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

            source = self.config.model or self._random_model()
            try:
                processor = AutoProcessor.from_pretrained(source)
                detector = AutoModelForZeroShotObjectDetection.from_pretrained(source)
            except (OSError, ValueError, KeyError) as exc:
                raise ConfigError(f"grounding_dino cannot load {source!r}: {exc}") from exc
            self._detector = detector.to(self.config.device).eval()
            self._processor = processor

    def _random_model(self) -> str:
        """The folder of a freshly built tiny random Grounding DINO (config.random_weights), kept while this lives."""
        if not self.config.random_weights:
            raise ConfigError("grounding_dino: no model and random_weights not asked for")
        from agents.backends.tiny_models import build_tiny_grounding_dino

        log.warning("grounding_dino built with RANDOM weights (random_weights: true): its boxes are meaningless")
        self._random_folder = tempfile.TemporaryDirectory(prefix="grounding-dino-random-")
        return str(build_tiny_grounding_dino(Path(self._random_folder.name) / "model"))


def prompt_for(noun: str) -> str:
    """Grounding DINO's text format: lower case, one phrase ending with a period."""
    text = " ".join(noun.lower().split()).rstrip(".")
    return f"{text}."
