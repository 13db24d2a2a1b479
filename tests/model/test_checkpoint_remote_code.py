"""Saved model folders load with plain transformers (`auto_map` + `trust_remote_code`), without this suite."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from model.modeling import VideoReferForCausalLM
from model.remote_code import AUTO_MAP, MODULES, remote_source, suite_imports

# Runs in a fresh interpreter (-I: no script dir, no PYTHONPATH) where importing any package of this suite fails,
# as it would for a user who has only torch and transformers: the editable install must not rescue the folder.
_LOADER = textwrap.dedent("""
    import importlib.abc, sys
    import torch

    class NoSuite(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {"model", "engine", "storage", "agents", "flows"}:
                raise ModuleNotFoundError(f"No module named {name!r}")

    sys.meta_path.insert(0, NoSuite())
    from transformers import AutoConfig, AutoModelForCausalLM

    folder, batch_file, out_file = sys.argv[1:4]
    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
    with torch.no_grad():
        logits = model(**torch.load(batch_file, weights_only=True)).logits
    torch.save({"logits": logits, "config_class": type(config).__module__ + "." + type(config).__name__,
                "model_class": type(model).__module__ + "." + type(model).__name__,
                "suite_loaded": sorted(m for m in sys.modules if m.split(".")[0] in {"model", "engine"})}, out_file)
""")


def _batch(processor) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(0)
    mask = np.zeros((40, 56), dtype=bool)
    mask[8:24, 8:24] = True
    item = processor.encode(
        frames=rng.integers(0, 256, (8, 40, 56, 3), dtype=np.uint8), frame_indices=[0, 2, 4, 6, 8, 10, 12, 14],
        objects=[{0: mask, 4: mask}], mode="multi",
        conversations=[{"from": "human", "value": "<video>\nWhat is <region> doing?"},
                       {"from": "gpt", "value": "It sits."}],
    )
    return {key: value for key, value in processor.collate([item]).items() if torch.is_tensor(value)}


def test_a_saved_folder_loads_with_plain_transformers_and_gives_our_logits(tiny_model_dir, tiny_processor,
                                                                           tmp_path) -> None:
    assert json.loads((tiny_model_dir / "config.json").read_text())["auto_map"] == AUTO_MAP
    batch = _batch(tiny_processor)
    torch.save(batch, tmp_path / "batch.pt")
    (tmp_path / "load.py").write_text(_LOADER)
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PYTHON", "HF_"))}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), HF_MODULES_CACHE=str(tmp_path / "modules"))
    done = subprocess.run(
        [sys.executable, "-I", str(tmp_path / "load.py"), str(tiny_model_dir), str(tmp_path / "batch.pt"),
         str(tmp_path / "out.pt")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900, check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = torch.load(tmp_path / "out.pt", weights_only=True)
    assert result["suite_loaded"] == []
    assert result["config_class"].startswith("transformers_modules.")
    assert result["config_class"].endswith("configuration_videorefer.VideoReferConfig")
    assert result["model_class"].endswith("modeling_videorefer.VideoReferForCausalLM")

    ours = VideoReferForCausalLM.from_pretrained(tiny_model_dir).eval()
    with torch.no_grad():
        expected = ours(**batch).logits
    torch.testing.assert_close(result["logits"], expected)


def test_where_the_suite_is_imported_its_own_classes_win_over_the_folder_copies(tiny_model_dir) -> None:
    # explicit local code beats remote code in transformers: our loaders never run the folder's copies
    config = AutoConfig.from_pretrained(tiny_model_dir, trust_remote_code=True)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, trust_remote_code=True)
    assert type(config).__module__ == "model.configuration"
    assert type(model) is VideoReferForCausalLM


def test_the_folder_copies_import_nothing_of_the_suite_and_register_nothing() -> None:
    for name, file_name in MODULES.items():
        source = remote_source(name)
        assert suite_imports(source) == [], file_name
        assert ".register(" not in source, file_name
        compile(source, f"{file_name}.py", "exec")


def test_saving_twice_into_one_folder_keeps_one_auto_map(tiny_model_dir, tmp_path) -> None:
    from model.checkpoint import save_model_folder
    from model.processing import VideoReferProcessor

    model = VideoReferForCausalLM.from_pretrained(tiny_model_dir)
    processor = VideoReferProcessor.from_pretrained(tiny_model_dir)
    first = save_model_folder(model, processor, tmp_path / "again")
    save_model_folder(model, processor, first)
    assert json.loads((first / "config.json").read_text())["auto_map"] == AUTO_MAP
    assert sorted(path.name for path in Path(first).glob("*_videorefer.py")) == sorted(
        f"{name}.py" for name in MODULES.values()
    )
