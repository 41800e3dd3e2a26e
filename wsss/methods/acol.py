"""Adversarial complementary learning, ACoL (Zhang et al., CVPR 2018).

A shared backbone feeds two classifier branches A and B (each a 3x3 conv + ReLU + 1x1 class conv).
A's class maps of the image's classes are max-normalised; wherever one of them exceeds ``delta``,
the features fed to B are zeroed, so B must find the object in the regions A did not use. Both
branches are trained jointly (sum of their multi-label losses).

At test time the erased region comes from the image labels when the caller passes them (map
extraction on labelled training images) and otherwise from the classes A predicts (logit > 0),
as the paper erases with the predicted class; Grad-CAM and the logits always use the predicted
classes. The localization map is the elementwise max of the ReLU'd maps of A and B, and the
test-time logits are the spatial mean of that fused map (non-negative; only their ranking is
used by mAP).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from wsss.config import ModelConfig, check_value
from wsss.knobs import Knob
from wsss.methods.base import Method, register_method
from wsss.models.classifier import unwrap
from wsss.models import Backbone, build_backbone
from wsss.models.heads import conv_class_head, max_normalise

@dataclass(frozen=True)
class AcolParams:
    """``delta`` in (0, 1): erasing threshold on A's max-normalised maps."""

    delta: float = 0.6

    def validate(self) -> None:
        check_value(isinstance(self.delta, (int, float)) and 0.0 < self.delta < 1.0,
                    "method.params.delta", self.delta, "in (0, 1)")


def erase_features(features: torch.Tensor, maps_a: torch.Tensor, labels: torch.Tensor,
                   delta: float) -> torch.Tensor:
    """Zero the features where A's normalised map of any labelled class exceeds ``delta``.

    Args:
        features: [B, F, h, w] (input of branch B).
        maps_a: branch A's raw class maps [B, C, h, w] (not differentiated through).
        labels: multi-hot [B, C]; classes with label > 0.5 take part in the erasing.
        delta: threshold on the max-normalised maps.

    Returns:
        Features [B, F, h, w], zero at erased locations and unchanged elsewhere.
    """
    present = (labels > 0.5)[:, :, None, None]
    salient = (max_normalise(maps_a.detach()) > delta) & present
    return features.masked_fill(salient.any(dim=1, keepdim=True), 0.0)


class AcolClassifier(nn.Module):
    """Backbone + adversarially coupled branches A and B.

    Shapes: images [B, 3, H, W] -> features [B, F, h, w] -> branch maps [B, C, h, w] each ->
    fused ``class_maps`` [B, C, h, w] -> ``forward`` logits [B, C].
    """

    def __init__(self, backbone: Backbone, num_classes: int, delta: float) -> None:
        super().__init__()
        self.backbone = backbone
        self.head_a = conv_class_head(backbone.out_channels, num_classes)
        self.head_b = conv_class_head(backbone.out_channels, num_classes)
        self.delta = delta
        self.num_classes = num_classes

    def branch_maps(self, features: torch.Tensor,
                    labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw maps of A and B, each [B, C, h, w], from features [B, F, h, w].

        B sees the features erased by A's maps of ``labels`` [B, C]; None uses A's predicted
        classes (logit > 0).
        """
        maps_a = self.head_a(features)
        if labels is None:
            labels = (maps_a.detach().mean(dim=(2, 3)) > 0).to(maps_a.dtype)
        maps_b = self.head_b(erase_features(features, maps_a, labels, self.delta))
        return maps_a, maps_b

    def maps_from_features(self, features: torch.Tensor,
                           labels: torch.Tensor | None = None) -> torch.Tensor:
        """Fused maps max(relu(A), relu(B)) [B, C, h, w] from features [B, F, h, w]; B erased
        with ``labels`` [B, C] (None: A's predicted classes)."""
        maps_a, maps_b = self.branch_maps(features, labels)
        return torch.maximum(torch.relu(maps_a), torch.relu(maps_b))

    def class_maps(self, images: torch.Tensor,
                   labels: torch.Tensor | None = None) -> torch.Tensor:
        """Fused class maps [B, C, h, w] for images [B, 3, H, W] (``labels`` as above)."""
        return self.maps_from_features(self.backbone(images), labels)

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Fused logits [B, C]; with ``labels`` [B, C], the logits of A and B ([B, C] each)."""
        if labels is None:
            return self.class_maps(images).mean(dim=(2, 3))
        maps_a, maps_b = self.branch_maps(self.backbone(images), labels)
        return maps_a.mean(dim=(2, 3)), maps_b.mean(dim=(2, 3))


@register_method("acol")
class AcolMethod(Method):
    """Two branches; B is trained on the features A's ground-truth maps leave un-erased."""

    Params = AcolParams
    knobs = (Knob("method.params.delta", 0.3, 0.9),)

    def build_model(self, model_cfg: ModelConfig) -> nn.Module:
        """An :class:`AcolClassifier` erasing at ``params.delta``."""
        return AcolClassifier(build_backbone(model_cfg.backbone, model_cfg.pretrained),
                              self.num_classes, self.params.delta)

    def class_maps(self, model: nn.Module, images: torch.Tensor,
                   labels: torch.Tensor | None = None) -> torch.Tensor:
        """Fused maps [B, C, h, w]; B is erased with ``labels`` [B, C] when the caller knows
        them, else with A's predicted classes."""
        return unwrap(model).class_maps(images, labels)

    def training_loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                      epoch: int) -> tuple[torch.Tensor, dict[str, float]]:
        """BCE(A) + BCE(B), B erased with the ground truth. images [B, 3, H, W], labels [B, C]."""
        logits_a, logits_b = model(images, labels=labels)
        loss_a = F.multilabel_soft_margin_loss(logits_a, labels)
        loss_b = F.multilabel_soft_margin_loss(logits_b, labels)
        loss = loss_a + loss_b
        return loss, {"cls_loss": float(loss.detach()), "cls_loss_a": float(loss_a.detach()),
                      "cls_loss_b": float(loss_b.detach())}
