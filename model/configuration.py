"""The VideoRefer model configuration: SigLIP vision tower, STC connector, Qwen2 LLM and object encoder settings.

`VideoReferConfig` is a transformers `PretrainedConfig` (model_type "videorefer") holding a `SiglipVisionConfig`
and a `Qwen2Config` as sub-configs plus the connector and object-encoder settings. Its defaults are the numbers of
VideoRefer-7B (PAPER.md "Model"): SigLIP so400m patch14 at 384 px (27x27 grid of width 1152, second-to-last layer),
an STC connector of depth 4 into Qwen2-7B (hidden 3584, vocabulary 151647 with `<region>` = 151646), 16 frames,
u = 4 tokens per object. `preset("tiny")` is a few-layer, narrow, 64-px version for tests and CPU runs whose
vocabulary matches `model.processing.build_tiny_tokenizer`.
"""

from __future__ import annotations

from typing import Any

from transformers import AutoConfig, PretrainedConfig, Qwen2Config, SiglipVisionConfig

try:  # newer transformers 5.x: sub-configs are declared with their defaults and built by PretrainedConfig
    from transformers.configuration_utils import SubConfigSpec
except ImportError:  # 5.17 (the lent GPU machine's): declared as classes, built in VideoReferConfig.__post_init__
    SubConfigSpec = None

from engine.errors import ConfigError

# VideoLLaMA2 marks the video slot in `input_ids` with a negative index (MODAL_INDEX_MAP["<video>"] = -201), so the
# released vocabulary needs no extra token; the model swaps those slots for connector tokens before the LLM sees them.
VIDEO_PLACEHOLDER_ID = -201

SIGLIP_SO400M_384 = {
    "hidden_size": 1152,
    "intermediate_size": 4304,
    "num_hidden_layers": 27,
    "num_attention_heads": 16,
    "image_size": 384,
    "patch_size": 14,
    "hidden_act": "gelu_pytorch_tanh",
    "layer_norm_eps": 1e-6,
}

QWEN2_7B_WITH_REGION = {
    "vocab_size": 151647,
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-6,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0},
    "tie_word_embeddings": False,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "pad_token_id": 151643,
}

TINY_VISION = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "image_size": 64,
    "patch_size": 8,
    "hidden_act": "gelu_pytorch_tanh",
    "layer_norm_eps": 1e-6,
}

# Ids of the tiny tokenizer's special tokens (model.processing.build_tiny_tokenizer puts them first, in this order).
TINY_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<region>")
TINY_TEXT = {
    "vocab_size": 512,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-6,
    "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
    "tie_word_embeddings": False,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "pad_token_id": 0,
}


