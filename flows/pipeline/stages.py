"""The data engine's stages, each defined in exactly one place: `STAGES`, the one registry everything derives from.

A `Stage` declares its name, the stages it reads (`parents`), what it consumes (the shard's clips, its clips that
came with objects, or its parent's records), the agent it builds from the config (`build`; export has a `run`
of its own instead), ALL its hash inputs (the config settings its builder may read, the prompt files its agent
renders, and a code `version` to bump when the agent's behaviour changes), the backend roles it calls (Prefect
tags, GPU requests) and how many clips it keeps in flight. The runner, resume hashing, tags, `status`, the CLI's
stage names and export are all derived from the registry.

The hash inputs cannot drift from what the agent reads: a builder gets a `StageSettings` view that hands out
only the declared settings (anything else is a `ConfigError`, which the registry's tests would hit), and the
stage's hash covers the text of every declared prompt (editing a prompt re-runs its stage and everything after
it). A stage's chained hash combines its own hash with its parents' chained hashes, so a change invalidates that
stage and every stage after it, and nothing before it (a new refiner prompt re-runs refine and export, never
SAM 2).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from engine.config import EngineConfig
from engine.errors import ConfigError

INGEST = "ingest"
ANALYZE = "analyze"
ANNOTATE = "annotate"
SEGMENT = "segment"
REVIEW = "review"
REFINE = "refine"
SHORT_CAPTIONS = "short_captions"
GENERATE_QA = "generate_qa"
EXPORT = "export"

Inputs = Literal["clips", "clips_with_objects", "records", "parents"]
_SEGMENTOR_KEYS = ("key_frame", "seed", "min_mask_area_px", "min_mask_frames", "sampling.num_frames",
                   "redetect_every", "link_iou", "cut_threshold")


class StageSettings:
    """The settings a stage declared, and nothing else: `get("sampling.num_frames")`, `chat("analyzer")`."""

    def __init__(self, stage: str, config: EngineConfig, keys: Iterable[str]) -> None:
        self._stage = stage
        self._config = config
        self._keys = frozenset(keys)

    def get(self, dotted: str) -> Any:
        if dotted not in self._keys:
            raise ConfigError(f"stage {self._stage!r} reads {dotted!r} without declaring it in its hash inputs")
        value: Any = self._config
        for part in dotted.split("."):
            value = getattr(value, part)
        return value

    def backend(self, role: str) -> Any:
        """The backend config of an agent role (`analyzer`, `grounder`, ...): `agents.<role>`."""
        return self.get(f"agents.{role}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Stage:
    """One stage of the engine (see the module docstring)."""

    name: str
    summary: str
    parents: tuple[str, ...]
    inputs: Inputs
    config_keys: tuple[str, ...] = ()  # settings the builder reads, besides its backends
    chat_roles: tuple[str, ...] = ()  # `agents.<role>` chat backends it calls
    vision_roles: tuple[str, ...] = ()  # `agents.grounder` / `agents.segmenter`
    prompts: tuple[str, ...] = ()  # prompt files (agents/prompts/<name>.txt) its agent renders
    version: str = "1"  # bump when the agent's code changes what it writes
    clips_in_flight: int | None = None  # None: `config.concurrency` items; GPU-model stages take one clip at a time
    build: Callable[[StageSettings, Any], Any] | None = None  # (settings, backend pool) -> agent
    run: Callable[..., Any] | None = None  # a stage with its own runner (export)
    per_shard: bool = True

    @property
    def hash_keys(self) -> tuple[str, ...]:
        return (*self.config_keys, *(f"agents.{role}" for role in (*self.chat_roles, *self.vision_roles)))

    def settings(self, config: EngineConfig) -> StageSettings:
        return StageSettings(self.name, config, self.hash_keys)

    def own_hash(self, config: EngineConfig) -> str:
        """Hash of exactly what this stage's output depends on: settings, prompt texts, code version."""
        from agents.prompting import load_prompt

        dump = config.model_dump(mode="json")
        picked = {key: _pick(dump, key) for key in self.hash_keys}
        prompts = {name: load_prompt(name).version for name in self.prompts}
        text = json.dumps({"settings": picked, "prompts": prompts, "version": self.version}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def _pick(dump: Mapping[str, Any], dotted: str) -> Any:
    value: Any = dump
    for part in dotted.split("."):
        value = value[part]
    return value


# ---------------------------------------------------------------- the agents each stage builds


def _segmentor(settings: StageSettings, pool: Any) -> Any:
    from agents.segmentor import Segmentor

    return Segmentor(
        pool.grounder(settings.backend("grounder")),
        pool.segmenter(settings.backend("segmenter")),
        key_frame=settings.get("key_frame"),
        seed=settings.get("seed"),
        min_mask_area_px=settings.get("min_mask_area_px"),
        min_mask_frames=settings.get("min_mask_frames"),
        num_frames=settings.get("sampling.num_frames"),
        redetect_every=settings.get("redetect_every"),
        link_iou=settings.get("link_iou"),
        cut_threshold=settings.get("cut_threshold"),
    )


def _analyzer(settings: StageSettings, pool: Any) -> Any:
    from agents.analyzer import Analyzer

    return Analyzer(pool.chat(settings.backend("analyzer")))


def _annotator(settings: StageSettings, pool: Any) -> Any:
    from agents.annotator import Annotator

    return Annotator(pool.chat(settings.backend("annotator")), num_frames=settings.get("sampling.num_frames"))


def _reviewer(settings: StageSettings, pool: Any) -> Any:
    from agents.reviewer import Reviewer

    # One outlined key frame, as in the paper; masklets that switch identity are rejected before any model call.
    return Reviewer(pool.chat(settings.backend("region_captioner")), pool.chat(settings.backend("judge")),
                    identity_jump=settings.get("identity_jump"))


def _refiner(settings: StageSettings, pool: Any) -> Any:
    from agents.refiner import Refiner

    return Refiner(pool.chat(settings.backend("refiner")))


def _short_captioner(settings: StageSettings, pool: Any) -> Any:
    from agents.short_captions import ShortCaptioner

    return ShortCaptioner(pool.chat(settings.backend("analyzer")), _segmentor(settings, pool))


def _qa_generator(settings: StageSettings, pool: Any) -> Any:
    from agents.qa import QAGenerator

    return QAGenerator(pool.chat(settings.backend("annotator")), pool.chat(settings.backend("refiner")),
                       num_frames=settings.get("sampling.num_frames"))


def _export(*args: Any, **kwargs: Any) -> Any:
    from flows.pipeline.export import export_shard

    return export_shard(*args, **kwargs)


STAGES: tuple[Stage, ...] = (
    Stage(name=INGEST, summary="probe the manifest's new rows and pin them into shards", parents=(),
          inputs="clips", config_keys=("shard_size",), per_shard=False),
    Stage(name=ANALYZE, summary="nouns of each clip's caption", parents=(INGEST,), inputs="clips",
          chat_roles=("analyzer",), prompts=("analyzer",), build=_analyzer),
    Stage(name=ANNOTATE, summary="appearance and motion text per object", parents=(ANALYZE,), inputs="records",
          config_keys=("sampling.num_frames",), chat_roles=("annotator",), prompts=("annotator",),
          build=_annotator),
    Stage(name=SEGMENT, summary="key-frame box, mask, propagated masklet", parents=(ANNOTATE,), inputs="records",
          config_keys=_SEGMENTOR_KEYS, vision_roles=("grounder", "segmenter"), clips_in_flight=1,
          build=_segmentor),
    Stage(name=REVIEW, summary="region caption + same-object judge", parents=(SEGMENT,), inputs="records",
          config_keys=("identity_jump",), chat_roles=("region_captioner", "judge"),
          prompts=("region_caption", "judge"), build=_reviewer),
    Stage(name=REFINE, summary="one detailed caption per accepted object", parents=(REVIEW,), inputs="records",
          chat_roles=("refiner",), prompts=("refiner",), build=_refiner),
    Stage(name=SHORT_CAPTIONS, summary="single subject + segmentation, the clip's caption as short caption",
          parents=(INGEST,), inputs="clips", config_keys=_SEGMENTOR_KEYS, chat_roles=("analyzer",),
          vision_roles=("grounder", "segmenter"), prompts=("analyzer_single_subject",), clips_in_flight=1,
          build=_short_captioner),
    Stage(name=GENERATE_QA, summary="QA for clips that came with masks and referring expressions",
          parents=(INGEST,), inputs="clips_with_objects", config_keys=("sampling.num_frames",),
          chat_roles=("annotator", "refiner"), prompts=("annotator", "qa"), build=_qa_generator),
    Stage(name=EXPORT, summary="WebDataset shards and 700K-style JSON from the finished stages",
          parents=(REFINE, SHORT_CAPTIONS, GENERATE_QA), inputs="parents", config_keys=("sampling", "seed"),
          run=_export),
)
STAGE_BY_NAME: dict[str, Stage] = {stage.name: stage for stage in STAGES}

# Derived views (never edited by hand).
STAGE_PARENTS: dict[str, tuple[str, ...]] = {stage.name: stage.parents for stage in STAGES}
SHARD_STAGES: tuple[str, ...] = tuple(stage.name for stage in STAGES if stage.per_shard)


def get_stage(name: str) -> Stage:
    """The per-shard stage called `name`; a `ConfigError` naming the stages otherwise."""
    stage = STAGE_BY_NAME.get(name)
    if stage is None or not stage.per_shard:
        raise ConfigError(f"unknown stage {name!r}; expected one of {', '.join(SHARD_STAGES)}")
    return stage


def check_stage(name: str) -> str:
    """Return `name` when it names a per-shard stage; a `ConfigError` otherwise."""
    return get_stage(name).name


def chained_hash(config: EngineConfig, stage: str) -> str:
    """The stage's own hash combined with the chained hashes of every stage it reads from."""
    if stage == INGEST:
        # Shard membership is pinned once and never recomputed, so ingest settings (shard_size) change which
        # clips future shards get, not the output of shards that exist: they do not invalidate any stage.
        return "ingest"
    definition = STAGE_BY_NAME[stage]
    parents = "".join(f"{parent}={chained_hash(config, parent)};" for parent in definition.parents)
    return hashlib.sha256(f"{stage}:{definition.own_hash(config)};{parents}".encode()).hexdigest()[:12]


def downstream(stages: Iterable[str]) -> list[str]:
    """The given per-shard stages and every stage that reads from them, in pipeline order."""
    picked = set(stages)
    changed = True
    while changed:
        changed = False
        for stage in STAGES:
            if stage.name not in picked and picked.intersection(stage.parents):
                picked.add(stage.name)
                changed = True
    return [name for name in SHARD_STAGES if name in picked]


def backend_configs(stage: str, config: EngineConfig) -> list[Any]:
    """The backend configs a stage calls (chat first, then vision)."""
    definition = STAGE_BY_NAME[stage]
    return [getattr(config.agents, role) for role in (*definition.chat_roles, *definition.vision_roles)]


def stage_tags(stage: str, config: EngineConfig) -> set[str]:
    """Prefect tags of a stage task: its stage and every backend it calls (keys of concurrency limits)."""
    definition = STAGE_BY_NAME[stage]
    tags = {f"stage:{stage}"} | {f"chat:{getattr(config.agents, role).kind}" for role in definition.chat_roles}
    tags |= {getattr(config.agents, role).kind for role in definition.vision_roles} - {"fake"}
    if any(str(getattr(backend, "device", "")).startswith("cuda") for backend in backend_configs(stage, config)):
        tags.add("gpu")
    return tags


def needs_gpu(stage: str, config: EngineConfig) -> bool:
    """A stage asks the runner for a GPU when one of its backends runs on CUDA."""
    return "gpu" in stage_tags(stage, config)
