"""The VideoRefer architecture: SigLIP (frozen) + STC connector + Qwen2 LLM + spatial-temporal object encoder.

Token assembly happens in the processor and here, split as follows. The processor expands the `<video>` marker
into `video_token_count(T)` slots holding `config.video_token_id` (a negative placeholder, VideoLLaMA2's -201, so
the released vocabulary is unchanged) and each object's `<region>` into min(k, u) `region_token_id` slots (1 in
single-frame mode), the most tokens the object can get. Here, every distinct frame of a sample is encoded ONCE by
the vision tower; the connector reads each sample's `video_frame_index` rows (a short video's repeated frames and
an image's `num_frames` copies are the same rows), and mask pooling reads the rows `mask_frame_index` names (mask
frames that are sampled frames reuse their features; the others are extra rows). `inputs_embeds` is the LLM's
embedding of `input_ids` with the video and region slots overwritten, in order, by `masked_scatter`. When the
release's merge rule gives an object fewer tokens than slots (tied similarities, e.g. several empty masks), the
surplus slots are removed and the rows closed up (`close_up`), as the release's variable-length splicing does.

Batch layout accepted by `forward` (what `VideoReferProcessor.collate` returns): `input_ids`, `attention_mask`,
`labels` `[B, L]`; `pixel_values [N, 3, S, S]` (all samples' distinct frames, sample after sample);
`frame_counts [B]` (rows of each sample); `video_frame_index [sum T]` (rows of each sample's video, in order) and
`video_frame_counts [B]` (T of each sample); `object_masks [M, g, g]` bool on the vision grid; `mask_frame_index
[M]` (row of `pixel_values` each mask lies on); `mask_object_index [M]` (object of each mask, numbered across the
batch in `<region>` order; masks of one object in frame order).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForCausalLM, PreTrainedModel, Qwen2ForCausalLM
from transformers.modeling_outputs import CausalLMOutputWithPast

from model.configuration import VideoReferConfig
from model.connector import STCConnector
from model.object_encoder import ObjectEncoder
from model.vision import build_vision_tower, encode_frames

# Module groups a training stage can switch on (PAPER.md "Training stages"): attribute names of the model.
MODULE_GROUPS = {
    "vision": "vision_tower",
    "connector": "connector",
    "object_encoder": "object_encoder",
    "llm": "language_model",
}


def default_attn_implementation(device: str | torch.device | None = None) -> str:
    """`flash_attention_2` when the package is importable and the model runs on CUDA, otherwise `sdpa`."""
    on_cuda = device is not None and torch.device(device).type == "cuda"
    if on_cuda and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


class VideoReferPreTrainedModel(PreTrainedModel):
    config_class = VideoReferConfig
    config: VideoReferConfig
    base_model_prefix = ""
    main_input_name = "input_ids"
    input_modalities = ("video", "image", "text")
    supports_gradient_checkpointing = True
    _no_split_modules = ["Qwen2DecoderLayer", "SiglipEncoderLayer"]
    _skip_keys_device_placement = ["past_key_values"]
    _supports_flash_attn = True
    _supports_sdpa = True


class VideoReferForCausalLM(VideoReferPreTrainedModel):
    """VideoRefer: `forward(**batch)` -> `CausalLMOutputWithPast` (with `.loss` given labels); `generate(...)`."""

    def __init__(self, config: VideoReferConfig):
        super().__init__(config)
        self.vision_tower = build_vision_tower(config.vision_config)
        self.connector = STCConnector(
            config.vision_hidden_size,
            config.llm_hidden_size,
            depth=config.connector_depth,
            downsample=config.connector_downsample,
            mlp_depth=config.connector_mlp_depth,
        )
        self.object_encoder = ObjectEncoder(
            config.vision_hidden_size,
            config.llm_hidden_size,
            tokens_per_object=config.region_tokens_per_object,
            depth=config.object_projector_depth,
        )
        self.language_model = Qwen2ForCausalLM(config.text_config)
        self.post_init()
        self.vision_tower.requires_grad_(False)

    # ------------------------------------------------------------ transformers plumbing

    @classmethod
    def can_generate(cls) -> bool:
        """True, so `save_pretrained` writes a `generation_config.json` as for any transformers LLM (the pipeline
        decodes with the folder's file, `model.generation`)."""
        return True

    @classmethod
    def from_pretrained(cls, *args: Any, **kwargs: Any) -> VideoReferForCausalLM:
        """transformers' loader, then the vision tower frozen again (loading assigns fresh parameters)."""
        model = super().from_pretrained(*args, **kwargs)
        model.vision_tower.requires_grad_(False)
        return model

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.language_model.get_output_embeddings()

    # ------------------------------------------------------------ multimodal embedding

    def encode_video(
        self, frame_features: torch.Tensor, video_frame_index: torch.Tensor, video_frame_counts: torch.Tensor
    ) -> torch.Tensor:
        """Connector tokens of every sample's video, concatenated sample after sample: `[sum tokens, hidden]`.

        Sample b's video is the rows `video_frame_index[start_b : start_b + video_frame_counts[b]]` of
        `frame_features` (rows may repeat). Samples with the same frame count go through the connector together.
        """
        starts = torch.cumsum(video_frame_counts, dim=0) - video_frame_counts
        per_sample: list[torch.Tensor | None] = [None] * int(video_frame_counts.shape[0])
        for frames in torch.unique(video_frame_counts).tolist():
            if frames == 0:
                continue
            samples = torch.nonzero(video_frame_counts == frames).flatten()
            positions = starts[samples][:, None] + torch.arange(frames, device=starts.device)[None, :]
            tokens = self.connector(frame_features[video_frame_index[positions]])
            for position, sample in enumerate(samples.tolist()):
                per_sample[sample] = tokens[position]
        chosen = [tokens for tokens in per_sample if tokens is not None]
        if not chosen:
            return frame_features.new_zeros(0, self.config.llm_hidden_size)
        return torch.cat(chosen, dim=0)

    def build_inputs_embeds(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        frame_counts: torch.Tensor | None = None,
        video_frame_counts: torch.Tensor | None = None,
        object_masks: torch.Tensor | None = None,
        mask_frame_index: torch.Tensor | None = None,
        mask_object_index: torch.Tensor | None = None,
        video_frame_index: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """LLM input embeddings with video and object tokens spliced in, and the attention mask and labels to match.

        Each object's `<region>` slots (min(k, u) of them) are filled with its merged tokens; when the release's
        tie rule left fewer tokens, the surplus slots are removed and each row is closed up (padding moves to the
        end it was on), so the LLM sees exactly the release's sequence. `frame_counts` is kept for the batch
        layout; `video_frame_index` defaults to each sample's first `video_frame_counts[b]` rows.
        """
        config = self.config
        embed = self.get_input_embeddings()
        video_slots = input_ids == config.video_token_id
        region_slots = input_ids == config.region_token_id
        embeds = embed(input_ids.masked_fill(video_slots, 0))
        if pixel_values is None or pixel_values.shape[0] == 0:
            if bool(video_slots.any()) or bool(region_slots.any()):
                raise ValueError("input_ids hold video/region slots but no pixel_values were given")
            return embeds, attention_mask, labels
        device = input_ids.device
        if frame_counts is None:
            frame_counts = torch.tensor([pixel_values.shape[0]], device=device)
        if video_frame_counts is None:
            video_frame_counts = frame_counts
        video_frame_counts = video_frame_counts.to(device)
        if video_frame_index is None:
            starts = torch.cumsum(frame_counts.to(device), dim=0) - frame_counts.to(device)
            video_frame_index = torch.cat([
                start + torch.arange(int(count), device=device)
                for start, count in zip(starts, video_frame_counts, strict=True)
            ])
        features = encode_frames(self.vision_tower, pixel_values, feature_layer=config.vision_feature_layer)

        video_tokens = self.encode_video(features, video_frame_index.to(device), video_frame_counts)
        if int(video_slots.sum()) != video_tokens.shape[0]:
            raise ValueError(f"{int(video_slots.sum())} video slots in input_ids but {video_tokens.shape[0]} tokens")
        embeds = embeds.masked_scatter(video_slots[..., None], video_tokens.to(embeds.dtype))

        if object_masks is None or object_masks.shape[0] == 0:
            if bool(region_slots.any()):
                raise ValueError("input_ids hold <region> slots but no object masks were given")
            return embeds, attention_mask, labels
        num_objects = int(mask_object_index.max()) + 1
        object_tokens, counts = self.object_encoder(
            features, object_masks, mask_frame_index, mask_object_index, num_objects
        )
        masks_per_object = torch.bincount(mask_object_index.to(device), minlength=num_objects)
        slots = masks_per_object.clamp(max=config.region_tokens_per_object)
        if int(region_slots.sum()) != int(slots.sum()):
            raise ValueError(
                f"{int(region_slots.sum())} <region> slots in input_ids but {int(slots.sum())} for the objects' masks"
            )
        filled = torch.arange(int(slots.max()), device=device)[None, :] < counts.to(device)[:, None]
        filled = filled[torch.arange(int(slots.max()), device=device)[None, :] < slots[:, None]]
        keep_slot = torch.ones_like(region_slots)
        keep_slot[region_slots] = filled
        embeds = embeds.masked_scatter((region_slots & keep_slot)[..., None], object_tokens.to(embeds.dtype))
        if bool(keep_slot.all()):
            return embeds, attention_mask, labels
        return close_up(embeds, keep_slot, attention_mask, labels)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        frame_counts: torch.Tensor | None = None,
        video_frame_counts: torch.Tensor | None = None,
        object_masks: torch.Tensor | None = None,
        mask_frame_index: torch.Tensor | None = None,
        mask_object_index: torch.Tensor | None = None,
        video_frame_index: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: Any = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        if inputs_embeds is None:
            if input_ids is None:
                raise ValueError("give input_ids or inputs_embeds")
            inputs_embeds, attention_mask, labels = self.build_inputs_embeds(
                input_ids, pixel_values, frame_counts, video_frame_counts, object_masks, mask_frame_index,
                mask_object_index, video_frame_index, attention_mask, labels,
            )
        # transformers 5 renamed the LLM's `past_key_values` to `cache` and warns on every call that passes the old
        # name (even as None): hand it over under the new one, accepting either from our callers.
        cache = kwargs.pop("cache", past_key_values)
        return self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            labels=labels,
            use_cache=use_cache,
            logits_to_keep=logits_to_keep,
            return_dict=True,
            **kwargs,
        )

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        frame_counts: torch.Tensor | None = None,
        video_frame_counts: torch.Tensor | None = None,
        object_masks: torch.Tensor | None = None,
        mask_frame_index: torch.Tensor | None = None,
        mask_object_index: torch.Tensor | None = None,
        video_frame_index: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **generate_kwargs: Any,
    ) -> torch.Tensor:
        """Generated token ids `[B, new_tokens]` (the prompt is not repeated); kwargs go to the LLM's generate.

        The multimodal prompt is embedded once; decoding then runs in the LLM with its KV cache.
        """
        del labels  # collate output may carry labels; they play no part in decoding
        if attention_mask is None:
            attention_mask = torch.ones(input_ids.shape, dtype=torch.long, device=input_ids.device)
        inputs_embeds, attention_mask, _ = self.build_inputs_embeds(
            input_ids, pixel_values, frame_counts, video_frame_counts, object_masks, mask_frame_index,
            mask_object_index, video_frame_index, attention_mask,
        )
        return self.language_model.generate(
            inputs_embeds=inputs_embeds, attention_mask=attention_mask, **generate_kwargs
        )


