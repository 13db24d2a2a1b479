"""No warning repeats every training step: each distinct warning shows at most once per run."""

from __future__ import annotations

import collections
import re
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch

from model.training import loop
from model.training.launch import run_streaming, torchrun_command
from model.training.synthetic import write_synthetic_shards

pytestmark = pytest.mark.timeout(600)
STEPS = 4
HIDDEN_BY_DEFAULT = (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning)


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> str:
    directory = tmp_path_factory.mktemp("warning-shards")
    write_synthetic_shards(directory, shards=1, samples_per_shard=4, frames=4, size=64)
    return str(directory / "train-*.tar")


def test_no_warning_is_raised_per_step(shards: str, tmp_path: Path) -> None:
    # "always" shows every warn() call: a warning raised inside the step would be recorded once per step.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert loop.main(["--recipe", "tiny_stage2_5", "--data", shards, "--out", str(tmp_path / "run"),
                              "--max-steps", str(STEPS), "--set", "num_workers=0",
                              "--set", "activation_checkpointing=True"]) == 0
    finally:
        torch.set_num_threads(threads)
    # Only what a default Python shows: DeprecationWarning and the like are hidden outside __main__ (pycocotools'
    # mask decoder raises numpy's copy-keyword DeprecationWarning on every mask, unseen by users).
    shown = [w for w in caught if not issubclass(w.category, HIDDEN_BY_DEFAULT)]
    counts = collections.Counter(f"{w.category.__name__}: {w.message}" for w in shown)
    assert not {text: n for text, n in counts.items() if n > 1}, counts
    assert not [text for text in counts if "deprecated" in text], counts  # the causes are fixed, not hidden


def test_a_torchrun_stage_prints_each_distinct_warning_at_most_once(shards: str, tmp_path: Path) -> None:
    command = torchrun_command(recipe="tiny_stage1", data=[shards], out=tmp_path / "run", max_steps=STEPS,
                               overrides={"num_workers": "1", "activation_checkpointing": "True"})
    lines: list[str] = []
    assert run_streaming(command, on_line=lines.append) == 0, "".join(lines[-40:])
    warned = [line.strip() for line in lines
              if re.search(r"\w+Warning: |\bWARNING\b|^\[transformers\]", line)]
    repeated = {text: n for text, n in collections.Counter(warned).items() if n > 1}
    assert not repeated, "".join(lines)


_REPEATER = textwrap.dedent("""
    import sys, warnings
    from model.training.loop import warn_once_per_run

    if sys.argv[1] == "once":
        warn_once_per_run()
    for step in range(3):
        warnings.warn("a per-step warning", FutureWarning)
        warnings.filterwarnings("ignore", message="something a library silences")  # resets Python's registry
""")


@pytest.mark.parametrize(("mode", "shown"), [("once", 1), ("python-default", 3)])
def test_warn_once_per_run_survives_libraries_changing_the_filters(mode: str, shown: int) -> None:
    done = subprocess.run([sys.executable, "-c", _REPEATER, mode], capture_output=True, text=True, timeout=300,
                          check=True, cwd=Path(__file__).resolve().parents[3])
    assert done.stderr.count("a per-step warning") == shown
