"""The stage graph: chained hashes invalidate a changed stage and everything after it, nothing before."""

from __future__ import annotations

import pytest

from engine.config import FakeChatConfig, FakeGrounderConfig, parse_config
from engine.errors import ConfigError
from flows.pipeline.stages import SHARD_STAGES, chained_hash, check_stage, downstream


def _hashes(config) -> dict[str, str]:
    return {stage: chained_hash(config, stage) for stage in SHARD_STAGES}


def _changed(before, after) -> set[str]:
    return {stage for stage in SHARD_STAGES if before[stage] != after[stage]}


def test_refiner_change_invalidates_refine_and_export_only() -> None:
    base = parse_config({"base_profile": "offline"})
    changed = base.model_copy(update={"agents": base.agents.model_copy(update={"refiner": FakeChatConfig(seed=7)})})
    # generate_qa uses the refiner's backend for its questions, so it re-runs too.
    assert _changed(_hashes(base), _hashes(changed)) == {"refine", "generate_qa", "export"}


def test_analyzer_change_invalidates_the_detailed_chain() -> None:
    base = parse_config({"base_profile": "offline"})
    changed = base.model_copy(update={"agents": base.agents.model_copy(update={"analyzer": FakeChatConfig(seed=3)})})
    assert _changed(_hashes(base), _hashes(changed)) == {
        "analyze", "annotate", "segment", "review", "refine", "short_captions", "export",
    }


def test_pinned_shards_ignore_shard_size_and_export_settings_touch_only_export() -> None:
    base = parse_config({"base_profile": "offline"})
    assert _changed(_hashes(base), _hashes(base.model_copy(update={"shard_size": 7}))) == set()
    resized = base.model_copy(update={"sampling": base.sampling.model_copy(update={"image_size": 224})})
    assert _changed(_hashes(base), _hashes(resized)) == {"export"}


def test_hash_is_stable_for_equal_configs() -> None:
    first = parse_config({"base_profile": "offline", "agents": {"grounder": {"kind": "fake"}}})
    second = parse_config({"base_profile": "offline"}).model_copy()
    assert first.agents.grounder == FakeGrounderConfig()
    assert _hashes(first) == _hashes(second)


def test_downstream_follows_the_graph() -> None:
    assert downstream(["refine"]) == ["refine", "export"]
    assert downstream(["segment"]) == ["segment", "review", "refine", "export"]


def test_unknown_stage_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown stage"):
        check_stage("polish")
