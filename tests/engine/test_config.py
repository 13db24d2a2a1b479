"""Engine config: YAML loading, profiles, the backend-kind union, errors as ConfigError, per-stage hashes."""

from __future__ import annotations

import pytest

from engine.config import (
    EngineConfig,
    FakeChatConfig,
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


@pytest.mark.parametrize("name", ["offline", "local", "server"])
def test_profiles_build(name: str) -> None:
    assert profile(name).profile == name


def test_unknown_profile_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        profile("cloud")


def test_yaml_selects_backends_by_kind(tmp_path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "base_profile: offline\n"
        "agents:\n"
        "  refiner: {kind: openai, base_url: 'http://127.0.0.1:9/v1', model: gpt-4o}\n"
        "  segmenter: {kind: sam2, image_size: 512}\n"
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


def test_stage_hash_changes_only_for_the_stages_that_read_the_setting() -> None:
    base = EngineConfig()
    changed = parse_config({"agents": {"refiner": {"kind": "fake", "model": "another-fake"}}})
    assert base.stage_hash("refine") != changed.stage_hash("refine")
    for stage in ("analyze", "annotate", "segment", "review"):
        assert base.stage_hash(stage) == changed.stage_hash(stage)
    assert base.stage_hash("segment") == EngineConfig().stage_hash("segment")  # deterministic
