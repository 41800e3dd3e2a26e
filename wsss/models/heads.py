"""Pieces shared by the method models: a conv class head and map normalisation."""

from __future__ import annotations

import torch
from torch import nn

HEAD_CHANNELS = 256
NORM_EPS = 1e-5


def conv_class_head(in_channels: int, num_classes: int, dilation: int = 1,
                    hidden: int = HEAD_CHANNELS) -> nn.Sequential:
    """3x3 conv (``dilation``, same size) + ReLU + bias-free 1x1 class conv.

    Maps features [B, in_channels, h, w] to class maps [B, num_classes, h, w]; the last layer is
    linear, so the spatial mean of its output equals the classifier applied to pooled features.
    """
    return nn.Sequential(
        nn.Conv2d(in_channels, hidden, kernel_size=3, padding=dilation, dilation=dilation),
        nn.ReLU(inplace=True),
        nn.Conv2d(hidden, num_classes, kernel_size=1, bias=False),
    )


def max_normalise(maps: torch.Tensor) -> torch.Tensor:
    """ReLU, then divide each map by its spatial maximum (+1e-5): [B, C, h, w] -> [0, 1)."""
    maps = torch.relu(maps)
    return maps / (maps.amax(dim=(2, 3), keepdim=True) + NORM_EPS)
