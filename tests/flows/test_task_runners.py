"""The runner choice (`flows.task_runners`): settings from the environment, Ray placement options, and the default
process-pool runner building the same export as threads, with every task's node and worker process recorded."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

from engine.errors import ConfigError
from flows import engine_flows
from flows.pipeline.export import exported_tars
from flows.runtime import run_flow
from flows.task_runners import RunnerSettings, check_runner, is_gpu_stage, make_task_runner, ray_options
from tests.flows.conftest import write_config


def export_digest(root: Path) -> dict[str, str]:
    """sha256 of every exported tar and JSON file, by name."""
    files = [Path(t) for t in exported_tars(root)] + sorted((root / "export" / "json").glob("*.json"))
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


def test_settings_come_from_the_environment_with_a_process_per_core_by_default() -> None:
    default = RunnerSettings.from_env({})
    assert (default.name, default.max_workers, default.ray_address, default.gpu_resource) == (
        "process", os.cpu_count() or 1, None, "GPU")
    settings = RunnerSettings.from_env({"VIDEOREFER_RUNNER": "ray", "RAY_ADDRESS": "10.0.0.1:6379",
                                        "VIDEOREFER_RAY_GPU_RESOURCE": "accel", "VIDEOREFER_GPU_STAGES": "segment, x",
                                        "VIDEOREFER_TASK_WORKERS": "3"})
    assert (settings.name, settings.ray_address, settings.gpu_resource, settings.max_workers) == (
        "ray", "10.0.0.1:6379", "accel", 3)
    assert settings.gpu_stages == {"segment", "x"}
    assert check_runner("local") == "process"  # the old name of the default


@pytest.mark.parametrize("env", [{"VIDEOREFER_RUNNER": "dask"}, {"VIDEOREFER_TASK_WORKERS": "many"},
                                 {"VIDEOREFER_TASK_WORKERS": "-1"}])
def test_a_bad_runner_setting_is_a_config_error(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError):
        RunnerSettings.from_env(env)


def test_each_name_builds_prefects_own_runner() -> None:
    names = {name: type(make_task_runner(RunnerSettings(name=name, workers=2))).__name__
             for name in ("process", "thread", "prefect", "ray")}
    assert names == {"process": "ProcessPoolTaskRunner", "thread": "ThreadPoolTaskRunner",
                     "prefect": "PrefectTaskRunner", "ray": "RayTaskRunner"}


def test_gpu_stages_ask_ray_for_the_named_resource_and_cpu_stages_spread() -> None:
    custom = RunnerSettings(gpu_resource="accel", gpu_stages=frozenset({"segment"}))
    assert is_gpu_stage("segment", False, custom) and is_gpu_stage("refine", True, custom)
    assert not is_gpu_stage("refine", False, custom)
    assert ray_options(True, custom) == {"num_cpus": 1, "resources": {"accel": 1}}
    assert ray_options(True, RunnerSettings()) == {"num_cpus": 1, "num_gpus": 1}
    assert ray_options(False, custom) == {"num_cpus": 1, "scheduling_strategy": "SPREAD"}


def test_every_stage_is_a_task_of_its_own_for_task_workers() -> None:
    keys = {stage: task.task_key.split("-")[0] for stage, task in engine_flows.STAGE_TASKS.items()}
    assert keys["segment"] == "stage_segment" and len(set(keys.values())) == len(keys)


def test_the_process_runner_builds_the_same_export_as_threads_and_records_each_tasks_process(
    prefect_server, corpus, tmp_path
) -> None:
    root, manifest = corpus
    reference = tmp_path / "threads"
    shutil.copytree(root, reference)
    config = write_config(tmp_path / "tiny.yaml")
    run_flow(engine_flows.build, runner="thread", root=str(reference), manifest=str(reference / manifest.name),
             config_path=str(config))
    report = run_flow(engine_flows.build, runner="process", root=str(root), manifest=str(manifest),
                      config_path=str(config))
    assert export_digest(root) == export_digest(reference) and export_digest(root)
    tasks = report["tasks"]
    stage_tasks = [row for row in tasks if row["stage"] != "ingest"]
    assert stage_tasks and all(row["node"] and row["pid"] for row in stage_tasks)
    assert os.getpid() not in {row["pid"] for row in stage_tasks}  # they ran in worker processes
    started = sorted((root / "reports" / "tasks").glob("*/*.json"))
    assert len(started) == len(stage_tasks)  # each task noted where it ran as it started
