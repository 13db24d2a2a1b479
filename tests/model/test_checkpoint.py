"""Loading the released checkpoint layout: full files (safetensors / .bin), stage partial files, the vision tower."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from engine.errors import ConfigError
from model.checkpoint import (
    load_partial,
    load_released_checkpoint,
    load_vision_tower,
    map_released_key,
    released_state_dict,
)
from model.configuration import preset
from model.modeling import VideoReferForCausalLM


def _model(seed: int) -> VideoReferForCausalLM:
    torch.manual_seed(seed)
    return VideoReferForCausalLM(preset("tiny"))


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_released_names_map_onto_our_modules() -> None:
    layer = "layers.3.self_attn.q_proj.bias"
    assert map_released_key(f"model.{layer}") == f"language_model.model.{layer}"
    assert map_released_key("model.embed_tokens.weight") == "language_model.model.embed_tokens.weight"
    assert map_released_key("lm_head.weight") == "language_model.lm_head.weight"
    assert map_released_key("model.mm_projector.s1.b1.conv1.conv.weight") == "connector.s1.b1.conv1.conv.weight"
    assert map_released_key("model.mm_projector.readout.2.bias") == "connector.readout.2.bias"
    assert map_released_key("model.region_encoder.feat_linear.0.weight") == "object_encoder.feat_linear.0.weight"
    fc1 = "encoder.layers.0.mlp.fc1.weight"
    assert map_released_key(f"vision_model.{fc1}") == f"vision_tower.{fc1}"
    assert map_released_key("text_model.embeddings.token_embedding.weight") is None


def test_exported_names_are_the_released_ones() -> None:
    names = set(released_state_dict(_model(0)))
    for expected in (
        "model.layers.0.self_attn.q_proj.weight", "model.embed_tokens.weight", "model.norm.weight", "lm_head.weight",
        "model.mm_projector.s1.b1.conv1.conv.weight", "model.mm_projector.sampler.0.weight",
        "model.mm_projector.s2.b1.conv3.bn.weight", "model.mm_projector.readout.0.weight",
        "model.mm_projector.readout.2.weight", "model.region_encoder.feat_linear.0.weight",
        "model.region_encoder.feat_linear.2.bias",
    ):
        assert expected in names
    assert not any(name.startswith("vision") for name in names)  # the tower ships separately


@pytest.mark.parametrize("file_name", ["model.safetensors", "pytorch_model.bin"])
def test_a_tiny_released_checkpoint_loads_completely(tmp_path, file_name: str) -> None:
    source, target = _model(0), _model(1)
    state = {name: tensor.clone().contiguous() for name, tensor in released_state_dict(source).items()}
    if file_name.endswith(".safetensors"):
        save_file(state, str(tmp_path / file_name))
    else:
        torch.save(state, tmp_path / file_name)
    vision_before = {k: v.clone() for k, v in target.vision_tower.state_dict().items()}
    report = load_released_checkpoint(target, tmp_path)
    assert not report.unexpected and not report.missing
    assert _same(source.language_model, target.language_model)
    assert _same(source.connector, target.connector)
    assert _same(source.object_encoder, target.object_encoder)
    assert all(torch.equal(vision_before[k], v) for k, v in target.vision_tower.state_dict().items())


def test_stage_partial_files_load_only_their_module(tmp_path) -> None:
    source, target = _model(0), _model(1)
    exported = released_state_dict(source)
    torch.save({k: v for k, v in exported.items() if "region_encoder" in k}, tmp_path / "region_encoder.bin")
    torch.save({k: v for k, v in exported.items() if "mm_projector" in k}, tmp_path / "mm_projector.bin")
    llm_before = {k: v.clone() for k, v in target.language_model.state_dict().items()}
    load_partial(target, tmp_path / "region_encoder.bin")
    assert _same(source.object_encoder, target.object_encoder)
    assert not _same(source.connector, target.connector)
    load_partial(target, tmp_path / "mm_projector.bin")
    assert _same(source.connector, target.connector)
    assert all(torch.equal(llm_before[k], v) for k, v in target.language_model.state_dict().items())


def test_the_separate_siglip_checkpoint_fills_the_vision_tower(tmp_path) -> None:
    source, target = _model(0), _model(1)
    state = {f"vision_model.{k}": v.clone() for k, v in source.vision_tower.state_dict().items()}
    state["text_model.embeddings.token_embedding.weight"] = torch.zeros(3, 3)  # full SigLIP files carry a text tower
    state["logit_scale"] = torch.zeros(1)
    save_file(state, str(tmp_path / "siglip.safetensors"))
    load_vision_tower(target, tmp_path / "siglip.safetensors")
    assert _same(source.vision_tower, target.vision_tower)


def test_incomplete_or_mismatched_checkpoints_are_config_errors(tmp_path) -> None:
    exported = released_state_dict(_model(0))
    partial = {k: v for k, v in exported.items() if not k.startswith("lm_head")}
    save_file(partial, str(tmp_path / "model.safetensors"))
    with pytest.raises(ConfigError, match="lacks"):
        load_released_checkpoint(_model(1), tmp_path)
    wrong = {"model.region_encoder.feat_linear.0.weight": torch.zeros(5, 5)}
    torch.save(wrong, tmp_path / "region_encoder.bin")
    with pytest.raises(ConfigError, match="shape"):
        load_partial(_model(1), tmp_path / "region_encoder.bin")
    with pytest.raises(ConfigError):
        load_released_checkpoint(_model(1), tmp_path / "missing")


def test_convert_release_writes_a_folder_the_pipeline_loads(tmp_path) -> None:
    from model.checkpoint import convert_release
    from model.inference import VideoReferPipeline
    from model.processing import build_tiny_tokenizer

    source = _model(0)
    release = tmp_path / "VideoRefer-tiny"
    release.mkdir()
    exported = {k: v.clone().contiguous() for k, v in released_state_dict(source).items()}
    save_file(exported, str(release / "model.safetensors"))
    build_tiny_tokenizer(release)
    siglip = tmp_path / "siglip.safetensors"
    save_file({f"vision_model.{k}": v.clone() for k, v in source.vision_tower.state_dict().items()}, str(siglip))
    out = convert_release(release, vision_tower=siglip, output_dir=tmp_path / "converted", config=preset("tiny"),
                          dtype=torch.float32)
    pipeline = VideoReferPipeline.from_pretrained(out)
    assert _same(pipeline.model, source)
    assert pipeline.processor.region_token_id == 3


def test_convert_keeps_the_stored_fp16_and_copies_the_release_generation_config(tmp_path) -> None:
    import json

    from transformers import GenerationConfig

    from model.checkpoint import convert_release
    from model.inference import VideoReferPipeline
    from model.processing import build_tiny_tokenizer

    source = _model(0)
    release = tmp_path / "VideoRefer-tiny"
    release.mkdir()
    exported = {k: v.to(torch.float16).contiguous() for k, v in released_state_dict(source).items()}
    save_file(exported, str(release / "model.safetensors"))
    build_tiny_tokenizer(release)
    # The released folder's file, as transformers writes it (Qwen2-Instruct's knobs).
    GenerationConfig(do_sample=True, eos_token_id=[2, 0], pad_token_id=0, repetition_penalty=1.05, temperature=0.7,
                     top_k=20, top_p=0.8).save_pretrained(str(release))
    siglip = tmp_path / "siglip.safetensors"
    save_file({f"vision_model.{k}": v.to(torch.float16) for k, v in source.vision_tower.state_dict().items()},
              str(siglip))
    out = convert_release(release, vision_tower=siglip, output_dir=tmp_path / "converted", config=preset("tiny"))
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "pt") as stored:
        assert {stored.get_tensor(name).dtype for name in stored.keys()} == {torch.float16}  # noqa: SIM118
    written = json.loads((out / "generation_config.json").read_text())
    assert written["repetition_penalty"] == 1.05 and written["eos_token_id"] == [2, 0] and written["top_k"] == 20
    pipeline = VideoReferPipeline.from_pretrained(out, dtype="float16")
    assert pipeline.generation_config.repetition_penalty == 1.05
    assert next(pipeline.model.parameters()).dtype == torch.float16
    assert next(VideoReferPipeline.from_pretrained(out).model.parameters()).dtype == torch.float32  # CPU default
    as_bf16 = convert_release(release, vision_tower=siglip, output_dir=tmp_path / "bf16", config=preset("tiny"),
                              dtype=torch.bfloat16)
    with safe_open(str(as_bf16 / "model.safetensors"), "pt") as stored:
        assert {stored.get_tensor(name).dtype for name in stored.keys()} == {torch.bfloat16}  # noqa: SIM118


def test_saved_folders_have_a_model_card_and_readable_files(tiny_model_dir) -> None:
    card = (tiny_model_dir / "README.md").read_text()
    assert "VideoRefer model" in card and "videorefer infer --model" in card and "Qwen2" in card
    assert all(path.stat().st_mode & 0o044 == 0o044 for path in tiny_model_dir.iterdir())  # group/other can read
