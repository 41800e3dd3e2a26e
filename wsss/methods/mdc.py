"""Multi-dilated convolutions, MDC (Wei et al., CVPR 2018).

Parallel 3x3 convolutions with dilation rates ``dilations`` run on the last backbone features,
each followed by its own 1x1 classifier, so every branch is a CAM classifier with a different
receptive field; training sums the branch losses. The localization map is
``map(d=1) + mean(map(d) for d > 1)``, which lets the wide branches spread the activation while
the d=1 branch keeps it anchored on the object. ``dilations`` must contain 1 (the base branch).

At 112 px input the features are only 7x7, so rates >= 7 sample only zero padding off-centre and
such a branch degenerates to a 1x1 convolution; this is accepted, not corrected.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from wsss.config import ModelConfig, check_value
from wsss.knobs import Knob, dilation_sets, int_list
from wsss.methods.base import Method, register_method
from wsss.models.heads import conv_class_head
from wsss.models import Backbone, build_backbone

@dataclass(frozen=True)
class MdcParams:
    """``dilations``: distinct positive ints including 1 (lists are stored as tuples)."""

    dilations: tuple[int, ...] = (1, 3, 6, 9)

    def __post_init__(self) -> None:
        if isinstance(self.dilations, list):
            object.__setattr__(self, "dilations", tuple(self.dilations))

    def validate(self) -> None:
        rates = self.dilations
        ok = (isinstance(rates, tuple) and len(rates) > 0
              and all(isinstance(d, int) and d >= 1 for d in rates)
              and len(set(rates)) == len(rates) and 1 in rates)
        check_value(ok, "method.params.dilations", rates,
                    "a non-empty list of distinct positive integers that includes 1")


def combine_branch_maps(maps: torch.Tensor, base_index: int) -> torch.Tensor:
    """MDC fusion: base map plus the mean of the other branches' maps.

    Args:
        maps: per-branch class maps [D, B, C, h, w].
        base_index: index of the d=1 branch in the first dimension.

    Returns:
        Fused maps [B, C, h, w] (the base map alone when D == 1).
    """
    base = maps[base_index]
    if maps.shape[0] == 1:
        return base
    others = torch.cat([maps[:base_index], maps[base_index + 1:]])
    return base + others.mean(dim=0)


class MdcClassifier(nn.Module):
    """Backbone + one dilated conv head per rate.

    Shapes: images [B, 3, H, W] -> per-branch maps [D, B, C, h, w] -> fused ``class_maps``
    [B, C, h, w] -> ``forward`` logits [B, C] (spatial mean of the fused map).
    """

    def __init__(self, backbone: Backbone, num_classes: int, dilations: Sequence[int]) -> None:
        super().__init__()
        self.backbone = backbone
        self.dilations = tuple(dilations)
        self.base_index = self.dilations.index(1)
        self.branches = nn.ModuleList(
            conv_class_head(backbone.out_channels, num_classes, dilation=d) for d in dilations)
        self.num_classes = num_classes

    def branch_maps(self, features: torch.Tensor) -> torch.Tensor:
        """Per-branch class maps [D, B, C, h, w] from features [B, F, h, w]."""
        return torch.stack([branch(features) for branch in self.branches])

    def maps_from_features(self, features: torch.Tensor) -> torch.Tensor:
        """Fused class maps [B, C, h, w] from last-stage features [B, F, h, w]."""
        return combine_branch_maps(self.branch_maps(features), self.base_index)

    def class_maps(self, images: torch.Tensor) -> torch.Tensor:
        """Fused raw class maps [B, C, h, w] for images [B, 3, H, W]."""
        return self.maps_from_features(self.backbone(images))

    def forward(self, images: torch.Tensor, per_branch: bool = False) -> torch.Tensor:
        """Logits [B, C] of the fused map, or per-branch logits [D, B, C] when ``per_branch``."""
        maps = self.branch_maps(self.backbone(images))
        if per_branch:
            return maps.mean(dim=(3, 4))
        return combine_branch_maps(maps, self.base_index).mean(dim=(2, 3))


@register_method("mdc")
class MdcMethod(Method):
    """Multi-dilated CAM: every branch trained with its own multi-label loss (summed)."""

    Params = MdcParams
    knobs = (Knob("method.params.dilations", choices=dilation_sets(), parse=int_list),)

    def build_model(self, model_cfg: ModelConfig) -> nn.Module:
        """An :class:`MdcClassifier` with ``params.dilations``."""
        return MdcClassifier(build_backbone(model_cfg.backbone, model_cfg.pretrained),
                             self.num_classes, self.params.dilations)

    def training_loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                      epoch: int) -> tuple[torch.Tensor, dict[str, float]]:
        """Sum over branches of BCE(branch logits, labels). images [B, 3, H, W], labels [B, C]."""
        branch_logits = model(images, per_branch=True)
        losses = [F.multilabel_soft_margin_loss(logits, labels) for logits in branch_logits]
        loss = torch.stack(losses).sum()
        logs = {f"cls_loss_d{d}": float(part.detach())
                for d, part in zip(self.params.dilations, losses)}
        return loss, {"cls_loss": float(loss.detach()), **logs}
