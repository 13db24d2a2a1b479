"""Training recipes: the paper's stage numbers, the trainable groups per stage, overrides and fail-fast checks."""

from __future__ import annotations

import pytest

from engine.errors import ConfigError
from model.training.recipes import RECIPES, get_recipe


@pytest.mark.parametrize(
    ("name", "trainable", "lr", "batch"),
    [
        ("stage1", {"connector"}, 1e-3, 256),
        ("stage2", {"object_encoder"}, 1e-3, 256),
        ("stage2_5", {"connector", "object_encoder", "llm"}, 2e-5, 128),
        ("stage3", {"connector", "object_encoder", "llm"}, 2e-5, 128),
    ],
)
def test_full_size_stages_follow_the_paper(name: str, trainable: set[str], lr: float, batch: int) -> None:
    recipe = get_recipe(name)
    assert set(recipe.trainable) == trainable
    assert "vision" not in recipe.trainable
    assert set(recipe.learning_rates.values()) == {lr}
    assert recipe.global_batch == batch
    assert (recipe.warmup_ratio, recipe.epochs, recipe.max_length, recipe.precision) == (0.03, 1.0, 2048, "auto")


def test_tiny_recipes_train_the_same_groups_on_cpu() -> None:
    for stage in ("stage1", "stage2", "stage2_5", "stage3"):
        tiny, full = get_recipe(f"tiny_{stage}"), get_recipe(stage)
        assert tiny.trainable == full.trainable
        assert tiny.precision == "fp32" and tiny.model_preset == "tiny" and tiny.max_steps


def test_stage2_is_single_frame_and_stage2_5_half_multi_frame() -> None:
    assert get_recipe("stage2").data.multi_frame_ratio == 0.0
    assert get_recipe("stage2_5").data.multi_frame_ratio == 0.5


def test_overrides_and_dotted_names() -> None:
    recipe = get_recipe("stage2.5", max_steps=7, micro_batch=4)
    assert recipe.name == "stage2_5" and recipe.max_steps == 7 and recipe.micro_batch == 4
    assert recipe.accumulation_steps(world_size=8) == 4


def test_command_line_data_with_weights() -> None:
    recipe = get_recipe("tiny_stage3").with_data(["a/*.tar::3", "b/*.tar"])
    assert [(s.shards, s.weight) for s in recipe.data.sources] == [("a/*.tar", 3.0), ("b/*.tar", 1.0)]


@pytest.mark.parametrize(
    "bad",
    [
        {"name": "nope"},
        {"name": "stage1", "trainable": {"vision", "connector"}},
        {"name": "stage1", "trainable": {"llm"}},  # no learning rate for it
        {"name": "stage1", "global_batch": 10, "micro_batch": 4},
        {"name": "stage1", "colour": "red"},
    ],
)
def test_bad_recipes_fail_fast(bad: dict) -> None:
    name = bad.pop("name")
    with pytest.raises(ConfigError):
        get_recipe(name, **bad)


def test_batch_that_does_not_divide_over_processes_fails_fast() -> None:
    with pytest.raises(ConfigError):
        get_recipe("tiny_stage1").accumulation_steps(world_size=3)


def test_registry_lists_every_stage() -> None:
    assert {"stage1", "stage2", "stage2_5", "stage3"} <= set(RECIPES)
    assert all(name in RECIPES for name in ("tiny_stage1", "tiny_stage2", "tiny_stage2_5", "tiny_stage3"))