def close_up(
    embeds: torch.Tensor, keep: torch.Tensor, attention_mask: torch.Tensor | None, labels: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Remove the positions where `keep [B, L]` is False from each row and pad the rows to one length again.

    Padding goes to the side it was on: left when any row's attention mask starts with 0 (generation batches),
    right otherwise. Padded embeddings are zeros, their attention 0 and their labels -100.
    """
    batch, _, depth = embeds.shape
    if attention_mask is None:
        attention_mask = torch.ones(keep.shape, dtype=torch.long, device=keep.device)
    lengths = keep.sum(dim=1)
    longest = int(lengths.max())
    left = bool((attention_mask[:, 0] == 0).any())
    offset = (longest - lengths)[:, None] if left else torch.zeros_like(lengths)[:, None]
    target = offset + torch.cumsum(keep.long(), dim=1) - 1  # new position of each kept slot
    rows = torch.arange(batch, device=embeds.device)[:, None].expand_as(keep)
    new_embeds = embeds.new_zeros(batch, longest, depth)
    new_embeds[rows[keep], target[keep]] = embeds[keep]
    new_labels = None
    new_mask = attention_mask.new_zeros(batch, longest)
    new_mask[rows[keep], target[keep]] = attention_mask[keep]
    if labels is not None:
        new_labels = labels.new_full((batch, longest), -100)
        new_labels[rows[keep], target[keep]] = labels[keep]
    return new_embeds, new_mask, new_labels


def set_trainable(model: VideoReferForCausalLM, modules: Iterable[str]) -> list[str]:
    """Train exactly the module groups named in `modules` ("vision", "connector", "object_encoder", "llm").

    Every other parameter gets `requires_grad=False`. Returns the names of the trainable parameters.
    """
    chosen = set(modules)
    unknown = chosen - set(MODULE_GROUPS)
    if unknown:
        raise ValueError(f"unknown module groups {sorted(unknown)}; expected some of {sorted(MODULE_GROUPS)}")
    model.requires_grad_(False)
    for group in chosen:
        getattr(model, MODULE_GROUPS[group]).requires_grad_(True)
    return [name for name, parameter in model.named_parameters() if parameter.requires_grad]


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Parameters per module group plus `total` (works on meta-device models)."""
    counts = {
        group: sum(p.numel() for p in getattr(model, attr).parameters()) for group, attr in MODULE_GROUPS.items()
    }
    counts["total"] = sum(p.numel() for p in model.parameters())
    return counts


# `AutoModelForCausalLM.from_pretrained(dir)` works on a saved VideoRefer folder once this module is imported.
AutoModelForCausalLM.register(VideoReferConfig, VideoReferForCausalLM, exist_ok=True)
