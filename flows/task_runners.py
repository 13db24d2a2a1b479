"""Which Prefect task runner runs the engine's stage tasks, and where each stage task may go.

Four runners, all existing engines (no scheduler of our own): `process` (the default: Prefect's
`ProcessPoolTaskRunner`, one spawned worker process per core, so CPU-bound stages use every core; backends stay warm
per worker process and memory is bounded by the tasks in flight), `thread` (Prefect's `ThreadPoolTaskRunner`, for
stages that only wait on remote servers), `ray` (prefect-ray's `RayTaskRunner`: joins the cluster of `RAY_ADDRESS`
or `--ray-address`, else starts a one-node local Ray) and `prefect` (Prefect's `PrefectTaskRunner`: each stage task
is picked up by a `videorefer worker` serving that stage, on any host that reaches the same Prefect API).

Placement on Ray: a GPU stage (one of its backends runs on CUDA, or it is named in `VIDEOREFER_GPU_STAGES`) asks Ray
for one unit of the GPU resource (`GPU` by default; `VIDEOREFER_RAY_GPU_RESOURCE` names a custom resource, e.g.
one a test node declares), so it lands only on nodes that have it; CPU stages ask for one CPU with Ray's `SPREAD`
strategy, so they spread over every node. A driver on a machine with several node addresses (e.g. nodes on
loopback addresses) names its own with `VIDEOREFER_RAY_NODE_IP`. Settings come from the environment
(`RunnerSettings.from_env`); the CLI sets it from its options, so worker processes and deployments read the same
values.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from engine.errors import ConfigError

RUNNERS = ("process", "thread", "ray", "prefect")
RUNNER_ALIASES = {"local": "process"}
RUNNER_ENV = "VIDEOREFER_RUNNER"
WORKERS_ENV = "VIDEOREFER_TASK_WORKERS"
RAY_ADDRESS_ENV = "RAY_ADDRESS"  # Ray's own convention
GPU_RESOURCE_ENV = "VIDEOREFER_RAY_GPU_RESOURCE"
GPU_STAGES_ENV = "VIDEOREFER_GPU_STAGES"
RAY_NODE_IP_ENV = "VIDEOREFER_RAY_NODE_IP"  # this machine's Ray node address, where Ray's own guess is wrong


def default_workers() -> int:
    """Stage tasks in flight at once on one machine: one per core (each holds one shard's records)."""
    return max(1, os.cpu_count() or 1)


@dataclass(frozen=True, slots=True)
class RunnerSettings:
    """How stage tasks are run: the runner, its width, the Ray cluster and what a GPU stage asks Ray for."""

    name: str = "process"
    workers: int = 0  # 0: one per core
    ray_address: str | None = None
    gpu_resource: str = "GPU"
    gpu_stages: frozenset[str] = frozenset()
    ray_node_ip: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> RunnerSettings:
        env = os.environ if environ is None else environ
        name = check_runner(env.get(RUNNER_ENV) or "process")
        workers_text = env.get(WORKERS_ENV) or "0"
        try:
            workers = int(workers_text)
        except ValueError:
            raise ConfigError(f"{WORKERS_ENV}={workers_text!r} is not a whole number") from None
        if workers < 0:
            raise ConfigError(f"{WORKERS_ENV} must be 0 (one per core) or more, not {workers}")
        stages = frozenset(part.strip() for part in (env.get(GPU_STAGES_ENV) or "").split(",") if part.strip())
        return cls(name=name, workers=workers, ray_address=env.get(RAY_ADDRESS_ENV) or None,
                   gpu_resource=env.get(GPU_RESOURCE_ENV) or "GPU", gpu_stages=stages,
                   ray_node_ip=env.get(RAY_NODE_IP_ENV) or None)

    @property
    def max_workers(self) -> int:
        return self.workers or default_workers()


def check_runner(name: str) -> str:
    """The runner's canonical name (`local` is the old name of `process`); a `ConfigError` otherwise."""
    name = RUNNER_ALIASES.get(name, name)
    if name not in RUNNERS:
        raise ConfigError(f"unknown task runner {name!r}; expected one of {', '.join(RUNNERS)}")
    return name


def make_task_runner(settings: RunnerSettings | None = None) -> Any:
    """The Prefect task runner of `settings` (from the environment when None)."""
    settings = settings or RunnerSettings.from_env()
    if settings.name == "process":
        from prefect.task_runners import ProcessPoolTaskRunner

        return ProcessPoolTaskRunner(max_workers=settings.max_workers)
    if settings.name == "thread":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=settings.max_workers)
    if settings.name == "prefect":
        from prefect.task_runners import PrefectTaskRunner

        return PrefectTaskRunner()
    return ray_task_runner(settings)


def ray_task_runner(settings: RunnerSettings) -> Any:
    """prefect-ray's runner: joins `settings.ray_address` (or `RAY_ADDRESS`), else starts a one-node local Ray.

    Worker processes get this process's Prefect API URL, so task runs report to the same API wherever they run.
    """
    try:
        from prefect_ray import RayTaskRunner
    except ImportError as exc:
        raise ConfigError("--runner ray needs Ray: pip install 'ray[data]' 'prefect-ray==0.6.0' "
                          "(scripts/setup.sh installs both)") from exc
    env_vars = {name: os.environ[name] for name in ("PREFECT_API_URL", "PREFECT_API_KEY") if os.environ.get(name)}
    init_kwargs: dict[str, Any] = {"runtime_env": {"env_vars": env_vars}} if env_vars else {}
    node_ip = settings.ray_node_ip or (None if settings.ray_address else "127.0.0.1")  # local Ray: loopback
    if node_ip:
        init_kwargs["_node_ip_address"] = node_ip
    return RayTaskRunner(address=settings.ray_address, init_kwargs=init_kwargs)


def is_ray_runner(runner: Any) -> bool:
    return type(runner).__name__ == "RayTaskRunner"


def is_gpu_stage(stage: str, needs_gpu: bool, settings: RunnerSettings) -> bool:
    """A stage asks for the GPU resource when a backend runs on CUDA or the settings name it."""
    return needs_gpu or stage in settings.gpu_stages


def ray_options(gpu: bool, settings: RunnerSettings) -> dict[str, Any]:
    """Ray remote options of a stage task: one unit of the GPU resource, or one CPU spread over the nodes."""
    if not gpu:
        return {"num_cpus": 1, "scheduling_strategy": "SPREAD"}
    if settings.gpu_resource == "GPU":
        return {"num_cpus": 1, "num_gpus": 1}
    return {"num_cpus": 1, "resources": {settings.gpu_resource: 1}}


def where() -> tuple[str, int]:
    """(node, process id) of the running code: the Ray node's address inside a Ray worker, else the host name."""
    ray = sys.modules.get("ray")
    if ray is not None:
        try:
            if ray.is_initialized():
                return str(ray.util.get_node_ip_address()), os.getpid()
        except Exception:  # noqa: BLE001 - a half-initialised Ray: fall back to the host name
            pass
    return socket.gethostname(), os.getpid()
