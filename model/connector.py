"""The STC connector (VideoLLaMA2.1 "v35"): frame features -> spatially and temporally downsampled LLM tokens.

Per-frame RegStage -> Conv3d (kernel = stride = 2x2x2, no padding) + SiLU -> RegStage -> MLP readout, so 16 frames
of a 27x27 grid become 8x13x13 = 1352 tokens. timm is not installable here (it pulls torchvision), so RegStage and
its Bottleneck / ConvNormAct / LayerNormAct2d / SEModule blocks are re-implemented with timm's exact module names
and defaults (bottle_ratio 1, group_size 1 = depthwise 3x3, SE ratio 0.25 of the input width, conv1x1 shortcut
with a norm when widths differ, LayerNorm2d -> LayerNormAct2d with eps 1e-5). The released
`model.mm_projector.s1.b1.conv1.conv.weight`-style keys therefore load without conversion.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LayerNormAct2d(nn.LayerNorm):
    """timm's LayerNormAct2d: LayerNorm over channels of an NCHW map, then an optional activation."""

    def __init__(self, num_channels: int, *, eps: float = 1e-5, apply_act: bool = True, act_layer: type = nn.SiLU):
        super().__init__(num_channels, eps=eps)
        self.drop = nn.Identity()
        self.act = act_layer() if apply_act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
        return self.act(self.drop(x.permute(0, 3, 1, 2)))


class ConvNormAct(nn.Module):
    """timm's ConvNormAct: bias-free conv (same padding) then norm+act held in `bn` (the checkpoint's name)."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int,
        *,
        stride: int = 1,
        groups: int = 1,
        apply_act: bool = True,
        act_layer: type = nn.SiLU,
    ):
        super().__init__()
        padding = ((stride - 1) + (kernel_size - 1)) // 2
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride=stride, padding=padding, groups=groups, bias=False)
        self.bn = LayerNormAct2d(out_chs, apply_act=apply_act, act_layer=act_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class SEModule(nn.Module):
    """timm's squeeze-excite: global mean -> 1x1 conv -> act -> 1x1 conv -> sigmoid gate."""

    def __init__(self, channels: int, rd_channels: int, *, act_layer: type = nn.SiLU):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, rd_channels, kernel_size=1, bias=True)
        self.bn = nn.Identity()
        self.act = act_layer()
        self.fc2 = nn.Conv2d(rd_channels, channels, kernel_size=1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.fc2(self.act(self.bn(self.fc1(x.mean((2, 3), keepdim=True)))))
        return x * torch.sigmoid(scale)


class Bottleneck(nn.Module):
    """timm's RegNet Bottleneck with bottle_ratio 1, group_size 1, se_ratio 0.25, conv1x1 shortcut, SiLU."""

    def __init__(self, in_chs: int, out_chs: int, *, stride: int = 1, act_layer: type = nn.SiLU):
        super().__init__()
        self.conv1 = ConvNormAct(in_chs, out_chs, 1, act_layer=act_layer)
        self.conv2 = ConvNormAct(out_chs, out_chs, 3, stride=stride, groups=out_chs, act_layer=act_layer)
        self.se = SEModule(out_chs, int(round(in_chs * 0.25)), act_layer=act_layer)
        self.conv3 = ConvNormAct(out_chs, out_chs, 1, apply_act=False, act_layer=act_layer)
        self.act3 = act_layer()
        if in_chs != out_chs or stride != 1:
            self.downsample: nn.Module = ConvNormAct(in_chs, out_chs, 1, stride=stride, apply_act=False)
        else:
            self.downsample = nn.Identity()
        self.drop_path = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.conv3(self.se(self.conv2(self.conv1(x))))
        return self.act3(self.drop_path(x) + self.downsample(shortcut))


class RegStage(nn.Module):
    """timm's RegStage: `depth` Bottlenecks named b1..bN; the first changes the width."""

    def __init__(self, depth: int, in_chs: int, out_chs: int, *, stride: int = 1, act_layer: type = nn.SiLU):
        super().__init__()
        for i in range(depth):
            block_in, block_stride = (in_chs, stride) if i == 0 else (out_chs, 1)
            self.add_module(f"b{i + 1}", Bottleneck(block_in, out_chs, stride=block_stride, act_layer=act_layer))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.children():
            x = block(x)
        return x


def build_mlp(depth: int, in_features: int, out_features: int) -> nn.Sequential:
    """VideoLLaMA2's build_mlp: Linear, then (GELU, Linear) * (depth - 1): keys `.0`, `.2`, ..."""
    layers: list[nn.Module] = [nn.Linear(in_features, out_features)]
    for _ in range(1, depth):
        layers += [nn.GELU(), nn.Linear(out_features, out_features)]
    return nn.Sequential(*layers)


class STCConnector(nn.Module):
    """Frame features `[T, h, w, d_vision]` -> tokens `[(T // 2) * (h//2) * (w//2), d_llm]`.

    As released (VideoLLaMA2.1 `STCConnectorV35`: Conv3d with kernel = stride, no padding), an odd T drops its
    last frame in the temporal Conv3d; fewer frames than the temporal kernel cannot be encoded (a `ValueError`
    here, where the release crashes inside Conv3d). An image reaches the connector as `num_frames` copies of its
    features (the release repeats the image), but the vision tower encodes it once.
    """

    def __init__(
        self,
        vision_hidden_size: int,
        hidden_size: int,
        *,
        depth: int = 4,
        downsample: tuple[int, int, int] = (2, 2, 2),
        mlp_depth: int = 2,
    ):
        super().__init__()
        self.downsample = tuple(downsample)
        self.s1: nn.Module = RegStage(depth, vision_hidden_size, hidden_size) if depth else nn.Identity()
        self.sampler = nn.Sequential(
            nn.Conv3d(hidden_size, hidden_size, kernel_size=self.downsample, stride=self.downsample, padding=0),
            nn.SiLU(),
        )
        self.s2: nn.Module = RegStage(depth, hidden_size, hidden_size) if depth else nn.Identity()
        self.readout = build_mlp(mlp_depth, hidden_size, hidden_size)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """`features [B, T, h, w, d]` (or `[T, h, w, d]`) -> `[B, tokens, hidden]` (or `[tokens, hidden]`)."""
        unbatched = features.dim() == 4
        if unbatched:
            features = features[None]
        batch, frames = features.shape[:2]
        if frames < self.downsample[0]:
            raise ValueError(f"the STC connector needs at least {self.downsample[0]} frames, got {frames}")
        x = features.permute(0, 1, 4, 2, 3).flatten(0, 1)  # (b t) d h w
        weight = self.readout[0].weight
        x = self.s1(x.to(weight.dtype))
        x = x.unflatten(0, (batch, frames)).permute(0, 2, 1, 3, 4)  # b d t h w
        x = self.sampler(x)
        new_frames = x.shape[2]
        x = self.s2(x.permute(0, 2, 1, 3, 4).flatten(0, 1))  # (b t) d h w
        x = x.unflatten(0, (batch, new_frames)).permute(0, 1, 3, 4, 2).flatten(1, 3)  # b (t h w) d
        x = self.readout(x)
        return x[0] if unbatched else x
