"""Session-wide test settings: offline, quiet, isolated Prefect home; the shared real clips as a fixture."""

from __future__ import annotations

import os
import secrets
import tempfile
from pathlib import Path

import pytest

_PREFECT_HOME = tempfile.mkdtemp(prefix="videorefer-prefect-")
os.environ.setdefault("PREFECT_HOME", _PREFECT_HOME)
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_ENABLED", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.pop("PREFECT_API_URL", None)
# Flow tests run stage tasks on threads (a process pool spawns interpreters per flow: ~2.5x the time of the flow
# tests); the default process runner, Ray and task workers have tests of their own that name their runner.
os.environ.setdefault("VIDEOREFER_RUNNER", "thread")
# Ray reads its auth mode once, when first imported: Ray clusters of the tests use token auth (ENVIRONMENT.md), so
# the session says so before anything imports ray, with a token of its own (tests/flows/test_ray_cluster.py).
os.environ.setdefault("RAY_AUTH_MODE", "token")
os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

REPO_ROOT = Path(__file__).resolve().parents[1]
MEDIA_DIR = REPO_ROOT.parent / "shared" / "media"


@pytest.fixture(scope="session")
def media_dir() -> Path:
    """The real H.264 / MPEG-4 clips beside the repo; tests using it skip when it is absent."""
    if not (MEDIA_DIR / "dog.mp4").is_file():
        pytest.skip("../shared/media is not present")
    return MEDIA_DIR


@pytest.fixture
def one_torch_thread():
    """torch on one thread for the test: on a loaded 2-core machine two OpenMP threads spin against each other and
    made the tiny SAM models about 30x slower (measured: 70 s vs 2.3 s for one clip)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def gpu_device():
    """The device of the `gpu`-marked checks: CUDA, or what `VIDEOREFER_GPU_CHECK_DEVICE` names (`cpu` for
    `scripts/gpu_check.sh --cpu-dry-run`, which runs the same checks at tiny sizes here). Skips without CUDA."""
    import torch

    name = os.environ.get("VIDEOREFER_GPU_CHECK_DEVICE", "cuda")
    if name.startswith("cuda") and not torch.cuda.is_available():
        pytest.skip("no CUDA device (set VIDEOREFER_GPU_CHECK_DEVICE=cpu for the CPU dry run)")
    return torch.device(name)


# One SeaweedFS (a real S3-compatible server on 127.0.0.1) per session, started on first use; see tests/s3/.
from tests.s3.fixtures import s3_url, seaweed  # noqa: E402, F401
