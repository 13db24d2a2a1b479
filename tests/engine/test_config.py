"""Engine config: YAML loading, profiles, the backend-kind union, errors as ConfigError, per-stage hashes."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.config import (
    FakeChatConfig,
    GroundingDinoConfig,
    OpenAIChatConfig,
    Sam2Config,
    load_config,
    parse_config,
    profile,
)
from engine.errors import ConfigError


def test_default_is_the_offline_profile_with_fakes() -> None:
    config = load_config(None)
    assert config.profile == "offline"
    assert isinstance(config.agents.analyzer, FakeChatConfig)


CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.mark.parametrize("name", ["offline", "local", "server"])
def test_profiles_build(name: str) -> None:
    assert profile(name, random_weights=name != "offline").profile == name


@pytest.mark.parametrize("name", ["local", "server"])
def test_model_profiles_without_weights_fail_validation_saying_how_to_get_them(name: str) -> None:
    """Fault: SAM 2 and Grounding DINO silently defaulted to random weights (or a hub download) in these profiles."""
    with pytest.raises(ConfigError) as raised:
        profile(name)
    message = str(raised.value)
    assert "agents.segmenter" in message and "agents.grounder" in message
    assert "facebook/sam2.1-hiera" in message and "IDEA-Research/grounding-dino-tiny" in message  # weights: where
    assert "random_weights: true" in message  # and how to ask for random weights instead
    with pytest.raises(ConfigError, match="sam2 has no model"):
        parse_config({"base_profile": name, "agents": {"grounder": {"model": "models/grounding-dino-tiny"}}})
    with pytest.raises(ConfigError, match="grounding_dino has no model"):
        parse_config({"base_profile": name, "agents": {"segmenter": {"model": "models/sam2.1-hiera-tiny"}}})


@pytest.mark.parametrize("name", ["local", "server"])
def test_random_weights_pass_only_when_asked_for(name: str) -> None:
    asked = profile(name, random_weights=True)
    assert asked.agents.segmenter.random_weights and asked.agents.segmenter.model is None
    assert asked.agents.grounder.random_weights and asked.agents.grounder.model is None
    flagged = {"grounder": {"random_weights": True}, "segmenter": {"random_weights": True}}
    from_file = parse_config({"base_profile": name, "agents": flagged})
    assert from_file.agents == asked.agents


def test_weights_and_random_weights_exclude_each_other() -> None:
    with pytest.raises(ValueError, match="not both"):
        Sam2Config(model="models/sam2.1-hiera-tiny", random_weights=True)
    with pytest.raises(ValueError, match="not both"):
        GroundingDinoConfig(model="models/grounding-dino-tiny", random_weights=True)
    with pytest.raises(ValueError, match="random_weights"):
        Sam2Config()
    with pytest.raises(ValueError, match="random_weights"):
        GroundingDinoConfig()
    assert GroundingDinoConfig(model="IDEA-Research/grounding-dino-tiny").model == "IDEA-Research/grounding-dino-tiny"


@pytest.mark.parametrize("name", ["local.yaml", "server.yaml", "offline.yaml", "demo.yaml"])
def test_shipped_configs_name_their_weights(name: str) -> None:
    config = load_config(CONFIGS / name)
    for backend in (config.agents.grounder, config.agents.segmenter):
        assert not getattr(backend, "random_weights", False)


def test_unknown_profile_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        profile("cloud")


def test_yaml_selects_backends_by_kind(tmp_path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "base_profile: offline\n"
        "agents:\n"
        "  refiner: {kind: openai, base_url: 'http://127.0.0.1:9/v1', model: gpt-4o}\n"
        "  segmenter: {kind: sam2, image_size: 128, random_weights: true}\n"
    )
    config = load_config(path)
    assert isinstance(config.agents.refiner, OpenAIChatConfig)
    assert config.agents.refiner.model == "gpt-4o"
    assert isinstance(config.agents.segmenter, Sam2Config)
    assert isinstance(config.agents.analyzer, FakeChatConfig)  # kept from the base profile


@pytest.mark.parametrize(
    "data",
    [
        {"agents": {"analyzer": {"kind": "nope"}}},
        {"agents": {"analyzer": {"kind": "openai"}}},  # model missing
        {"shard_sizes": 3},  # unknown key
        {"sampling": {"num_frames": 0}},
    ],
)
def test_invalid_configs_fail_fast_as_config_errors(data) -> None:
    with pytest.raises(ConfigError):
        parse_config(data)


def test_missing_and_broken_files_are_config_errors(tmp_path) -> None:
    with pytest.raises(ConfigError):
        load_config(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("agents: [unclosed\n")
    with pytest.raises(ConfigError):
        load_config(bad)


