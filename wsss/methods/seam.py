"""SEAM: self-supervised equivariant attention mechanism (Wang et al., CVPR 2020).

A siamese pass runs the image and a copy rescaled by ``scale`` (the transform T) through the same
network. Each pass gives raw CAMs (1x1 head on the last features) and a PCM-refined map: the
max-normalised CAMs plus a background channel ``1 - max over classes`` are propagated with a pixel
affinity computed from projected features (layer3 and layer4 activations and the image, all
detached, as in SEAM), ``aff = row-normalise(relu(cosine similarity))``. Losses:

* BCE: multi-label loss on the GAP of each branch's raw CAMs (averaged over the two branches);
* ER: ``L1(CAM(T(x)), T(CAM(x)))`` on the label-masked, max-normalised foreground CAMs;
* ECR: ``L1(T(PCM(x)), CAM(T(x)))`` + ``L1(PCM(T(x)), T(CAM(x)))`` on background + foreground
  channels, the CAM side detached (so ECR trains the PCM projections, as in the reference code).

Background handling: the background channel is channel 0 of every refined map ([B, 1 + C, h, w]);
``class_maps`` returns the refined foreground channels only, [B, C, h, w]. Logits (training and
test) are the GAP of the raw CAMs, so Grad-CAM still differentiates the plain 1x1 head.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from wsss.config import ModelConfig, check_value
from wsss.models.heads import NORM_EPS, max_normalise
from wsss.knobs import Knob
from wsss.methods.base import Method, register_method
from wsss.models import Backbone, build_backbone

PCM_CHANNELS = 192


@dataclass(frozen=True)
class SeamParams:
    """``scale`` in (0, 1): size of the transformed copy; loss weights ``er_weight``,
    ``ecr_weight`` >= 0."""

    scale: float = 0.5
    er_weight: float = 1.0
    ecr_weight: float = 1.0

    def validate(self) -> None:
        check_value(isinstance(self.scale, (int, float)) and 0.0 < self.scale < 1.0,
                    "method.params.scale", self.scale, "in (0, 1)")
        for key in ("er_weight", "ecr_weight"):
            value = getattr(self, key)
            check_value(isinstance(value, (int, float)) and value >= 0.0, f"method.params.{key}",
                        value, ">= 0")


def rescale(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The transform T: bilinear resize of [B, K, h, w] to [B, K, *size]."""
    return F.interpolate(maps, size=tuple(size), mode="bilinear", align_corners=False)


