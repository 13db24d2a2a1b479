"""Training recipes: one Python function per stage returning a frozen `TrainingRecipe`, and a registry.

A recipe names everything a stage decides: which module groups train (stage 1: connector; stage 2: object
encoder; stages 2.5 and 3: connector + object encoder + LLM; the vision tower is always frozen), the data
mixture (shard globs with weights, single/multi-frame ratio, frames per sample), learning rates per group,
warmup ratio + cosine schedule, global and micro batch, length in steps or epochs, maximum text length,
precision and where the weights start from (`init_from`: the previous stage's output directory).
The single/multi-frame mode is decided in one place: a sample that records its mode (every exported sample does,
the export having drawn it with `SamplingConfig.multi_frame_ratio`) keeps it, and the mixture's
`multi_frame_ratio` draws the mode only for samples that record none (see `DataMixture`).
Numbers of the full-size stages follow PAPER.md "Training stages"; the `tiny_*` recipes are the same stages
shrunk for a CPU and a random tiny model. `get_recipe(name, **overrides)` looks a recipe up and replaces
fields (dotted keys are not needed: `data` is replaced whole).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from engine.errors import ConfigError

_FROZEN = {"frozen": True, "slots": True, "kw_only": True}

ModuleGroup = Literal["connector", "object_encoder", "llm", "vision"]
MODULE_GROUPS: tuple[str, ...] = ("connector", "object_encoder", "llm", "vision")
Precision = Literal["auto", "bf16", "fp32"]


@dataclass(**_FROZEN)
class DataSource:
    """One set of WebDataset shards of the mixture; `weight` is its relative share of the samples drawn."""

    shards: str  # a glob (or brace pattern) of .tar files; several globs may be joined with " "
    weight: float = 1.0
    name: str = ""


@dataclass(**_FROZEN)
class DataMixture:
    """What the loader draws: weighted shard sets, the share of multi-frame samples, frames per sample.

    The mode rule (applied by `model.training.loader`, and nowhere else at training time): a sample that records
    its mode (`mode`, or `extra.mode` as the export writes it) is encoded in that mode whatever the ratio here.
    The export already drew single or multi-frame per sample with `SamplingConfig.multi_frame_ratio` and wrote
    only that mode's masks, so a second draw here would shrink the share of multi-frame samples (half of a half).
    `multi_frame_ratio` is the share of multi-frame samples among those that record no mode (e.g. imported 700K
    items with several annotated frames), drawn per sample key and epoch; None leaves those to the processor
    (single-frame when every object has one mask frame, else multi-frame).
    """

    sources: tuple[DataSource, ...] = ()
    multi_frame_ratio: float | None = 0.5  # for samples without a recorded mode only (see above)
    frames_per_sample: int = 16
    shuffle_buffer: int = 1000
    shuffle_shards: bool = True
    # Samples in a row that may fail to decode or encode before the loader stops with NoUsableSamplesError
    # (it also stops once every source made a full pass without one good sample); fewer are counted and skipped.
    max_consecutive_bad: int = 1000


@dataclass(**_FROZEN)
class TrainingRecipe:
    """Everything one training stage needs besides the data paths given on the command line."""

    name: str
    stage: str  # "1", "2", "2.5", "3"
    trainable: frozenset[str]
    learning_rates: Mapping[str, float]  # per trainable module group
    data: DataMixture = field(default_factory=DataMixture)
    model_preset: str = "7b"  # VideoReferConfig.preset used when `init_from` is None
    # The previous stage's save_pretrained directory (given with --init-from); full-size stages need one
    # (stage 1 a base model directory), tiny stages build a random model from `model_preset` without.
    init_from: str | None = None
    global_batch: int = 128
    micro_batch: int = 1  # per process, per forward/backward
    max_steps: int | None = None  # wins over `epochs` when set
    epochs: float = 1.0
    warmup_ratio: float = 0.03
    min_lr_ratio: float = 0.0  # cosine decays to learning_rate * min_lr_ratio
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    max_grad_norm: float = 1.0
    max_length: int = 2048
    precision: Precision = "auto"  # auto: bf16 on GPU, fp32 on CPU
    activation_checkpointing: bool = False
    # FSDP2 also when one process runs (torchrun --nproc 1 joins a one-process group): the multi-GPU code path
    # (sharded bf16 parameters, DTensor checkpoints) on a single device, as `scripts/gpu_check.sh` runs it.
    fsdp_single_process: bool = False
    seed: int = 0
    num_workers: int = 2
    checkpoint_every: int = 500  # steps between distributed checkpoints (and one at the end)
    keep_checkpoints: int = 2
    log_every: int = 1

    def __post_init__(self) -> None:
        unknown = set(self.trainable) - set(MODULE_GROUPS)
        if unknown:
            raise ConfigError(f"recipe {self.name}: unknown module groups {sorted(unknown)}")
        if "vision" in self.trainable:
            raise ConfigError(f"recipe {self.name}: the vision tower is always frozen")
        missing = set(self.trainable) - set(self.learning_rates)
        if missing:
            raise ConfigError(f"recipe {self.name}: no learning rate for {sorted(missing)}")
        if self.global_batch <= 0 or self.micro_batch <= 0 or self.global_batch % self.micro_batch:
            raise ConfigError(f"recipe {self.name}: global_batch must be a positive multiple of micro_batch")
        ratio = self.data.multi_frame_ratio
        if ratio is not None and not 0.0 <= ratio <= 1.0:
            raise ConfigError(f"recipe {self.name}: multi_frame_ratio must be in [0, 1]")
        if self.data.max_consecutive_bad <= 0:
            raise ConfigError(f"recipe {self.name}: max_consecutive_bad must be positive")
        if self.max_steps is not None and self.max_steps <= 0:
            raise ConfigError(f"recipe {self.name}: max_steps must be positive")

    def accumulation_steps(self, world_size: int) -> int:
        """Micro-batches each process runs per optimizer step so that the global batch stays as reciped."""
        per_step = self.micro_batch * world_size
        if self.global_batch % per_step:
            raise ConfigError(
                f"recipe {self.name}: global_batch {self.global_batch} is not a multiple of "
                f"micro_batch {self.micro_batch} x {world_size} processes"
            )
        return self.global_batch // per_step

    def with_data(self, globs: list[str] | tuple[str, ...]) -> TrainingRecipe:
        """The recipe reading `globs` (command-line data) instead of its own sources, one equal-weight source each.

        A glob may carry a weight as `GLOB::WEIGHT` (e.g. `short/*.tar::3 detailed/*.tar::1`).
        """
        sources = []
        for index, text in enumerate(globs):
            pattern, _, weight = text.partition("::")
            try:
                value = float(weight) if weight else 1.0
            except ValueError as error:
                raise ConfigError(f"bad data weight in {text!r}") from error
            sources.append(DataSource(shards=pattern, weight=value, name=f"source{index}"))
        return dataclasses.replace(self, data=dataclasses.replace(self.data, sources=tuple(sources)))

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (saved next to checkpoints so a run records what it trained with)."""
        value = dataclasses.asdict(self)
        value["trainable"] = sorted(self.trainable)
        value["learning_rates"] = dict(self.learning_rates)
        return value


