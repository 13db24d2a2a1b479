"""`--runner ray`: the same build on prefect-ray's RayTaskRunner (optional extra `ray`).

Ray is not installed by default (about 240 MB). To run this test:
    PIP_CONSTRAINT=constraints.txt .venv/bin/pip install 'prefect-ray==0.6.0'
    .venv/bin/python -m pytest -q -m slow tests/flows/test_ray_runner.py
Without the extra, choosing the ray runner is a config error with the install hint (tested by default).
"""

from __future__ import annotations

import importlib.util

import pytest

from engine.errors import ConfigError
from flows import engine_flows
from flows.pipeline.export import exported_tars
from flows.runtime import run_flow
from tests.flows.conftest import write_config

HAS_RAY = importlib.util.find_spec("prefect_ray") is not None


@pytest.mark.skipif(HAS_RAY, reason="prefect-ray is installed")
def test_ray_runner_without_the_extra_is_a_config_error_with_the_install_hint() -> None:
    with pytest.raises(ConfigError, match=r"videorefer-suite\[ray\]"):
        engine_flows.task_runner("ray")


@pytest.mark.slow
def test_build_on_ray_gives_the_same_export_as_threads(prefect_server, corpus, tmp_path) -> None:
    pytest.importorskip("prefect_ray")
    root, manifest = corpus
    config = write_config(tmp_path / "tiny.yaml")
    report = run_flow(engine_flows.build, runner="ray", root=str(root), manifest=str(manifest),
                      config_path=str(config))
    assert {row["stage"] for row in report["stages"]} >= {"analyze", "export"}
    assert exported_tars(root)
