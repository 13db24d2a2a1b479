"""Engine configuration: pydantic models loaded from YAML, with a discriminated union per backend kind.

A config file selects, per agent, which chat backend answers it (`fake`, `replay`, `openai` for any
OpenAI-compatible server such as vLLM, `local` for transformers models on this machine) and which
grounder/segmenter builds masks (`fake`, `grounding_dino`, `sam2`, `sam3`). Profiles `offline`, `local` and
`server` are the three starting points. Secrets never live here: an API key is read from the
environment variable named by `api_key_env`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, field_validator, model_validator

from engine.errors import ConfigError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------- chat backends


class FakeChatConfig(_Strict):
    """Deterministic, schema-valid replies derived from the request (no model at all)."""

    kind: Literal["fake"] = "fake"
    model: str = "fake-chat"
    latency_s: float = 0.0
    # Probability in [0, 1] that a reviewer judge reply disagrees on purpose (quality tests).
    disagree_rate: float = 0.0
    seed: int = 0


class ReplayChatConfig(_Strict):
    """Answers from a cassette of recorded requests; records through `inner` when `mode` is `record`."""

    kind: Literal["replay"] = "replay"
    cassette: str
    mode: Literal["strict", "record", "fallthrough"] = "strict"
    inner: ChatBackendConfig | None = None


class OpenAIChatConfig(_Strict):
    """Any OpenAI-compatible chat-completions server: vLLM (`vllm serve MODEL`) or the OpenAI API."""

    kind: Literal["openai"] = "openai"
    base_url: str = "http://127.0.0.1:8000/v1"
    model: str
    api_key_env: str = "OPENAI_API_KEY"
    max_in_flight: int = 32
    timeout_s: float = 120.0
    max_retries: int = 6
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0
    temperature: float = 0.2
    max_tokens: int = 1024
    structured_output: Literal["json_schema", "json_object", "none"] = "json_schema"
    # HTTP transport: `pooled` is a lean keep-alive HTTP/1.1 pool for high request rates to plain-http servers
    # (vLLM); `httpx` is the OpenAI client's own; `auto` picks pooled for http:// without a proxy, else httpx.
    transport: Literal["auto", "pooled", "httpx"] = "auto"
    # Request path: `lean` writes each request straight onto the pooled connections (plain http://, a few dozen
    # Python calls a request); `sdk` goes through the OpenAI SDK (https, proxies) over `transport`; `auto` picks
    # lean wherever the transport would be pooled, else sdk. Both share retries, bound, accounting and parsing.
    client: Literal["auto", "lean", "sdk"] = "auto"


class LocalChatConfig(_Strict):
    """A transformers model on this machine (text LLM or image-text VLM through the Auto classes)."""

    kind: Literal["local"] = "local"
    model: str  # a local directory (or hub id on machines that have a hub)
    modality: Literal["text", "vision"] = "text"
    device: str = "cpu"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    batch_size: int = 8
    max_new_tokens: int = 256
    temperature: float = 0.0


ChatBackendConfig = Annotated[
    FakeChatConfig | ReplayChatConfig | OpenAIChatConfig | LocalChatConfig, Field(discriminator="kind")
]
ReplayChatConfig.model_rebuild()


# ---------------------------------------------------------------- grounding / segmentation


class FakeGrounderConfig(_Strict):
    """Ground-truth boxes of synthetic clips when present, else a deterministic central box."""

    kind: Literal["fake"] = "fake"


class GroundingDinoConfig(_Strict):
    """transformers' Grounding DINO from `model` (a local folder, or a hub id where a hub is reachable).

    There is no default model: a config names its weights, or asks for a tiny randomly initialised model with
    `random_weights: true` (tests and demos only: its boxes are meaningless). Neither, or both, is a
    validation error (a `ConfigError` once the engine config is parsed), raised before any model work.
    """

    kind: Literal["grounding_dino"] = "grounding_dino"
    model: str | None = None
    random_weights: bool = False
    device: str = "cpu"
    box_threshold: float = 0.35
    text_threshold: float = 0.25

    @model_validator(mode="after")
    def _weights_named(self) -> GroundingDinoConfig:
        if self.model and self.random_weights:
            raise ValueError("grounding_dino: give either `model` or `random_weights: true`, not both")
        if not self.model and not self.random_weights:
            raise ValueError(
                "grounding_dino has no model. Get the weights on a machine with the Hugging Face hub, e.g. "
                "`hf download IDEA-Research/grounding-dino-tiny --local-dir models/grounding-dino-tiny` "
                "(or IDEA-Research/grounding-dino-base), and set `model: models/grounding-dino-tiny`; or set "
                "`random_weights: true` for a tiny random model (tests and demos only: its boxes are meaningless)"
            )
        return self


GrounderConfig = Annotated[FakeGrounderConfig | GroundingDinoConfig, Field(discriminator="kind")]


class MaskDegradation(_Strict):
    """A deliberate, labelled damage to the fake segmenter's masks, so audits can see J&F fall; off by default.

    Applied to every mask in this order: moved `shift_px` pixels right and down (what leaves the frame is lost),
    eroded by a disk of radius `erode_px`, dilated by a disk of radius `dilate_px`. A degraded segmenter names
    itself in provenance (`fake-segmenter+degraded(shift_px=4,...)`), and the setting is part of the segment
    stage's hash, so changing it re-runs segment and what follows.
    """

    shift_px: int = 0
    erode_px: int = 0
    dilate_px: int = 0

    @field_validator("shift_px", "erode_px", "dilate_px")
    @classmethod
    def _not_negative(cls, value: int) -> int:
        if value < 0:
            raise ValueError("must be >= 0")
        return value

    @property
    def active(self) -> bool:
        return bool(self.shift_px or self.erode_px or self.dilate_px)


class FakeSegmenterConfig(_Strict):
    """Ground-truth masks of synthetic clips when present, else the box filled on every frame; `degrade` damages
    them on purpose (`MaskDegradation`, default off)."""

    kind: Literal["fake"] = "fake"
    degrade: MaskDegradation = MaskDegradation()


class _VideoSegmenterConfig(_Strict):
    """What the transformers video segmenters share: weights as a Hugging Face folder, device, frames, batching.

    `model` is a local folder saved by transformers (`hf download <repo> --local-dir <folder>`; a hub id works where
    a hub is reachable). There is no default: a config names its weights, or asks for a tiny randomly initialised
    model with `random_weights: true` (tests and demos only: its masks are meaningless), whose input size is
    `image_size` (default 128). Neither, or both, is a validation error (a `ConfigError` once the engine config is
    parsed), raised before any model work. `encoder_batch` frames go through the image encoder at once.
    """

    model: str | None = None
    random_weights: bool = False  # build a tiny random model: must be asked for explicitly
    device: str = "cpu"
    image_size: PositiveInt | None = None  # the random model's input size (real weights have their own)
    max_frames: PositiveInt = 64  # frames of the clip the segmenter tracks through (uniformly thinned)
    encoder_batch: PositiveInt = 8  # frames per image-encoder batch

    @model_validator(mode="before")
    @classmethod
    def _sam2_package_keys_are_gone(cls, data: Any) -> Any:
        if isinstance(data, dict) and ({"checkpoint", "config_name"} & set(data)):
            raise ValueError(
                "`checkpoint` and `config_name` belonged to the `sam2` package backend, which is gone: the segmenter "
                "runs through transformers now. Set `model:` to a Hugging Face folder, e.g. `hf download "
                "facebook/sam2.1-hiera-large --local-dir models/sam2.1-hiera-large` and `model: "
                "models/sam2.1-hiera-large`"
            )
        return data

    @model_validator(mode="after")
    def _weights_named(self) -> _VideoSegmenterConfig:
        kind = getattr(self, "kind", "segmenter")
        if self.model and self.random_weights:
            raise ValueError(f"{kind}: give either `model` or `random_weights: true`, not both")
        if not self.model and not self.random_weights:
            raise ValueError(f"{kind} has no model. {_WEIGHTS_HELP[kind]}")
        if self.model and self.image_size is not None:
            raise ValueError(f"{kind}: `image_size` sets the random model's input size; real weights have their own")
        return self


_WEIGHTS_HELP = {
    "sam2": (
        "Get SAM 2.1 weights in transformers' format on a machine with the Hugging Face hub, e.g. `hf download "
        "facebook/sam2.1-hiera-large --local-dir models/sam2.1-hiera-large` (or facebook/sam2.1-hiera-tiny, "
        "-small, -base-plus), and set `model: models/sam2.1-hiera-large`; or set `random_weights: true` for a "
        "tiny random model (tests and demos only: its masks are meaningless)"
    ),
    "sam3": (
        "Get SAM 3 in transformers' format on a machine with the Hugging Face hub (`hf download facebook/sam3 "
        "--local-dir models/sam3`; the repository is gated: accept its licence first) and set `model: models/sam3`; "
        "or set `random_weights: true` for a tiny random model (tests and demos only: its masks are meaningless)"
    ),
}


class Sam2Config(_VideoSegmenterConfig):
    """SAM 2 (2.1) video through transformers' `Sam2VideoModel`: boxes or points on a frame -> masklets."""

    kind: Literal["sam2"] = "sam2"


