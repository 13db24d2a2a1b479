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


# ---------------------------------------------------------------- the registry (issue 12)


def test_editing_a_prompt_reruns_its_stage_and_what_follows(tmp_path, monkeypatch) -> None:
    import shutil

    from agents import prompting

    base = parse_config({"base_profile": "offline"})
    before = _hashes(base)
    prompts = tmp_path / "prompts"
    shutil.copytree(prompting.PROMPT_DIR, prompts)
    refiner = prompts / "refiner.txt"
    refiner.write_text(refiner.read_text() + "\nBe brief.\n")
    monkeypatch.setattr(prompting, "PROMPT_DIR", prompts)
    prompting.load_prompt.cache_clear()
    try:
        assert _changed(before, _hashes(base)) == {"refine", "export"}
    finally:
        prompting.load_prompt.cache_clear()


@pytest.mark.parametrize(
    "update",
    [{"key_frame": "first"}, {"min_mask_area_px": 99}, {"min_mask_frames": 5}, {"sampling": {"num_frames": 8}}],
)
def test_every_setting_the_segmentor_reads_reruns_short_captions_and_segment(update) -> None:
    base = parse_config({"base_profile": "offline"})
    changed = parse_config({"base_profile": "offline", **update})
    assert {"segment", "short_captions", "export"} <= _changed(_hashes(base), _hashes(changed))


def test_builders_read_only_declared_settings_and_declare_every_prompt_they_render() -> None:
    from agents.prompting import Prompt
    from flows.pipeline.backends import BackendPool, TaskBackends
    from flows.pipeline.stages import STAGES

    config = parse_config({"base_profile": "offline"})
    pool = BackendPool()
    for stage in STAGES:
        if stage.build is None:
            continue
        agent = stage.build(stage.settings(config), TaskBackends(pool))  # undeclared reads raise ConfigError
        seen: set[str] = set()
        for part in [agent, *vars(agent).values()]:
            for value in getattr(part, "__dict__", {}).values():
                if isinstance(value, Prompt):
                    seen.add(value.name)
        assert seen == set(stage.prompts), stage.name


def test_undeclared_settings_are_refused() -> None:
    from flows.pipeline.stages import STAGE_BY_NAME

    settings = STAGE_BY_NAME["refine"].settings(parse_config({"base_profile": "offline"}))
    assert settings.backend("refiner").kind == "fake"
    with pytest.raises(ConfigError, match="without declaring"):
        settings.get("key_frame")


def test_tags_names_and_order_come_from_the_registry() -> None:
    from flows.pipeline.stages import STAGES, stage_tags

    assert tuple(stage.name for stage in STAGES if stage.per_shard) == SHARD_STAGES
    server = parse_config({"base_profile": "offline", "agents": {
        "refiner": {"kind": "openai", "base_url": "http://127.0.0.1:1/v1", "model": "m"},
        "segmenter": {"kind": "sam2", "device": "cuda", "model": "models/sam2.1-hiera-large"},
    }})
    assert stage_tags("refine", server) == {"stage:refine", "chat:openai"}
    assert {"sam2", "gpu", "stage:segment"} <= stage_tags("segment", server)