def equivariance_loss(cam_of_transformed: torch.Tensor,
                      transformed_cam: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference between CAM(T(x)) and T(CAM(x)), both [B, K, h, w]."""
    return (cam_of_transformed - transformed_cam).abs().mean()


def with_background(fg_maps: torch.Tensor) -> torch.Tensor:
    """Prepend the background channel ``1 - max_c fg``: [B, C, h, w] -> [B, 1 + C, h, w]."""
    background = 1.0 - fg_maps.amax(dim=1, keepdim=True)
    return torch.cat([background, fg_maps], dim=1)


def pcm_affinity(embedding: torch.Tensor) -> torch.Tensor:
    """Row-normalised pixel affinity from an embedding [B, K, h, w] -> [B, N, N], N = h*w.

    ``aff[b, j, i] = relu(cos(e_j, e_i))`` divided by its row sum, so row j holds the convex
    weights with which location j gathers the map values of all locations i.
    """
    flat = embedding.flatten(2)
    flat = flat / (flat.norm(dim=1, keepdim=True) + NORM_EPS)
    affinity = torch.relu(flat.transpose(1, 2) @ flat)
    return affinity / (affinity.sum(dim=2, keepdim=True) + NORM_EPS)


def pcm_refine(maps: torch.Tensor, affinity: torch.Tensor) -> torch.Tensor:
    """Propagate maps [B, K, h, w] with an affinity [B, N, N] -> refined maps [B, K, h, w]."""
    refined = maps.flatten(2) @ affinity.transpose(1, 2)
    return refined.view_as(maps)


class SeamClassifier(nn.Module):
    """Backbone + 1x1 CAM head + pixel correlation module (PCM).

    Shapes: images [B, 3, H, W] -> raw CAMs [B, C, h, w] (``maps_from_features``; their GAP are
    the logits) and refined maps [B, 1 + C, h, w] (background first); ``class_maps`` gives the
    refined foreground maps [B, C, h, w].
    """

    def __init__(self, backbone: Backbone, num_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Conv2d(backbone.out_channels, num_classes, kernel_size=1, bias=False)
        # layer3 of the torchvision ResNets has half the channels of layer4 (256/512, 1024/2048).
        self.proj_mid = nn.Conv2d(backbone.out_channels // 2, 64, kernel_size=1, bias=False)
        self.proj_last = nn.Conv2d(backbone.out_channels, 128, kernel_size=1, bias=False)
        self.proj_pcm = nn.Conv2d(64 + 128 + 3, PCM_CHANNELS, kernel_size=1, bias=False)
        self.num_classes = num_classes

    def maps_from_features(self, features: torch.Tensor) -> torch.Tensor:
        """Raw CAMs [B, C, h, w] from last-stage features [B, F, h, w]."""
        return self.head(features)

    def pcm_embedding(self, images: torch.Tensor, mid: torch.Tensor,
                      last: torch.Tensor) -> torch.Tensor:
        """PCM embedding [B, 192, h, w] from images [B, 3, H, W] and detached layer3 / layer4
        activations [B, F/2, h, w] / [B, F, h, w]."""
        small = rescale(images, last.shape[-2:])
        parts = [small, torch.relu(self.proj_mid(mid.detach())),
                 torch.relu(self.proj_last(last.detach()))]
        return self.proj_pcm(torch.cat(parts, dim=1))

    def branch(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw CAMs [B, C, h, w] and refined maps [B, 1 + C, h, w] of images [B, 3, H, W]."""
        mid = self.backbone.forward_until("layer3", images)
        last = self.backbone.forward_from("layer3", mid)
        raw = self.head(last)
        cams = with_background(max_normalise(raw.detach()))
        refined = pcm_refine(cams, pcm_affinity(self.pcm_embedding(images, mid, last)))
        return raw, refined

    def class_maps(self, images: torch.Tensor) -> torch.Tensor:
        """PCM-refined foreground maps [B, C, h, w] for images [B, 3, H, W]."""
        return self.branch(images)[1][:, 1:]

    def forward(self, images: torch.Tensor, scale: float | None = None
                ) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """Logits [B, C] (GAP of raw CAMs); with ``scale``, the siamese outputs
        ``(raw, refined)`` of the image followed by those of its rescaled copy."""
        if scale is None:
            return self.maps_from_features(self.backbone(images)).mean(dim=(2, 3))
        height, width = images.shape[-2:]
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        return (*self.branch(images), *self.branch(rescale(images, size)))


@register_method("seam")
class SeamMethod(Method):
    """Siamese CAM training with equivariance (ER) and cross (ECR) regularisation."""

    Params = SeamParams
    knobs = (Knob("method.params.scale", 0.3, 0.7),
             Knob("method.params.er_weight", 0.1, 2.0),
             Knob("method.params.ecr_weight", 0.1, 2.0))

    def build_model(self, model_cfg: ModelConfig) -> nn.Module:
        """A :class:`SeamClassifier`."""
        return SeamClassifier(build_backbone(model_cfg.backbone, model_cfg.pretrained),
                              self.num_classes)

    def training_loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                      epoch: int) -> tuple[torch.Tensor, dict[str, float]]:
        """BCE + ``er_weight`` * ER + ``ecr_weight`` * ECR. images [B, 3, H, W], labels [B, C]."""
        raw1, refined1, raw2, refined2 = model(images, scale=self.params.scale)
        cls_loss = (F.multilabel_soft_margin_loss(raw1.mean(dim=(2, 3)), labels)
                    + F.multilabel_soft_margin_loss(raw2.mean(dim=(2, 3)), labels)) / 2
        size = raw2.shape[-2:]
        fg_mask = labels[:, :, None, None]
        full_mask = torch.cat([torch.ones_like(fg_mask[:, :1]), fg_mask], dim=1)
        cam1 = rescale(max_normalise(raw1), size) * fg_mask  # T(CAM(x))
        cam2 = max_normalise(raw2) * fg_mask  # CAM(T(x))
        er_loss = equivariance_loss(cam2, cam1)
        ecr_loss = (
            equivariance_loss(rescale(max_normalise(refined1), size) * full_mask,
                              with_background(cam2).detach())
            + equivariance_loss(max_normalise(refined2) * full_mask,
                                with_background(cam1).detach()))
        loss = cls_loss + self.params.er_weight * er_loss + self.params.ecr_weight * ecr_loss
        return loss, {"cls_loss": float(cls_loss.detach()), "er_loss": float(er_loss.detach()),
                      "ecr_loss": float(ecr_loss.detach())}