class Sam3Config(_VideoSegmenterConfig):
    """SAM 3 video through transformers' `Sam3VideoModel`: a noun phrase -> every instance, tracked with stable ids;
    boxes or points go through its tracker. `score_threshold` overrides the detection threshold of the model's
    config (a random model needs a low one to find anything)."""

    kind: Literal["sam3"] = "sam3"
    score_threshold: float | None = None


SegmenterConfig = Annotated[FakeSegmenterConfig | Sam2Config | Sam3Config, Field(discriminator="kind")]


# ---------------------------------------------------------------- engine


class SamplingConfig(_Strict):
    num_frames: PositiveInt = 16  # frames the annotator / reviewer / exported sample see
    mask_frames: PositiveInt = 16  # frames of a masklet kept in a detailed / QA sample
    image_size: PositiveInt = 384  # the vision tower's square; exported frames keep aspect, short side <= this
    patch_size: PositiveInt = 14  # the vision tower's patch (SigLIP so400m); masks are checked on the
    # image_size // patch_size grid
    multi_frame_ratio: float = 0.5  # fraction of detailed/QA samples exported in multi-frame mode


class LimitsConfig(_Strict):
    """Bounds on what the engine accepts from outside; an item above one becomes a reject with its reason.

    `max_video_bytes` bounds a video file (or a frame folder's images together), read to the end to hash it;
    `max_decoded_pixels` bounds width x height x frames decoded at once (the most frames a stage reads of one
    clip), checked from the stream header at ingest, before anything is decoded: the default holds 16 frames of
    4096 x 4096 or 64 frames of 4K; `max_text_chars` bounds a caption, an object's name or expression and a
    700K conversation turn.
    """

    max_video_bytes: PositiveInt = 32 * 1024**3
    max_decoded_pixels: PositiveInt = 2**29
    max_text_chars: PositiveInt = 20_000


