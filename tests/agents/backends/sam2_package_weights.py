"""Test helper: a tiny SAM 2 built in the `sam2` package (the release's code) and its weights renamed for transformers.

The tiny architecture is the one `agents.backends.tiny_models.tiny_sam2_video_config` builds in transformers: the
release's `sam2.1_hiera_t.yaml` with its Hiera trunk shrunk by hydra overrides to the same numbers. The renaming
rules were written for this project from the two models' parameter lists (transformers' own conversion script,
`convert_sam2_video_to_hf.py`, does the same job for released checkpoints, with downloads this machine cannot make).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from agents.backends.tiny_models import TINY_HIERA


def package_overrides(image_size: int) -> list[str]:
    """Hydra overrides that shrink the release's SAM 2.1 tiny config to the project's tiny SAM 2."""
    grid = image_size // 16
    trunk = "++model.image_encoder.trunk"
    return [
        f"++model.image_size={image_size}",
        f"{trunk}.embed_dim={TINY_HIERA['hidden_size']}",
        f"{trunk}.num_heads={TINY_HIERA['num_attention_heads_per_stage'][0]}",
        f"{trunk}.stages={TINY_HIERA['blocks_per_stage']}",
        f"{trunk}.global_att_blocks={TINY_HIERA['global_attention_blocks']}",
        f"{trunk}.window_spec={TINY_HIERA['window_size_per_stage']}",
        f"{trunk}.window_pos_embed_bkg_spatial_size={TINY_HIERA['window_positional_embedding_background_size']}",
        f"++model.image_encoder.neck.backbone_channel_list={list(reversed(TINY_HIERA['embed_dim_per_stage']))}",
        f"++model.memory_attention.layer.self_attention.feat_sizes=[{grid},{grid}]",
        f"++model.memory_attention.layer.cross_attention.feat_sizes=[{grid},{grid}]",
    ]


# Whole-name pieces, applied in order (a piece is replaced wherever it occurs).
_MLP = r"((?:.*\.)?(?:mlp|[a-z_]*head|output_hypernetworks_mlps\.\d+|obj_ptr_proj))"  # an MLP's prefix
_PIECES = (
    ("memory_encoder.out_proj.", "memory_encoder.projection."),
    ("image_encoder.trunk.", "vision_encoder.backbone."),
    ("image_encoder.neck.", "vision_encoder.neck."),
    ("sam_mask_decoder.", "mask_decoder."),
    ("sam_prompt_encoder.", "prompt_encoder."),
    ("patch_embed.proj.", "patch_embed.projection."),
    ("out_proj.", "o_proj."),
    ("obj_ptr_tpos_proj.", "temporal_positional_encoding_projection_layer."),
    ("obj_ptr_proj.", "object_pointer_proj."),
    ("pe_layer.positional_encoding_gaussian_matrix", "shared_embedding.positional_embedding"),
    ("memory_encoder.fuser.", "memory_encoder.memory_fuser."),
    ("memory_encoder.pix_feat_proj.", "memory_encoder.feature_projection."),
    (".dwconv.", ".depthwise_conv."),
    (".pwconv1.", ".pointwise_conv1."),
    (".pwconv2.", ".pointwise_conv2."),
    ("transformer.norm_final_attn.", "transformer.layer_norm_final_attn."),
)
_WHOLE = {
    "maskmem_tpos_enc": "memory_temporal_positional_encoding",
    "no_mem_embed": "no_memory_embedding",
    "no_mem_pos_enc": "no_memory_positional_encoding",
    "no_obj_ptr": "no_object_pointer",
    "no_obj_embed_spatial": "occlusion_spatial_embedding_parameter",
    "memory_attention.norm.weight": "memory_attention.layer_norm.weight",
    "memory_attention.norm.bias": "memory_attention.layer_norm.bias",
}
# Sequential blocks whose positions become names.
_SEQUENTIAL = {
    "mask_decoder.output_upscaling": {0: "upscale_conv1", 1: "upscale_layer_norm", 3: "upscale_conv2"},
    "prompt_encoder.mask_downscaling": {0: "mask_embed.conv1", 1: "mask_embed.layer_norm1", 3: "mask_embed.conv2",
                                        4: "mask_embed.layer_norm2", 6: "mask_embed.conv3"},
}


def to_transformers(state: Mapping[str, Any]) -> dict[str, Any]:
    """The sam2 package's `state_dict` renamed (and the point embeddings stacked) for `Sam2VideoModel`."""
    import torch

    mlp_depth: dict[str, int] = {}  # an MLP's prefix -> its number of linear layers
    for key in state:
        found = re.match(_MLP + r"\.layers\.(\d+)\.", key)
        if found:
            mlp_depth[found[1]] = max(mlp_depth.get(found[1], 0), int(found[2]) + 1)
    downsampler_layers = 1 + max(
        int(m[1]) for key in state if (m := re.match(r"memory_encoder\.mask_downsampler\.encoder\.(\d+)\.", key))
    )
    out: dict[str, Any] = {}
    point_embeds: dict[int, Any] = {}
    for key, value in state.items():
        name = _WHOLE.get(key, key)
        # MLPs: first linear -> proj_in, last -> proj_out, the ones between -> layers.0, layers.1, ...
        found = re.match(_MLP + r"\.layers\.(\d+)\.(.*)", name)
        if found:
            prefix, index, rest = found[1], int(found[2]), found[3]
            depth = mlp_depth[prefix]
            part = "proj_in" if index == 0 else "proj_out" if index == depth - 1 else f"layers.{index - 1}"
            name = f"{prefix}.{part}.{rest}"
        for old, new in _PIECES:
            name = name.replace(old, new)
        name = re.sub(r"\.norm(\d?)\.", r".layer_norm\1.", name)
        name = re.sub(r"(vision_encoder\.neck\.convs\.\d+)\.conv\.", r"\1.", name)
        name = re.sub(r"(memory_fuser\.layers\.\d+)\.gamma$", r"\1.scale", name)
        found = re.match(r"memory_encoder\.mask_downsampler\.encoder\.(\d+)\.(.*)", name)
        if found:
            index, rest = int(found[1]), found[2]
            layer = "final_conv" if index == downsampler_layers - 1 else (
                f"layers.{index // 3}.conv" if index % 3 == 0 else f"layers.{index // 3}.layer_norm")
            name = f"memory_encoder.mask_downsampler.{layer}.{rest}"
        for prefix, names in _SEQUENTIAL.items():
            found = re.match(re.escape(prefix) + r"\.(\d+)\.(.*)", name)
            if found:
                name = f"{prefix.split('.')[0]}.{names[int(found[1])]}.{found[2]}"
        found = re.match(r"prompt_encoder\.point_embeddings\.(\d+)\.weight", name)
        if found:
            point_embeds[int(found[1])] = value
            continue
        out[name] = value
    out["prompt_encoder.point_embed.weight"] = torch.cat([point_embeds[i] for i in sorted(point_embeds)], dim=0)
    out["shared_image_embedding.positional_embedding"] = out["prompt_encoder.shared_embedding.positional_embedding"]
    return out
