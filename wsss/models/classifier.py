"""The CAM classifier: backbone -> 1x1-conv head; logits = global average of the class maps."""

from __future__ import annotations

import torch
from torch import nn

from wsss.models.backbones import Backbone


class CamClassifier(nn.Module):
    """Multi-label classifier whose head is a 1x1 convolution.

    Because the head is linear, ``GAP(head(features)) == head(GAP(features))``, so the per-pixel
    head output *is* the class activation map (CAM) of Zhou et al.

    Shapes: images [B, 3, H, W] -> ``class_maps`` [B, C, H/16, W/16] -> ``forward`` logits [B, C].
    """

    def __init__(self, backbone: Backbone, num_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Conv2d(backbone.out_channels, num_classes, kernel_size=1, bias=False)
        self.num_classes = num_classes

    def maps_from_features(self, features: torch.Tensor) -> torch.Tensor:
        """Class maps [B, C, h, w] from last-stage features [B, F, h, w]."""
        return self.head(features)

    def class_maps(self, images: torch.Tensor) -> torch.Tensor:
        """Raw class activation maps [B, C, h, w] (before ReLU and normalisation)."""
        return self.maps_from_features(self.backbone(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.class_maps(images).mean(dim=(2, 3))


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper, or the module itself."""
    return getattr(model, "module", model)