class PathsConfig(_Strict):
    """Where the local videos a manifest or a 700K JSON names may lie.

    A path is resolved (`..` and symlinks followed) and must fall inside an allowed root: the manifest's folder
    and the dataset root (for a 700K import: its `--videos` folder), plus `allowed_roots`. Anything else is a
    `path_not_allowed` reject, before the file is opened, unless `allow_outside: true` says so explicitly.
    """

    allowed_roots: tuple[str, ...] = ()
    allow_outside: bool = False


class AgentsConfig(_Strict):
    analyzer: ChatBackendConfig = FakeChatConfig()
    annotator: ChatBackendConfig = FakeChatConfig()
    region_captioner: ChatBackendConfig = FakeChatConfig()
    judge: ChatBackendConfig = FakeChatConfig()
    refiner: ChatBackendConfig = FakeChatConfig()
    grounder: GrounderConfig = FakeGrounderConfig()
    segmenter: SegmenterConfig = FakeSegmenterConfig()


class EngineConfig(_Strict):
    """Everything that decides what the engine produces. Which settings each stage's hash covers is declared
    by the stage itself (flows.pipeline.stages), so resume re-runs exactly the stages a change touches."""

    profile: Literal["offline", "local", "server", "custom"] = "offline"
    seed: int = 0
    shard_size: int = 500
    max_reject_fraction: float = 0.95  # a stage whose rejected fraction is above this fails the run
    min_mask_area_px: int = 16  # smaller masks count as empty
    min_mask_frames: int = 2  # masklets present on fewer frames are degenerate
    key_frame: Literal["random", "first", "middle"] | int = "random"
    # Segmentation beyond the key frame (agents.segmentor): ground again every `redetect_every`-th sampled frame and
    # on the first frame after a cut (mean absolute difference of two sampled frames above `cut_threshold`, 0-255);
    # a detection whose mask overlaps a masklet by `link_iou` is that masklet's object, the others start new ones.
    redetect_every: int = Field(default=4, ge=0)  # 0: the key frame only (the paper's segmentor)
    link_iou: float = Field(default=0.5, gt=0.0, le=1.0)
    cut_threshold: float = Field(default=48.0, gt=0.0)
    # Reviewer: a masklet whose mask centre leaves its own motion by more than `identity_jump` object radii between
    # two frames switched to another object (`identity_switch`); 0 turns the check off.
    identity_jump: float = Field(default=1.5, ge=0.0)
    concurrency: int = 32  # items in flight inside one stage task
    sampling: SamplingConfig = SamplingConfig()
    agents: AgentsConfig = AgentsConfig()
    limits: LimitsConfig = LimitsConfig()
    paths: PathsConfig = PathsConfig()


