"""Grad-CAM (Selvaraju et al., ICCV 2017): channels weighted by their mean gradient."""

from __future__ import annotations

import torch

from wsss.core.map_kinds.base import GradientMapKind, register_map_kind


@register_map_kind("gradcam")
class GradCam(GradientMapKind):
    """alpha_k^c = spatial mean of d logit_c / d A_k; map_c = relu(sum_k alpha_k^c A_k)."""

    def weights(self, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        return gradients.mean(dim=(2, 3), keepdim=True)
