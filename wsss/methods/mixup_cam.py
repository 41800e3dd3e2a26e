"""Mixup-CAM (Chang et al., BMVC 2020): mixup training with an attention-spreading regulariser.

Each batch is mixed with a random permutation of itself, ``x = lam * x + (1 - lam) * x[perm]``
(labels likewise) with ``lam ~ Beta(alpha, alpha)``, and the classifier is trained with the
multi-label soft-margin loss on the soft mixed labels. The regulariser acts on the class
activation maps of the mixed images: for every class present in the mixed labels the map is
turned into a distribution over locations (softmax over h*w) and the loss adds
``1 - H / log(h*w)`` (one minus its normalised entropy), weighted by the mixed label. The term is
0 for a uniform map and 1 for a one-hot map, so minimising it spreads the attention over the
object instead of its most discriminative part.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from wsss.config import ModelConfig, check_value
from wsss.knobs import Knob
from wsss.methods.base import Method, register_method
from wsss.models import CamClassifier, build_backbone


@dataclass(frozen=True)
class MixupCamParams:
    """``alpha`` > 0 (Beta concentration); ``entropy_weight`` >= 0."""

    alpha: float = 1.0
    entropy_weight: float = 0.05

    def validate(self) -> None:
        check_value(isinstance(self.alpha, (int, float)) and self.alpha > 0.0,
                    "method.params.alpha", self.alpha, "> 0")
        check_value(isinstance(self.entropy_weight, (int, float)) and self.entropy_weight >= 0.0,
                    "method.params.entropy_weight", self.entropy_weight, ">= 0")


def mix_batch(images: torch.Tensor, labels: torch.Tensor, lam: float | torch.Tensor,
              perm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mix a batch with a permutation of itself.

    Args:
        images: [B, 3, H, W].
        labels: multi-hot [B, C].
        lam: mixing weight in [0, 1] (scalar).
        perm: long [B], a permutation of the batch indices.

    Returns:
        ``lam * images + (1 - lam) * images[perm]`` [B, 3, H, W] and the labels mixed the same
        way [B, C] (soft labels).
    """
    mixed_images = lam * images + (1 - lam) * images[perm]
    mixed_labels = lam * labels + (1 - lam) * labels[perm]
    return mixed_images, mixed_labels


def spatial_concentration(maps: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted mean of ``1 - H(softmax over locations) / log(h*w)`` of each class map.

    Args:
        maps: raw class maps [B, C, h, w].
        weights: non-negative [B, C] (the mixed labels; absent classes weigh 0).

    Returns:
        Scalar in [0, 1]: 0 when every weighted map is spatially uniform, 1 when one-hot.
    """
    num_locations = maps.shape[2] * maps.shape[3]
    if num_locations == 1:
        return maps.sum() * 0.0
    log_p = F.log_softmax(maps.flatten(2), dim=-1)
    entropy = -(log_p.exp() * log_p).sum(dim=-1)  # [B, C]
    concentration = 1.0 - entropy / math.log(num_locations)
    return (weights * concentration).sum() / weights.sum().clamp_min(1e-6)


class MixupCamClassifier(CamClassifier):
    """CAM classifier whose forward can also return the maps it averaged (one pass under DDP)."""

    def forward(self, images: torch.Tensor, return_maps: bool = False
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Logits [B, C]; with ``return_maps`` also the raw class maps [B, C, h, w]."""
        maps = self.class_maps(images)
        logits = maps.mean(dim=(2, 3))
        return (logits, maps) if return_maps else logits


@register_method("mixup_cam")
class MixupCamMethod(Method):
    """CAM trained on mixed images / soft labels plus the spatial-entropy regulariser."""

    Params = MixupCamParams
    knobs = (Knob("method.params.alpha", 0.2, 2.0),
             Knob("method.params.entropy_weight", 0.0, 0.2))

    def build_model(self, model_cfg: ModelConfig) -> nn.Module:
        """A :class:`MixupCamClassifier` (same weights layout as the plain CAM classifier)."""
        return MixupCamClassifier(build_backbone(model_cfg.backbone, model_cfg.pretrained),
                                  self.num_classes)

    def training_loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                      epoch: int) -> tuple[torch.Tensor, dict[str, float]]:
        """Soft-label BCE on the mixed batch + ``entropy_weight`` * spatial concentration.

        images [B, 3, H, W], labels multi-hot [B, C]; lam and the permutation are drawn from
        the global RNG at every call.
        """
        alpha = torch.tensor(float(self.params.alpha))
        lam = float(torch.distributions.Beta(alpha, alpha).sample())
        perm = torch.randperm(images.shape[0], device=images.device)
        mixed_images, mixed_labels = mix_batch(images, labels, lam, perm)
        logits, maps = model(mixed_images, return_maps=True)
        cls_loss = F.multilabel_soft_margin_loss(logits, mixed_labels)
        entropy_loss = spatial_concentration(maps, mixed_labels)
        loss = cls_loss + self.params.entropy_weight * entropy_loss
        return loss, {"cls_loss": float(cls_loss.detach()),
                      "entropy_loss": float(entropy_loss.detach()), "mixup_lam": lam}
