"""The frozen SigLIP vision tower: pixel frames -> a feature grid from the second-to-last encoder layer.

The tower is transformers' `SiglipVisionModel`, held by the model as `vision_tower`; the `vision_model.*`
weights of `google/siglip-so400m-patch14-384` load into `vision_tower.*` (model.checkpoint maps the prefix). It
never trains (PAPER.md: "always frozen"): `build_vision_tower` switches its gradients off and `encode_frames` runs
it under `torch.no_grad`. The grid `[n, h, w, d]` feeds both the STC connector and mask pooling, which is how
mask frames that are among the sampled frames are encoded only once.
"""

from __future__ import annotations

import torch
from transformers import SiglipVisionConfig, SiglipVisionModel


def build_vision_tower(config: SiglipVisionConfig) -> SiglipVisionModel:
    """A SigLIP vision model with every parameter frozen."""
    tower = SiglipVisionModel(config)
    tower.requires_grad_(False)
    return tower


@torch.no_grad()
def encode_frames(
    tower: SiglipVisionModel, pixel_values: torch.Tensor, *, feature_layer: int = -2, chunk_size: int = 64
) -> torch.Tensor:
    """Features `[n, grid, grid, hidden]` of encoder layer `feature_layer` for frames `[n, 3, S, S]`.

    Frames go through in chunks of `chunk_size` to bound activation memory on long inputs.
    """
    config = tower.config
    grid = int(config.image_size) // int(config.patch_size)
    weight = tower.embeddings.patch_embedding.weight
    pixel_values = pixel_values.to(device=weight.device, dtype=weight.dtype)
    outputs = []
    for start in range(0, pixel_values.shape[0], chunk_size):
        out = tower(pixel_values=pixel_values[start : start + chunk_size], output_hidden_states=True)
        outputs.append(out.hidden_states[feature_layer])
    if not outputs:
        return weight.new_zeros(0, grid, grid, int(config.hidden_size))
    features = torch.cat(outputs, dim=0)
    return features.reshape(features.shape[0], grid, grid, features.shape[-1])
