"""Adversarial erasing (AE-PSL; Wei et al., CVPR 2017).

Training runs K rounds, each its own Ray Train run. Round k trains a fresh classifier on images
in which the regions mined by rounds 1..k-1 (their normalised map above ``threshold`` for the
image's classes) are replaced by the dataset mean (0 after ImageNet normalisation). The final map
is the union (element-wise max) of every round's map. A round stops mining a class of an image
once its classifier no longer recognises that class on the erased image (sigmoid < 0.5): that is
the per-class early stop of the paper, applied identically in training and at map extraction.

Erasing is computed on the fly by the frozen earlier rounds, so round k+1 never sees a pixel
mined before, whatever the augmentation, and nothing has to be stored between rounds.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from wsss.config import ModelConfig
from wsss.errors import ConfigError
from wsss.knobs import Knob
from wsss.methods.base import Method, register_method
from wsss.models.classifier import unwrap
from wsss.models import CamClassifier, build_backbone
from wsss.models.heads import max_normalise

ERASE_FILL = 0.0  # the dataset (ImageNet) mean in normalised space
RECOGNISED = 0.5


@dataclass(frozen=True)
class ErasingParams:
    steps: int = 3
    threshold: float = 0.5

    def validate(self) -> None:
        if not 1 <= self.steps <= 8:
            raise ConfigError(f"adversarial_erasing steps={self.steps} is out of range: 1..8")
        if not 0.0 < self.threshold < 1.0:
            raise ConfigError(f"adversarial_erasing threshold={self.threshold} is out of range: "
                              f"(0, 1)")


class ErasingClassifier(nn.Module):
    """K CAM classifiers, one per erasing round; ``active`` is the round being trained.

    ``forward(images)`` gives the logits [B, C] of the active round (images already erased by
    the caller); ``erasing_chain`` runs rounds 0..active-1 (or all trained rounds) in sequence.
    """

    def __init__(self, rounds: list[CamClassifier]) -> None:
        super().__init__()
        self.rounds = nn.ModuleList(rounds)
        self.register_buffer("active", torch.zeros((), dtype=torch.long))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.rounds[int(self.active)](images)

    def erasing_chain(self, images: torch.Tensor, labels: torch.Tensor, num_rounds: int,
                      threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Run rounds ``0..num_rounds-1``, each on the image erased by the ones before.

        Args:
            images: normalised [B, 3, H, W]. labels: multi-hot [B, C].

        Returns:
            union of the rounds' normalised maps [B, C, h, w] (feature resolution) and the
            erased images [B, 3, H, W] that round ``num_rounds`` would see.
        """
        union, erased = None, images
        present = labels > 0.5
        for k in range(num_rounds):
            classifier = self.rounds[k]
            raw = classifier.class_maps(erased)
            if k > 0:  # per-class early stop: mine only what this round still recognises
                present = present & (torch.sigmoid(raw.mean(dim=(2, 3))) > RECOGNISED)
            maps = max_normalise(raw) * present[:, :, None, None]
            union = maps if union is None else torch.maximum(union, maps)
            mined = F.interpolate(maps, size=images.shape[-2:], mode="bilinear",
                                  align_corners=False).amax(dim=1, keepdim=True) > threshold
            erased = erased.masked_fill(mined, ERASE_FILL)
        return union, erased


@register_method("adversarial_erasing")
class AdversarialErasing(Method):
    """K sequential trainings; map = union of the rounds' maps (CAM maps only)."""

    Params = ErasingParams
    knobs = (Knob("method.params.steps", 1, 4, integer=True),
             Knob("method.params.threshold", 0.3, 0.9))
    layer_maps = False  # one backbone per round: no single layer for gradient kinds

    @property
    def num_rounds(self) -> int:
        return self.params.steps

    def build_model(self, model_cfg: ModelConfig) -> nn.Module:
        return ErasingClassifier([
            CamClassifier(build_backbone(model_cfg.backbone, model_cfg.pretrained),
                          self.num_classes) for _ in range(self.params.steps)])

    def prepare_round(self, model: nn.Module, round_index: int) -> None:
        """Train only round ``round_index``; earlier rounds are frozen in eval mode."""
        net = unwrap(model)
        net.active.fill_(round_index)
        for k, classifier in enumerate(net.rounds):
            classifier.requires_grad_(k == round_index)

    def training_loss(self, model, images, labels, epoch):
        net = unwrap(model)
        active = int(net.active)
        if active > 0:
            was_training = [r.training for r in net.rounds[:active]]
            net.rounds[:active].eval()
            with torch.no_grad():
                _, images = net.erasing_chain(images, labels, active, self.params.threshold)
            for r, mode in zip(net.rounds[:active], was_training):
                r.train(mode)
        return super().training_loss(model, images, labels, epoch)

    def class_maps(self, model: nn.Module, images: torch.Tensor,
                   labels: torch.Tensor | None = None) -> torch.Tensor:
        """Union of the trained rounds' maps [B, C, h, w]; ``labels`` None means predicted."""
        net = unwrap(model)
        trained = int(net.active) + 1
        if labels is None:
            labels = (torch.sigmoid(net.rounds[0](images)) > RECOGNISED).float()
        union, _ = net.erasing_chain(images, labels, trained, self.params.threshold)
        return union
