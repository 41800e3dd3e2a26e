"""The affinity network: pixel affinities from a backbone and a light head, two ways.

- ``head="feature"``, AffinityNet (Ahn & Kwak, "Learning Pixel-level Semantic Affinity with
  Image-level Supervision", CVPR 2018, Sec. 3.2 and 4.1): features from the last three levels
  of the backbone, each reduced by a 1x1 convolution, concatenated at stride 8 and projected by
  a last 1x1 convolution. The affinity of two cells is ``exp(-mean_d |f_i - f_j|)``
  (``wsss.core.affinity.pixel_affinities``).
- ``head="boundary"``, IRNet's class-boundary branch (Ahn, Cho & Kwak, "Weakly Supervised
  Learning of Instance Segmentation with Inter-pixel Relations", CVPR 2019, Sec. 3.1 and
  3.3): the same levels projected to one channel, a boundary probability per cell; the
  affinity of two cells is one minus the strongest boundary on the segment between them
  (``wsss.core.affinity.boundary_affinities``), so a region without a boundary inside is one
  block of high affinity however its appearance varies.
"""

from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from wsss.config import AFFINITY_HEADS
from wsss.models.backbones import Backbone, build_backbone

STRIDE = 8  # output stride of the affinity features (the backbone's layer2)
HEADS = AFFINITY_HEADS  # ``affinity.head``
FEATURE, BOUNDARY = HEADS
LEVEL_CHANNELS = (64, 128, 256)  # reduced channels of layer2, layer3 and layer4 (Sec. 4.1)


class AffinityNet(nn.Module):
    """Backbone + a light head producing affinity features or a boundary map at stride 8.

    Shapes: normalised images [B, 3, H, W] -> ``head="feature"``: features [B, D, ceil(H/8),
    ceil(W/8)], D = ``feature_dim``; ``head="boundary"``: boundary probabilities [B, 1,
    ceil(H/8), ceil(W/8)] in (0, 1) (a sigmoid; ``feature_dim`` unused). layer2 (stride 8),
    layer3 and layer4 (stride 16, bilinearly upsampled to layer2's size) each go through a 1x1
    convolution + ReLU to 64 / 128 / 256 channels; their concatenation goes through a linear
    1x1 convolution to D channels (feature) or one (boundary).

    The trunk is the attribute ``backbone`` (a :class:`~wsss.models.backbones.Backbone`), so
    ``wsss.train.optim.parameter_groups`` puts it in the "backbone" group and the head (``reduce``
    and ``project``) in the "head" group, which learns at ``lr * head_lr_mult``.
    """

    def __init__(self, backbone: Backbone, feature_dim: int = 448, head: str = FEATURE) -> None:
        super().__init__()
        if feature_dim < 1:
            raise ValueError(f"feature_dim must be >= 1, got {feature_dim}")
        if head not in HEADS:
            raise ValueError(f"unknown affinity head '{head}'; choose one of: {', '.join(HEADS)}")
        self.backbone = backbone
        levels = [stage_channels(stage) for stage in (backbone.layer2, backbone.layer3,
                                                      backbone.layer4)]
        self.reduce = nn.ModuleList(
            nn.Sequential(nn.Conv2d(channels, out, kernel_size=1, bias=False),
                          nn.ReLU(inplace=True))
            for channels, out in zip(levels, LEVEL_CHANNELS))
        self.project = nn.Conv2d(sum(LEVEL_CHANNELS), feature_dim if head == FEATURE else 1,
                                 kernel_size=1)
        self.feature_dim, self.head = feature_dim, head

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Affinity features [B, D, ceil(H/8), ceil(W/8)] (or boundary probabilities [B, 1,
        ceil(H/8), ceil(W/8)]) of normalised images [B, 3, H, W]."""
        mid = self.backbone.forward_until("layer2", images)
        deep = self.backbone.layer3(mid)
        last = self.backbone.layer4(deep)
        size = mid.shape[2:]
        levels = []
        for reduce, level in zip(self.reduce, (mid, deep, last)):
            level = reduce(level)
            if level.shape[2:] != size:
                level = F.interpolate(level, size=size, mode="bilinear", align_corners=False)
            levels.append(level)
        output = self.project(torch.cat(levels, dim=1))
        return output if self.head == FEATURE else torch.sigmoid(output)


def stage_channels(stage: nn.Module) -> int:
    """Output channels of a ResNet stage: those of its last batch norm (every block ends with
    one, and a downsample's batch norm has the block's output channels too).

    Raises:
        ValueError: the stage has no batch norm.
    """
    norms = [m for m in stage.modules() if isinstance(m, nn.BatchNorm2d)]
    if not norms:
        raise ValueError(f"cannot tell the output channels of {type(stage).__name__}: "
                         "it has no BatchNorm2d")
    return norms[-1].num_features


def build_affinity_net(backbone: str = "resnet18",
                       backbone_state: Mapping[str, torch.Tensor] | None = None,
                       feature_dim: int = 448, head: str = FEATURE) -> AffinityNet:
    """An :class:`AffinityNet` over a ResNet trunk (output stride 16).

    Args:
        backbone: ``resnet18``, ``resnet34`` or ``resnet50``.
        backbone_state: a :class:`~wsss.models.backbones.Backbone` state dict to start from
            (the trained classifier's ``backbone.state_dict()``, as AffinityNet starts from the
            classifier's trunk); None = random init. The head always starts at random.
        feature_dim: channels D of the affinity features (``head="feature"``).
        head: ``"feature"`` (AffinityNet) or ``"boundary"`` (IRNet); see :class:`AffinityNet`.

    Raises:
        ValueError: an unknown backbone name or head, or ``backbone_state`` is not a state dict
            of that backbone (missing or unexpected keys, other shapes).
    """
    trunk = build_backbone(backbone, pretrained=None)
    if backbone_state is not None:
        try:
            missing, unexpected = trunk.load_state_dict(dict(backbone_state), strict=False)
        except RuntimeError as err:  # shape mismatch
            raise ValueError(f"backbone_state does not fit a {backbone} backbone: {err}") from err
        if missing or unexpected:
            raise ValueError(f"backbone_state is not a {backbone} backbone state dict: missing "
                             f"{missing[:3]}, unexpected {unexpected[:3]}")
    return AffinityNet(trunk, feature_dim, head)
