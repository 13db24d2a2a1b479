"""The configuration holds VideoRefer-7B's numbers by default and a tiny preset; it round-trips through JSON."""

from __future__ import annotations

import pytest
import torch

from engine.errors import ConfigError
from model.configuration import VideoReferConfig, preset
from model.modeling import VideoReferForCausalLM, parameter_counts


def test_7b_preset_has_the_papers_numbers() -> None:
    config = VideoReferConfig.preset("7b")
    vision, text = config.vision_config, config.text_config
    assert (vision.hidden_size, vision.num_hidden_layers, vision.intermediate_size) == (1152, 27, 4304)
    assert (vision.num_attention_heads, vision.image_size, vision.patch_size) == (16, 384, 14)
    assert (text.hidden_size, text.num_hidden_layers, text.intermediate_size) == (3584, 28, 18944)
    assert (text.num_attention_heads, text.num_key_value_heads) == (28, 4)
    assert (text.vocab_size, config.region_token_id) == (151647, 151646)
    assert (config.region_tokens_per_object, config.vision_feature_layer, config.num_frames) == (4, -2, 16)
    assert config.grid_size == 27
    assert config.video_token_count() == 1352  # 8 x 13 x 13
    assert config.video_token_count(8) == 676  # the release's evaluation: 8 frames
    assert config.video_token_count(15) == 7 * 169  # odd: the last frame is dropped, as released
    assert config.tokens_per_object("single") == 1
    assert config.tokens_per_object("multi", 2) == 2
    assert config.tokens_per_object("multi", 16) == 4


def test_default_config_is_the_7b_preset() -> None:
    assert VideoReferConfig().to_dict() == preset("7b").to_dict()


def test_7b_model_builds_on_meta_with_the_released_object_encoder_size() -> None:
    with torch.device("meta"):
        model = VideoReferForCausalLM(preset("7b"))
    counts = parameter_counts(model)
    assert counts["object_encoder"] == 16_980_992
    assert counts["total"] == sum(counts[group] for group in ("vision", "connector", "object_encoder", "llm"))
    assert model.object_encoder.feat_linear[0].weight.shape == (3584, 1152)
    assert model.object_encoder.feat_linear[2].weight.shape == (3584, 3584)
    assert model.language_model.get_input_embeddings().weight.shape == (151647, 3584)


def test_tiny_preset_round_trips_through_save_pretrained(tmp_path) -> None:
    config = preset("tiny")
    assert config.grid_size == 8
    assert config.region_token_id == 3
    config.save_pretrained(tmp_path)
    loaded = VideoReferConfig.from_pretrained(tmp_path)
    assert loaded.to_dict() == config.to_dict()
    assert loaded.connector_downsample == (2, 2, 2)


def test_unknown_preset_and_bad_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError):
        preset("13b")
    with pytest.raises(ConfigError):
        preset("tiny", region_tokens_per_object=0)
