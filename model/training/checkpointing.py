"""Distributed checkpoints of a training run: model, optimizer, scheduler, step, RNG and data position.

Layout under `<out>/checkpoints/`: one `step-NNNNNNNN/` directory per checkpoint, holding the
`torch.distributed.checkpoint` (DCP) files of the model and optimizer state (sharded: every rank writes its
own part), `meta.json` (step, world size, recipe, scheduler state) and `rank-R.json` per rank (loader
position and RNG states, which are per rank). A checkpoint is written under a `.tmp` name and renamed into
place by rank 0 after every rank finished, so a killed run never leaves a half checkpoint that looks
complete; `latest_checkpoint` only ever returns renamed ones. Older checkpoints beyond `keep` are removed.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import ConfigError

_PREFIX = "step-"
_TMP = ".tmp"


@dataclass(frozen=True, slots=True, kw_only=True)
class RestoredState:
    """What `load_checkpoint` gives back besides the model and optimizer it loads in place."""

    step: int
    scheduler: dict[str, Any]
    loader: dict[str, Any]
    meta: dict[str, Any]


def checkpoint_root(out: Path) -> Path:
    return Path(out) / "checkpoints"


def checkpoint_dir(out: Path, step: int) -> Path:
    return checkpoint_root(out) / f"{_PREFIX}{step:08d}"


def latest_checkpoint(out: Path) -> Path | None:
    """The complete checkpoint with the highest step under `<out>/checkpoints`, or None."""
    root = checkpoint_root(out)
    if not root.is_dir():
        return None
    complete = [
        path
        for path in root.iterdir()
        if path.name.startswith(_PREFIX) and not path.name.endswith(_TMP) and (path / "meta.json").is_file()
    ]
    return max(complete, key=lambda path: int(path.name.removeprefix(_PREFIX)), default=None)


def write_json_atomic(path: Path, value: Any) -> None:
    """Write JSON to a temporary name beside `path`, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(value, indent=1, sort_keys=True))
    os.replace(temporary, path)


def _rng_state() -> dict[str, Any]:
    # Only torch's generators matter inside the loop (dropout); the loader has its own counter-based RNGs.
    import torch

    state = {"torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode("ascii")}
    if torch.cuda.is_available():
        state["cuda"] = base64.b64encode(torch.cuda.get_rng_state().numpy().tobytes()).decode("ascii")
    return state


def _restore_rng(state: dict[str, Any]) -> None:
    import torch

    torch.set_rng_state(torch.frombuffer(bytearray(base64.b64decode(state["torch"])), dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(torch.frombuffer(bytearray(base64.b64decode(state["cuda"])), dtype=torch.uint8))


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    if hasattr(value, "tolist"):
        return value.tolist()
    return value


def save_checkpoint(
    out: Path,
    *,
    step: int,
    model: Any,
    optimizer: Any,
    scheduler: Any,
    loader_state: dict[str, Any],
    meta: dict[str, Any],
    rank: int,
    world_size: int,
    keep: int = 2,
) -> Path:
    """Write a checkpoint of `step` (every rank calls this; collective when distributed) and return its path."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    final = checkpoint_dir(out, step)
    staging = final.with_name(final.name + _TMP)
    if rank == 0:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    _barrier(world_size)
    model_state, optimizer_state = get_state_dict(model, optimizer)
    with _single_process_quiet():
        dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=str(staging))
    write_json_atomic(staging / f"rank-{rank}.json", {"loader": loader_state, "rng": _rng_state()})
    if rank == 0:
        scheduler_state = {k: _jsonable(v) for k, v in scheduler.state_dict().items() if _is_plain(v)}
        write_json_atomic(
            staging / "meta.json", {**meta, "step": step, "world_size": world_size, "scheduler": scheduler_state}
        )
    _barrier(world_size)
    if rank == 0:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(staging, final)
        _prune(out, keep)
    if world_size > 1 and dist.is_initialized():
        dist.barrier()
    return final


def load_checkpoint(path: Path, *, model: Any, optimizer: Any, rank: int, world_size: int) -> RestoredState:
    """Load a checkpoint written by `save_checkpoint` into `model` and `optimizer` in place (every rank calls)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    meta = json.loads((path / "meta.json").read_text())
    if int(meta["world_size"]) != world_size:
        raise ConfigError(
            f"checkpoint {path} was written by {meta['world_size']} processes; resume with the same --nproc "
            f"(the data position is per process), not {world_size}"
        )
    model_state, optimizer_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optimizer": optimizer_state}
    with _single_process_quiet():
        dcp.load(state, checkpoint_id=str(path))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
    per_rank = json.loads((path / f"rank-{rank}.json").read_text())
    _restore_rng(per_rank["rng"])
    return RestoredState(step=int(meta["step"]), scheduler=meta.get("scheduler", {}), loader=per_rank["loader"],
                         meta=meta)


@contextlib.contextmanager
def _single_process_quiet() -> Iterator[None]:
    # DCP warns when a single process saves or loads without a process group: that is the intent here.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def _is_plain(value: Any) -> bool:
    try:
        json.dumps(_jsonable(value))
    except TypeError:
        return False
    return True


def _barrier(world_size: int) -> None:
    import torch.distributed as dist

    if world_size > 1 and dist.is_initialized():
        dist.barrier()


def _prune(out: Path, keep: int) -> None:
    root = checkpoint_root(out)
    complete = sorted(
        (p for p in root.iterdir() if p.name.startswith(_PREFIX) and not p.name.endswith(_TMP)),
        key=lambda p: int(p.name.removeprefix(_PREFIX)),
    )
    for path in complete[: max(0, len(complete) - max(1, keep))]:
        shutil.rmtree(path, ignore_errors=True)
