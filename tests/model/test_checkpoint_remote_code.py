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


# AutoProcessor + generate in the same suite-less interpreter: the usage example of the model card, run as written.
_PROCESSOR_LOADER = _LOADER.split("folder, batch_file")[0] + textwrap.dedent("""
    import numpy as np
    from transformers import AutoProcessor

    folder, inputs_file, out_file = sys.argv[1:4]
    given = torch.load(inputs_file, weights_only=False)
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
    inputs = processor(given["question"], videos=given["frames"], masks=given["masks"], mode="multi")
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    torch.save({"inputs": dict(inputs), "output": output, "answer": processor.decode(output[0]),
                "processor_class": type(processor).__module__ + "." + type(processor).__name__,
                "suite_loaded": sorted(m for m in sys.modules if m.split(".")[0] in {"model", "engine"})}, out_file)
""")


def test_auto_processor_gives_our_processor_and_the_card_example_runs_without_the_suite(
    tiny_model_dir, tiny_processor, tmp_path
) -> None:
    from engine.masks import encode_rle

    processor_config = json.loads((tiny_model_dir / "processor_config.json").read_text())
    assert processor_config["auto_map"] == {"AutoProcessor": "processing_videorefer.VideoReferProcessor"}
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, (8, 40, 56, 3), dtype=np.uint8)
    mask = np.zeros((40, 56), dtype=bool)
    mask[5:30, 10:40] = True
    other = np.zeros_like(mask)
    other[20:38, 2:20] = True
    masks = [{0: mask, 3: encode_rle(mask)}, {6: other}]  # a bool array and a COCO RLE, two objects
    question = "How do <region> and <region> move?"
    torch.save({"question": question, "frames": frames, "masks": masks}, tmp_path / "inputs.pt")
    (tmp_path / "load.py").write_text(_PROCESSOR_LOADER)
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PYTHON", "HF_"))}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), HF_MODULES_CACHE=str(tmp_path / "modules"))
    done = subprocess.run(
        [sys.executable, "-I", str(tmp_path / "load.py"), str(tiny_model_dir), str(tmp_path / "inputs.pt"),
         str(tmp_path / "out.pt")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900, check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = torch.load(tmp_path / "out.pt", weights_only=False)
    assert result["suite_loaded"] == []
    assert result["processor_class"].endswith("processing_videorefer.VideoReferProcessor")

    # The same question through this suite's own processor and pipeline layout: the release's prompt, every mask.
    prompt = tiny_processor.build_prompt(question, 2)
    assert prompt.startswith("<video>\n")
    expected = tiny_processor.collate([tiny_processor.encode(
        frames=frames, frame_indices=list(range(8)), objects=masks, mode="multi",
        conversations=[{"from": "human", "value": prompt}], add_generation_prompt=True,
    )], padding_side="left")
    assert set(result["inputs"]) == set(expected) - {"labels"}
    for key, value in result["inputs"].items():
        torch.testing.assert_close(value, expected[key], msg=key)
    assert int(result["inputs"]["mask_object_index"].tolist().count(0)) == 2  # both mask frames of object 0 pooled
    ours = VideoReferForCausalLM.from_pretrained(tiny_model_dir).eval()
    with torch.no_grad():
        output = ours.generate(**{k: v for k, v in expected.items() if k != "labels"}, max_new_tokens=6,
                               do_sample=False)
    torch.testing.assert_close(result["output"], output)
    assert result["answer"] == tiny_processor.decode(output[0])


def test_the_model_card_carries_hub_metadata_and_a_plain_transformers_example(tiny_model_dir) -> None:
    import yaml

    from model.checkpoint import model_card
    from model.configuration import preset

    card = (tiny_model_dir / "README.md").read_text()
    assert card.startswith("---\n")
    metadata = yaml.safe_load(card.split("---\n")[1])
    assert metadata["license"] == "apache-2.0"
    assert metadata["pipeline_tag"] == "video-text-to-text"
    assert {"videorefer", "custom_code"} <= set(metadata["tags"])
    assert "base_model" not in metadata  # a tiny random model starts from nothing on the Hub
    assert "AutoProcessor.from_pretrained" in card and "trust_remote_code=True" in card
    seven_b = yaml.safe_load(model_card(preset("7b"), "x").split("---\n")[1])
    assert seven_b["base_model"] == ["Qwen/Qwen2-7B-Instruct", "google/siglip-so400m-patch14-384"]
    converted_card = model_card(preset("7b"), "x", base_model=["DAMO-NLP-SG/VideoRefer-7B"])
    converted = yaml.safe_load(converted_card.split("---\n")[1])
    assert converted["base_model"] == "DAMO-NLP-SG/VideoRefer-7B"