def profile(name: str, *, random_weights: bool = False) -> EngineConfig:
    """The built-in starting points: `offline` (fakes), `local` (transformers), `server` (vLLM URLs).

    `local` and `server` name no weights for Grounding DINO and SAM 2, so on their own they fail validation
    (a `ConfigError` saying how to get the weights) unless `random_weights=True` asks for random weights
    (tests and demos only). A config file based on them (`base_profile: local`) names the weights instead, as
    configs/local.yaml and configs/server.yaml do.
    """
    data = _profile_data(name, random_weights=random_weights)
    try:
        return EngineConfig.model_validate(data)
    except ValidationError as exc:
        problems = "\n".join(
            f"  {'.'.join(str(part) for part in error['loc'])}: {error['msg']}" for error in exc.errors()
        )
        raise ConfigError(f"profile {name!r} is not usable as it is:\n{problems}") from exc


def _profile_data(name: str, *, random_weights: bool = False) -> dict[str, Any]:
    """The profile `name` as a plain mapping, not yet validated (config files are merged into it first)."""
    if name == "offline":
        return EngineConfig(profile="offline").model_dump(mode="json")
    if name == "local":
        text = LocalChatConfig(model="Qwen/Qwen2-0.5B-Instruct")
        vision = LocalChatConfig(model="Qwen/Qwen2-VL-2B-Instruct", modality="vision")
        agents = AgentsConfig(analyzer=text, annotator=vision, region_captioner=vision, judge=text, refiner=text)
        device = "cpu"
    elif name == "server":
        llm = OpenAIChatConfig(base_url="http://127.0.0.1:8001/v1", model="Qwen/Qwen2-7B-Instruct")
        vlm = OpenAIChatConfig(base_url="http://127.0.0.1:8002/v1", model="OpenGVLab/InternVL2-26B")
        agents = AgentsConfig(
            analyzer=llm, annotator=vlm, region_captioner=vlm, judge=llm,
            refiner=OpenAIChatConfig(base_url="https://api.openai.com/v1", model="gpt-4o"),
        )
        device = "cuda"
    else:
        raise ConfigError(f"unknown profile {name!r}; expected offline, local or server")
    data = EngineConfig(profile=name, agents=agents).model_dump(mode="json")
    # The model backends are built unvalidated: they name no weights, which validation then reports.
    vision_backends = {
        "grounder": GroundingDinoConfig.model_construct(device=device, random_weights=random_weights),
        "segmenter": Sam2Config.model_construct(device=device, random_weights=random_weights),
    }
    data["agents"].update({key: value.model_dump(mode="json") for key, value in vision_backends.items()})
    return data


def load_config(path: str | Path | None) -> EngineConfig:
    """Read a YAML config file (or the offline profile when `path` is None); errors are `ConfigError`."""
    if path is None:
        return profile("offline")
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    from engine.parsing import load_yaml  # duplicate keys, alias bombs, deep nesting, huge numbers: one line

    try:
        data = load_yaml(path.read_bytes(), f"config file {path}") or {}
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror or exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of settings, not {type(data).__name__}")
    return parse_config(data, source=str(path))


def parse_config(data: dict[str, Any], *, source: str = "<dict>") -> EngineConfig:
    """Validate a config mapping; `base_profile: NAME` starts from a built-in profile."""
    data = dict(data)
    base = data.pop("base_profile", None)
    try:
        if base is not None:
            merged = _deep_merge(_profile_data(base), data)
            return EngineConfig.model_validate(merged)
        return EngineConfig.model_validate(data)
    except ValidationError as exc:
        from engine.parsing import bounded

        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:10])
        raise ConfigError(f"invalid config {source}: {bounded(problems, 1500)}") from None


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and "kind" not in value:
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out