class VideoReferConfig(PretrainedConfig):
    """Configuration of `VideoReferForCausalLM`; defaults are VideoRefer-7B's.

    Connector: per-frame RegStage (`connector_depth` blocks, vision width -> LLM width), Conv3d with kernel = stride
    = `connector_downsample`, RegStage, then an MLP of `connector_mlp_depth` Linear layers. Object encoder: mask
    pooling on the `vision_feature_layer` grid, temporal merge to `region_tokens_per_object` (u) tokens, MLP
    projector of `object_projector_depth` Linear layers.
    """

    model_type = "videorefer"
    if SubConfigSpec is not None:
        sub_configs_defaults = {
            "vision_config": SubConfigSpec(config_class=SiglipVisionConfig, init_kwargs=dict(SIGLIP_SO400M_384)),
            "text_config": SubConfigSpec(config_class=Qwen2Config, init_kwargs=dict(QWEN2_7B_WITH_REGION)),
        }
    else:
        sub_configs = {"vision_config": SiglipVisionConfig, "text_config": Qwen2Config}

    vision_config: dict | PretrainedConfig | None = None
    text_config: dict | PretrainedConfig | None = None
    vision_feature_layer: int = -2
    num_frames: int = 16
    region_tokens_per_object: int = 4
    region_token_id: int = 151646
    video_token_id: int = VIDEO_PLACEHOLDER_ID
    connector_depth: int = 4
    connector_downsample: tuple[int, int, int] | list[int] = (2, 2, 2)
    connector_mlp_depth: int = 2
    object_projector_depth: int = 2
    ignore_index: int = -100
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs: Any) -> None:
        if SubConfigSpec is None:  # what SubConfigSpec.create_subconfig does: keep a config, build a dict or None
            self.vision_config = _subconfig(SiglipVisionConfig, self.vision_config, SIGLIP_SO400M_384)
            self.text_config = _subconfig(Qwen2Config, self.text_config, QWEN2_7B_WITH_REGION)
        super().__post_init__(**kwargs)
        self.connector_downsample = tuple(int(v) for v in self.connector_downsample)
        if self.region_tokens_per_object < 1:
            raise ConfigError("region_tokens_per_object (u) must be >= 1")
        if self.num_frames < int(self.connector_downsample[0]):
            raise ConfigError(
                f"num_frames must be >= the connector's temporal kernel {self.connector_downsample[0]},"
                f" got {self.num_frames}"
            )

    # ------------------------------------------------------------ derived sizes

    @property
    def vision_hidden_size(self) -> int:
        return int(self.vision_config.hidden_size)

    @property
    def llm_hidden_size(self) -> int:
        """Width of the LLM, which the connector and the object projector map into."""
        return int(self.text_config.hidden_size)

    @property
    def llm_vocab_size(self) -> int:
        return int(self.text_config.vocab_size)

    @property
    def grid_size(self) -> int:
        """Side of the vision feature grid: image_size // patch_size (27 for SigLIP so400m at 384 px)."""
        return int(self.vision_config.image_size) // int(self.vision_config.patch_size)

    @property
    def image_size(self) -> int:
        return int(self.vision_config.image_size)

    def video_token_count(self, num_frames: int | None = None) -> int:
        """Connector tokens for `num_frames` frames: (T // 2) x (grid // 2)^2 (1352 for 16 frames, 676 for 8).

        As released, an odd frame count loses its last frame in the temporal Conv3d; an image is `num_frames`
        copies of one frame, so it gets as many tokens as a video.
        """
        frames = self.num_frames if num_frames is None else int(num_frames)
        return video_token_count(frames, self.grid_size, self.connector_downsample)

    def tokens_per_object(self, mode: str, mask_frames: int | None = None) -> int:
        """Tokens one object contributes: 1 in single-frame mode, min(k, u) in multi-frame mode (k mask frames)."""
        if mode == "single":
            return 1
        if mode != "multi":
            raise ConfigError(f"mode must be 'single' or 'multi', got {mode!r}")
        frames = self.num_frames if mask_frames is None else int(mask_frames)
        return max(1, min(frames, self.region_tokens_per_object))

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> VideoReferConfig:
        """`"7b"`: VideoRefer-7B's numbers; `"tiny"`: a few layers, small widths, 64-px images on an 8x8 grid."""
        return preset(name, **overrides)


def _subconfig(config_class: type, value: Any, defaults: dict[str, Any]) -> PretrainedConfig:
    if isinstance(value, PretrainedConfig):
        return value
    if value is not None and not isinstance(value, dict):
        raise TypeError(f"a sub-config must be a dict, a config or None, got {type(value).__name__}")
    return config_class(**(value if value is not None else defaults))


def video_token_count(num_frames: int, grid: int, downsample: tuple[int, int, int] | list[int] = (2, 2, 2)) -> int:
    """Tokens the STC connector makes of `num_frames` frames on a `grid` x `grid` feature map.

    The Conv3d has kernel = stride and no padding (as released): (n - k) // k + 1 per axis, so an odd frame count
    drops its last frame. 16 frames on 27x27 -> 8 x 13 x 13 = 1352. Fewer frames than the temporal kernel raise.
    """
    kt, kh, kw = (int(v) for v in downsample)
    if num_frames < kt:
        raise ConfigError(f"{num_frames} frames: the STC connector needs at least {kt} (its temporal kernel)")
    return (num_frames // kt) * ((grid - kh) // kh + 1) * ((grid - kw) // kw + 1)


def preset(name: str, **overrides: Any) -> VideoReferConfig:
    """Build a named configuration (`"7b"` or `"tiny"`); keyword overrides replace top-level fields."""
    if name == "7b":
        base: dict[str, Any] = {
            "vision_config": dict(SIGLIP_SO400M_384),
            "text_config": dict(QWEN2_7B_WITH_REGION),
        }
    elif name == "tiny":
        base = {
            "vision_config": dict(TINY_VISION),
            "text_config": dict(TINY_TEXT),
            "num_frames": 8,
            "region_token_id": TINY_SPECIAL_TOKENS.index("<region>"),
            "connector_depth": 1,
        }
    else:
        raise ConfigError(f"unknown model preset {name!r}; expected '7b' or 'tiny'")
    base.update(overrides)
    return VideoReferConfig(**base)


# Lets AutoConfig (and AutoTokenizer, which reads config.json of a saved model folder) recognise "videorefer".
AutoConfig.register(VideoReferConfig.model_type, VideoReferConfig, exist_ok=True)
