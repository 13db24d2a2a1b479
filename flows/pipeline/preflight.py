"""Checks before any stage starts: the inputs exist and every remote backend the run calls answers.

A run whose OpenAI-compatible server is down would otherwise start its stage tasks, retry, and fail after the
retries with a page of tracebacks per task. `check_run` probes each distinct server once (`GET <base_url>/models`,
a few seconds at most; any HTTP answer, even 401 or 404, means the server is up) and fails at once with one line
naming the agent role, the backend and the URL; a manifest that does not exist is one line too.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from engine.config import EngineConfig
from engine.errors import BackendUnavailableError, ConfigError
from flows.pipeline.stages import STAGE_BY_NAME

PROBE_TIMEOUT_S = 5.0


def check_run(config: EngineConfig, stages: Iterable[str], *, manifest: str | None = None) -> None:
    """Fail fast (one line) on a missing manifest or an unreachable backend of the given stages."""
    if manifest and "://" not in manifest and not Path(manifest).exists():
        raise ConfigError(f"manifest not found: {manifest}")
    probed: set[str] = set()
    for stage in stages:
        for role in STAGE_BY_NAME[stage].chat_roles:
            for backend in _remote_backends(getattr(config.agents, role)):
                if backend.base_url in probed:
                    continue
                probed.add(backend.base_url)
                probe(role, backend)


def _remote_backends(backend: Any) -> list[Any]:
    if backend.kind == "openai":
        return [backend]
    if backend.kind == "replay" and backend.mode != "strict" and backend.inner is not None:
        return _remote_backends(backend.inner)
    return []


def probe(role: str, backend: Any, *, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """`BackendUnavailableError` when nothing answers at the backend's URL (any HTTP status is an answer)."""
    url = backend.base_url.rstrip("/") + "/models"
    request = urllib.request.Request(url, method="GET")
    key = os.environ.get(backend.api_key_env)
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=min(timeout_s, backend.timeout_s)):  # noqa: S310 - config URL
            return
    except urllib.error.HTTPError:
        return  # the server answered (an endpoint it does not serve, or auth): it is up
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise BackendUnavailableError(
            f"the {role} backend ({backend.kind}, model {backend.model}) at {backend.base_url} does not answer: "
            f"{reason}; start it (scripts/serve_vllm.sh) or fix the config, nothing was run"
        ) from None
