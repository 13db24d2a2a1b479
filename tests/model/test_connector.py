"""The STC connector: token counts, image handling, and timm-compatible parameter names of the release."""

from __future__ import annotations

import pytest
import torch

from model.connector import STCConnector


def _connector(depth: int = 1) -> STCConnector:
    torch.manual_seed(0)
    return STCConnector(12, 16, depth=depth).eval()


def test_token_counts_follow_the_conv3d_downsampling() -> None:
    connector = _connector()
    assert connector(torch.randn(8, 8, 8, 12)).shape == (4 * 4 * 4, 16)
    assert connector(torch.randn(2, 4, 9, 9, 12)).shape == (2, 2 * 4 * 4, 16)  # odd grid: floor
    assert connector(torch.randn(3, 8, 8, 12)).shape == (1 * 16, 16)  # odd frames: the last one is dropped


def test_odd_frame_counts_drop_the_last_frame_as_the_release_conv3d_does() -> None:
    connector = _connector()
    frames = torch.randn(5, 8, 8, 12)
    with torch.no_grad():
        assert torch.equal(connector(frames), connector(frames[:4]))
        with pytest.raises(ValueError, match="at least 2"):
            connector(frames[:1])


def test_sampler_is_a_2x2x2_conv3d_without_padding() -> None:
    conv = _connector().sampler[0]
    assert isinstance(conv, torch.nn.Conv3d)
    assert (conv.kernel_size, conv.stride, conv.padding) == ((2, 2, 2), (2, 2, 2), (0, 0, 0))
    assert isinstance(_connector().sampler[1], torch.nn.SiLU)


def test_parameter_names_match_timm_regstage_and_videollama2() -> None:
    names = set(_connector(depth=4).state_dict())
    expected = {
        "s1.b1.conv1.conv.weight", "s1.b1.conv1.bn.weight", "s1.b1.conv1.bn.bias",
        "s1.b1.conv2.conv.weight", "s1.b1.conv2.bn.weight",
        "s1.b1.se.fc1.weight", "s1.b1.se.fc1.bias", "s1.b1.se.fc2.weight", "s1.b1.se.fc2.bias",
        "s1.b1.conv3.conv.weight", "s1.b1.conv3.bn.bias",
        "s1.b1.downsample.conv.weight", "s1.b1.downsample.bn.weight", "s1.b1.downsample.bn.bias",
        "s1.b4.conv3.conv.weight", "sampler.0.weight", "sampler.0.bias",
        "s2.b1.conv1.conv.weight", "s2.b4.se.fc2.bias", "readout.0.weight", "readout.0.bias", "readout.2.weight",
    }
    assert expected <= names
    # Identity shortcuts (same width, stride 1) carry no weights, as in timm.
    assert not any(name.startswith(("s1.b2.downsample", "s2.b1.downsample")) for name in names)
    assert not any("conv1.conv.bias" in name for name in names)  # ConvNormAct convs have no bias


def test_7b_block_shapes_match_the_released_weights() -> None:
    with torch.device("meta"):
        connector = STCConnector(1152, 3584, depth=4)
    block = connector.s1.b1
    assert block.conv1.conv.weight.shape == (3584, 1152, 1, 1)
    assert block.conv2.conv.weight.shape == (3584, 1, 3, 3)  # depthwise: group size 1
    assert block.se.fc1.weight.shape == (288, 3584, 1, 1)  # SE width = 0.25 x the block's input width
    assert connector.s1.b2.se.fc1.weight.shape == (896, 3584, 1, 1)
    assert connector.sampler[0].weight.shape == (3584, 3584, 2, 2, 2)
    assert connector.readout[2].weight.shape == (3584, 3584)
