"""The one place that turns a backend config into a backend: an explicit match on `kind`, heavy imports deferred.

`build_chat_backend`, `build_grounder` and `build_segmenter` accept the pydantic configs of `engine.config`
(or the same thing as a plain mapping, validated here). Each branch imports its module only when chosen, so
building a fake never loads torch, transformers, sam2 or openai. An unknown kind or an invalid mapping is a
`ConfigError`, raised before any model work. A backend that cannot load (a model kind whose packages are missing
or fail to import, weights named in the config that are not there) is a `BackendLoadError`, also raised here at
build time: the run stops at once with one line instead of rejecting every item.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from typing import Any

from pydantic import TypeAdapter, ValidationError

from agents.backends.base import ChatBackend, Grounder, Segmenter
from engine.config import ChatBackendConfig, GrounderConfig, SegmenterConfig
from engine.errors import BackendLoadError, ConfigError


def build_chat_backend(config: ChatBackendConfig | Mapping[str, Any]) -> ChatBackend:
    """The chat backend of `config.kind`: fake, replay (with its inner backend), openai, local."""
    config = _validated(ChatBackendConfig, config, "chat backend")
    match config.kind:
        case "fake":
            from agents.backends.fake_chat import FakeChatBackend

            return FakeChatBackend(config)
        case "replay":
            from agents.backends.replay import ReplayChatBackend

            # A strict replay never calls its inner backend, so it is not built (no model loaded, no server needed).
            inner = build_chat_backend(config.inner) if config.inner is not None and config.mode != "strict" else None
            return ReplayChatBackend(config, inner)
        case "openai":
            from agents.backends.openai_chat import OpenAIChatBackend

            return OpenAIChatBackend(config)
        case "local":
            _require("local chat backend", "torch", "transformers")
            _weights("local chat backend", "model", config.model)
            from agents.backends.local_chat import LocalChatBackend

            return LocalChatBackend(config)
        case other:
            raise ConfigError(f"unknown chat backend kind {other!r}")


def build_grounder(config: GrounderConfig | Mapping[str, Any]) -> Grounder:
    """The grounder of `config.kind`: fake or grounding_dino."""
    config = _validated(GrounderConfig, config, "grounder")
    match config.kind:
        case "fake":
            from agents.backends.fake_vision import FakeGrounder

            return FakeGrounder(config)
        case "grounding_dino":
            _require("grounding_dino", "torch", "transformers")
            _weights("grounding_dino", "model", config.model)
            from agents.backends.grounding_dino import GroundingDinoGrounder

            return GroundingDinoGrounder(config)
        case other:
            raise ConfigError(f"unknown grounder kind {other!r}")


def build_segmenter(config: SegmenterConfig | Mapping[str, Any]) -> Segmenter:
    """The segmenter of `config.kind`: fake, sam2 or sam3 (both through transformers)."""
    config = _validated(SegmenterConfig, config, "segmenter")
    match config.kind:
        case "fake":
            from agents.backends.fake_vision import FakeSegmenter

            return FakeSegmenter(config)
        case "sam2":
            _require("sam2", "torch", "transformers.models.sam2_video")
            _weights("sam2", "model", config.model)
            from agents.backends.sam2_segmenter import Sam2Segmenter

            return Sam2Segmenter(config)
        case "sam3":
            _require("sam3", "torch", "transformers.models.sam3_video")
            _weights("sam3", "model", config.model)
            from agents.backends.sam3_segmenter import Sam3Segmenter

            return Sam3Segmenter(config)
        case other:
            raise ConfigError(f"unknown segmenter kind {other!r}")


def _validated(annotation: Any, config: Any, what: str) -> Any:
    if not isinstance(config, Mapping):
        if not hasattr(config, "kind"):
            raise ConfigError(f"{what} config must be a config model or a mapping, got {type(config).__name__}")
        return config
    try:
        return TypeAdapter(annotation).validate_python(dict(config))
    except ValidationError as exc:
        raise ConfigError(f"invalid {what} config: {exc}") from exc


def _require(backend: str, *modules: str) -> None:
    """Import what a model backend needs now, at build time: missing or broken, it is a `BackendLoadError`."""
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as exc:  # noqa: BLE001 - ImportError, or whatever a broken package raises while importing
            raise BackendLoadError(
                f"{backend} cannot load: importing {module} failed ({type(exc).__name__}: {str(exc)[:300]}); install "
                "it (scripts/setup.sh) or choose another backend kind in the config"
            ) from exc


def _weights(backend: str, key: str, value: str | None) -> None:
    """Weights named as a local path must be there (a hub id such as `org/name` is left to the loader; our configs
    name local folders such as `models/sam2.1-hiera-large`, which must exist)."""
    if not value or "://" in value:
        return
    local = value.startswith(("/", "./", "../", "~")) or value.endswith((".pt", ".pth", ".safetensors", ".bin"))
    if local and not os.path.exists(os.path.expanduser(value)):
        raise BackendLoadError(f"{backend}: `{key}: {value[:300]}` does not exist; download the weights there or "
                               "correct the path in the config")