# ---------------------------------------------------------------- full-size stages (PAPER.md)

_STAGE1_2_LR = 1e-3
_STAGE2_5_3_LR = 2e-5


def stage1() -> TrainingRecipe:
    """Image/video-text alignment: only the STC connector trains (lr 1e-3, global batch 256)."""
    return TrainingRecipe(
        name="stage1",
        stage="1",
        trainable=frozenset({"connector"}),
        learning_rates={"connector": _STAGE1_2_LR},
        data=DataMixture(multi_frame_ratio=0.0),
        global_batch=256,
        micro_batch=8,
    )


def stage2() -> TrainingRecipe:
    """Region-text alignment: only the object encoder trains, on single-frame short captions (1e-3 / 256)."""
    return TrainingRecipe(
        name="stage2",
        stage="2",
        trainable=frozenset({"object_encoder"}),
        learning_rates={"object_encoder": _STAGE1_2_LR},
        data=DataMixture(multi_frame_ratio=0.0),
        global_batch=256,
        micro_batch=8,
    )


def stage2_5() -> TrainingRecipe:
    """High-quality knowledge: connector + object encoder + LLM, half single / half multi-frame (2e-5 / 128).

    Exported samples keep the mode the export drew (its own `multi_frame_ratio`, 0.5 by default); the 0.5 here
    balances only samples that record no mode.
    """
    return TrainingRecipe(
        name="stage2_5",
        stage="2.5",
        trainable=frozenset({"connector", "object_encoder", "llm"}),
        learning_rates={"connector": _STAGE2_5_3_LR, "object_encoder": _STAGE2_5_3_LR, "llm": _STAGE2_5_3_LR},
        data=DataMixture(multi_frame_ratio=0.5),
        global_batch=128,
        micro_batch=2,
        activation_checkpointing=True,
    )


