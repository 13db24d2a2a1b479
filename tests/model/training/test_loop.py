"""The training loop end to end on a tiny random VideoRefer and synthetic shards.

Single-process reference runs call the loop in this process (`model.training.loop.main`, what torchrun runs in
each worker); multi-process runs, the killed run and the stage chain go through torchrun subprocesses. Figures
come back through `<out>/log.jsonl` and the saved `<out>/model` directories.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from flows.cli import app
from model.training import loop
from model.training.launch import run_streaming, torchrun_command
from model.training.synthetic import write_synthetic_shards

pytestmark = pytest.mark.timeout(300)
REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> str:
    directory = tmp_path_factory.mktemp("train-shards")
    write_synthetic_shards(directory, shards=2, samples_per_shard=2, frames=4, size=64)
    return str(directory / "train-*.tar")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from model.inference import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=0)


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    # In-process runs get one intra-op thread, like each torchrun worker (OMP_NUM_THREADS=1): on a shared 2-core
    # machine more threads only spin against each other.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _settings(overrides: dict[str, object]) -> list[str]:
    return [item for key, value in overrides.items() for item in ("--set", f"{key}={value}")]


def _train_here(recipe: str, data: str, out: Path, *, init_from: Path | None = None, resume: bool = False,
                **overrides: object) -> list[dict]:
    argv = ["--recipe", recipe, "--data", data, "--out", str(out), *_settings(overrides)]
    argv += ["--init-from", str(init_from)] if init_from else []
    argv += ["--resume"] if resume else []
    assert loop.main(argv) == 0
    return _log(out)


def _train_torchrun(recipe: str, data: str, out: Path, *, nproc: int = 1, init_from: Path | None = None,
                    resume: bool = False, **overrides: object) -> list[dict]:
    command = torchrun_command(recipe=recipe, data=[data], out=out, nproc=nproc, resume=resume, init_from=init_from,
                               overrides={key: str(value) for key, value in overrides.items()})
    lines: list[str] = []
    assert run_streaming(command, on_line=lines.append) == 0, "".join(lines[-40:])
    return _log(out)


def _log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def _weights(directory: Path) -> dict[str, torch.Tensor]:
    weights: dict[str, torch.Tensor] = {}
    for path in sorted(directory.glob("*.safetensors")):
        weights.update(load_file(path))
    return weights


def _changed_groups(before: Path, after: Path) -> set[str]:
    old, new = _weights(before), _weights(after)
    assert old.keys() == new.keys() and old
    return {name.split(".")[0] for name in old if not torch.equal(old[name], new[name])}


def test_tiny_model_overfits_a_handful_of_samples(shards: str, tmp_path: Path) -> None:
    log = _train_here("tiny_stage3", shards, tmp_path, max_steps=50, micro_batch=4, num_workers=0,
                      checkpoint_every=50)
    losses = [entry["loss"] for entry in log]
    assert [entry["step"] for entry in log] == list(range(1, 51))
    assert sum(losses[-5:]) / 5 < 0.3 * sum(losses[:5]) / 5, losses
    assert all(entry["bad_samples"] == 0 and entry["tokens"] > entry["label_tokens"] > 0 for entry in log)
    assert (tmp_path / "model" / "config.json").is_file()
    assert (tmp_path / "model" / "videorefer_processor.json").is_file()


def test_kill_and_resume_reproduces_the_uninterrupted_run(shards: str, tiny_model: Path, tmp_path: Path) -> None:
    settings = {"max_steps": 8, "checkpoint_every": 3, "num_workers": 2, "global_batch": 2, "micro_batch": 1}
    reference = [e["loss"] for e in _train_here("tiny_stage3", shards, tmp_path / "a", init_from=tiny_model,
                                                **settings)]
    out = tmp_path / "b"
    # The killed run is the loop in its own process (what each torchrun worker runs), killed with SIGKILL.
    command = [sys.executable, "-m", "model.training.loop", "--recipe", "tiny_stage3", "--data", shards, "--out",
               str(out), "--init-from", str(tiny_model), *_settings(settings)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                               env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 200
    while time.monotonic() < deadline and process.poll() is None:
        if (out / "log.jsonl").is_file() and len(_log(out)) >= 4:
            os.killpg(process.pid, signal.SIGKILL)  # the trainer and its loader workers, mid-run
            break
        time.sleep(0.02)
    process.wait()
    assert process.returncode != 0 and not (out / "model").exists(), "the run finished before it could be killed"
    assert 4 <= len(_log(out)) < 8

    resumed = [e["loss"] for e in _train_here("tiny_stage3", shards, out, resume=True, init_from=tiny_model,
                                              **settings)]
    assert len(resumed) == 8
    assert resumed == pytest.approx(reference, rel=1e-5, abs=1e-6)


def test_two_gloo_processes_match_one_process(shards: str, tiny_model: Path, tmp_path: Path) -> None:
    # Global batch 4 = the whole 4-sample set, so both layouts see the same samples at every step; one process
    # runs 2 micro-batches of 2, two processes (FSDP2 over gloo) one micro-batch of 2 each.
    settings = {"max_steps": 3, "global_batch": 4, "micro_batch": 2, "num_workers": 1}
    one = _train_here("tiny_stage3", shards, tmp_path / "one", init_from=tiny_model, **settings)
    two = _train_torchrun("tiny_stage3", shards, tmp_path / "two", nproc=2, init_from=tiny_model, **settings)
    assert [e["loss"] for e in two] == pytest.approx([e["loss"] for e in one], rel=1e-4)
    after_one, after_two = _weights(tmp_path / "one" / "model"), _weights(tmp_path / "two" / "model")
    assert after_one.keys() == after_two.keys()
    for name in after_one:
        torch.testing.assert_close(after_two[name], after_one[name], rtol=1e-3, atol=1e-4)


# ---------------------------------------------------------------- the stage chain through `videorefer train`


@pytest.fixture(scope="module")
def chain(shards: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`videorefer train` tiny_stage2 -> tiny_stage2_5 -> tiny_stage3, each starting from the previous output."""
    root = tmp_path_factory.mktemp("chain")
    previous: Path | None = None
    for stage in ("tiny_stage2", "tiny_stage2_5", "tiny_stage3"):
        arguments = ["train", "--recipe", stage, "--data", shards, "--out", str(root / stage), "--max-steps", "3"]
        arguments += ["--init-from", str(previous)] if previous else []
        result = CliRunner().invoke(app, arguments)
        assert result.exit_code == 0, result.output
        previous = root / stage
    return root


