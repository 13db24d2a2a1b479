"""What a finished run leaves in `<out>/model`: a folder plain transformers loads, with a card named after the run."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from model.training import loop


def test_the_final_folder_is_named_after_the_run_and_loads_by_auto_map(tmp_path: Path) -> None:
    from model.configuration import preset
    from model.modeling import VideoReferForCausalLM
    from model.processing import VideoReferProcessor, build_tiny_tokenizer

    model = VideoReferForCausalLM(preset("tiny"))
    processor = VideoReferProcessor.from_config(build_tiny_tokenizer(), model.config)
    runtime = loop.Runtime(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"), dtype=torch.float32)
    target = tmp_path / "s25" / loop.FINAL_DIR
    loop.save_final(model, processor, target, runtime)
    title = next(line for line in (target / "README.md").read_text().splitlines() if line.startswith("# "))
    assert title == "# s25/model"  # not the staging folder's name (the card opens with its Hub metadata)
    assert "auto_map" in json.loads((target / "config.json").read_text())
    assert (target / "modeling_videorefer.py").is_file()
    assert not list(tmp_path.joinpath("s25").glob("*.tmp"))


def test_a_one_process_fsdp_run_outside_torchrun_is_a_config_error(monkeypatch) -> None:
    import pytest

    from engine.errors import ConfigError
    from model.training.recipes import get_recipe

    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert loop.setup_runtime(get_recipe("tiny_stage3")).sharded is False
    with pytest.raises(ConfigError, match="torchrun"):
        loop.setup_runtime(get_recipe("tiny_stage3", fsdp_single_process=True))
