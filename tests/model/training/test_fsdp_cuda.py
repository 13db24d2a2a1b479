"""An FSDP2 training step on the GPU check's device, with a distributed checkpoint saved and resumed.

`torchrun --nproc-per-node 1` runs the real loop with `fsdp_single_process` (a one-process group: `fully_shard`
per layer and at the root, bf16 parameters with fp32 reduction, DTensor state in the DCP checkpoint), two steps
with a checkpoint after each. Then the second checkpoint and the saved model are removed, as if the run had
been killed after step 1, and `--resume` redoes step 2 from the first checkpoint: its loss and its saved weights
must match the uninterrupted run's (within bf16 rounding on CUDA, where atomics may reorder sums; exactly on CPU).
`gpu`-marked: `scripts/gpu_check.sh` runs it (`--cpu-dry-run`: on the CPU with gloo, the same bf16 policy).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from model.training.checkpointing import checkpoint_dir, latest_checkpoint
from model.training.launch import run_streaming, torchrun_command
from model.training.synthetic import write_synthetic_shards

pytestmark = [pytest.mark.gpu, pytest.mark.timeout(600)]

# bf16 also on the CPU (the dry run): FSDP2's MixedPrecisionPolicy(bf16 parameters, fp32 reduction) is the path.
SETTINGS = {"fsdp_single_process": True, "precision": "bf16", "checkpoint_every": 1, "num_workers": 0,
            "global_batch": 2, "micro_batch": 1, "log_every": 1}


def _train(data: str, out: Path, *, resume: bool = False) -> list[str]:
    command = torchrun_command(recipe="tiny_stage3", data=[data], out=out, nproc=1, max_steps=2, resume=resume,
                               overrides={key: str(value) for key, value in SETTINGS.items()})
    lines: list[str] = []
    assert run_streaming(command, on_line=lines.append) == 0, "".join(lines[-40:])
    return lines


def _summary(lines: list[str]) -> dict:
    done = [json.loads(line)["done"] for line in lines if line.startswith('{"done"')]
    assert done, "".join(lines[-20:])
    return done[-1]


def _weights(out: Path) -> dict[str, torch.Tensor]:
    files = sorted((out / "model").glob("*.safetensors"))
    return {key: value for file in files for key, value in load_file(file).items()}


def test_fsdp2_step_checkpoints_and_resumes_like_the_uninterrupted_run(gpu_device, tmp_path: Path) -> None:
    write_synthetic_shards(tmp_path / "shards", shards=1, samples_per_shard=4, frames=4, size=64)
    data, out = str(tmp_path / "shards" / "train-*.tar"), tmp_path / "run"
    summary = _summary(_train(data, out))
    assert summary["fsdp"] is True and summary["steps"] == 2
    assert summary["device"] == gpu_device.type
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in log] == [1, 2] and all(entry["loss"] > 0 for entry in log)
    straight = _weights(out)

    assert latest_checkpoint(out) == checkpoint_dir(out, 2)
    shutil.rmtree(checkpoint_dir(out, 2))
    shutil.rmtree(out / "model")
    resumed = _summary(_train(data, out, resume=True))
    assert resumed["steps"] == 2
    relog = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in relog] == [1, 2]
    assert relog[0] == log[0]  # step 1 is the checkpoint's, kept from the first run
    cuda = gpu_device.type == "cuda"
    assert relog[1]["loss"] == pytest.approx(log[1]["loss"], rel=1e-2 if cuda else 1e-6)
    again = _weights(out)
    assert again.keys() == straight.keys()
    for name, value in straight.items():
        assert torch.allclose(again[name].float(), value.float(), rtol=1e-2 if cuda else 1e-6,
                              atol=1e-3 if cuda else 1e-7), name