def test_stage2_changes_only_the_object_encoder(chain: Path) -> None:
    # Without --init-from, the tiny stage 2 starts from a random tiny model it saves under <out>/init.
    assert _changed_groups(chain / "tiny_stage2" / "init", chain / "tiny_stage2" / "model") == {"object_encoder"}


def test_stage2_5_changes_everything_but_the_vision_tower(chain: Path) -> None:
    changed = _changed_groups(chain / "tiny_stage2" / "model", chain / "tiny_stage2_5" / "model")
    assert changed == {"connector", "object_encoder", "language_model"}


def test_stage3_output_loads_for_inference(chain: Path) -> None:
    from model.inference import VideoReferPipeline

    assert _changed_groups(chain / "tiny_stage2_5" / "model", chain / "tiny_stage3" / "model")
    pipeline = VideoReferPipeline.from_pretrained(chain / "tiny_stage3" / "model")
    assert pipeline.model.config.model_type == "videorefer"
    assert [e["step"] for e in _log(chain / "tiny_stage3")] == [1, 2, 3]


def test_a_failing_trainer_fails_the_command(shards: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # What torchrun exits with reaches the shell: a stand-in trainer command that exits 3 makes the CLI exit 3.
    from model.training import launch

    monkeypatch.setattr(launch, "torchrun_command", lambda **_: [sys.executable, "-c", "raise SystemExit(3)"])
    result = CliRunner().invoke(app, ["train", "--recipe", "tiny_stage3", "--data", shards, "--out", str(tmp_path)])
    assert result.exit_code == 3 and "exit code 3" in result.output


def test_an_existing_out_is_refused_unless_resume_or_overwrite(shards: str, tiny_model: Path, tmp_path: Path) -> None:
    settings = {"max_steps": 2, "checkpoint_every": 2, "num_workers": 0, "global_batch": 2, "micro_batch": 1}
    out = tmp_path / "run"
    _train_here("tiny_stage3", shards, out, init_from=tiny_model, **settings)
    argv = ["--recipe", "tiny_stage3", "--data", shards, "--out", str(out), "--init-from", str(tiny_model),
            *_settings(settings)]
    assert loop.main(argv) == 2  # a config error: the log and checkpoints of the first run are kept
    assert len(_log(out)) == 2
    assert loop.main([*argv, "--overwrite"]) == 0 and len(_log(out)) == 2


def test_resuming_with_more_steps_stretches_the_schedule_to_the_new_end(shards: str, tiny_model: Path,
                                                                        tmp_path: Path) -> None:
    """Documented rule: the warmup + cosine schedule always spans the run's current `max_steps`; a resume with a
    larger one continues on the stretched schedule from the checkpoint's step (the LR is never 0 before the end)."""
    settings = {"checkpoint_every": 2, "num_workers": 0, "global_batch": 2, "micro_batch": 1, "log_every": 1}
    out = tmp_path / "run"
    _train_here("tiny_stage3", shards, out, init_from=tiny_model, max_steps=4, **settings)
    log = _train_here("tiny_stage3", shards, out, init_from=tiny_model, resume=True, max_steps=8, **settings)
    assert [entry["step"] for entry in log] == list(range(1, 9))
    peak = log[0]["lr"] / loop.lr_factor(0, total_steps=4, warmup_ratio=0.03)
    for entry in log[4:]:
        expected = peak * loop.lr_factor(entry["step"] - 1, total_steps=8, warmup_ratio=0.03)
        assert entry["lr"] == pytest.approx(expected, rel=1e-6)
    assert log[-2]["lr"] > 0