def stage3() -> TrainingRecipe:
    """Instruction tuning: connector + object encoder + LLM on SFT, region and QA data (2e-5 / 128)."""
    return dataclasses.replace(stage2_5(), name="stage3", stage="3")


# ---------------------------------------------------------------- tiny CPU stages (tests, demos)

_TINY = {
    "model_preset": "tiny",
    "global_batch": 4,
    "micro_batch": 2,
    "max_steps": 4,
    "max_length": 256,
    "precision": "fp32",
    "num_workers": 1,
    "checkpoint_every": 2,
    "warmup_ratio": 0.03,
}
_TINY_DATA = {"frames_per_sample": 4, "shuffle_buffer": 8}


def _tiny(recipe: TrainingRecipe, *, init_from: str | None, lr: float) -> TrainingRecipe:
    return dataclasses.replace(
        recipe,
        name=f"tiny_{recipe.name}",
        init_from=init_from,
        learning_rates={group: lr for group in recipe.learning_rates},
        data=dataclasses.replace(recipe.data, **_TINY_DATA),
        activation_checkpointing=False,
        **_TINY,
    )


# Tiny stages use a higher rate than the paper's (5e-3 for every group) so that a few dozen CPU steps visibly move
# a random tiny model; everything else (trainable groups, schedule shape, data mixture) is the full stage's.
_TINY_LR = 5e-3


def tiny_stage1() -> TrainingRecipe:
    """Stage 1 on a random tiny model (built from the `tiny` preset when `init_from` is not given)."""
    return _tiny(stage1(), init_from=None, lr=_TINY_LR)


def tiny_stage2() -> TrainingRecipe:
    return _tiny(stage2(), init_from=None, lr=_TINY_LR)


def tiny_stage2_5() -> TrainingRecipe:
    return _tiny(stage2_5(), init_from=None, lr=_TINY_LR)


def tiny_stage3() -> TrainingRecipe:
    return _tiny(stage3(), init_from=None, lr=_TINY_LR)


RECIPES: dict[str, Callable[[], TrainingRecipe]] = {
    "stage1": stage1,
    "stage2": stage2,
    "stage2_5": stage2_5,
    "stage3": stage3,
    "tiny_stage1": tiny_stage1,
    "tiny_stage2": tiny_stage2,
    "tiny_stage2_5": tiny_stage2_5,
    "tiny_stage3": tiny_stage3,
}


def get_recipe(name: str, **overrides: Any) -> TrainingRecipe:
    """The recipe called `name` with `overrides` replacing its fields; unknown names fail fast (ConfigError)."""
    try:
        factory = RECIPES[name.replace(".", "_")]
    except KeyError:
        raise ConfigError(f"unknown recipe {name!r}; known: {', '.join(RECIPES)}") from None
    recipe = factory()
    if not overrides:
        return recipe
    known = {f.name for f in dataclasses.fields(TrainingRecipe)}
    unknown = set(overrides) - known
    if unknown:
        raise ConfigError(f"unknown recipe fields {sorted(unknown)}")
    if "trainable" in overrides:
        overrides["trainable"] = frozenset(overrides["trainable"])
    return dataclasses.replace(recipe, **overrides)
