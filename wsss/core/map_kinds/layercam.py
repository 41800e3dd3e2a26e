"""LayerCAM (Jiang et al., IEEE TIP 2021): every activation weighted by its positive gradient.

Where Grad-CAM gives a channel one weight, LayerCAM weights each location by its own gradient,
so maps from shallower layers keep their finer detail.
"""

from __future__ import annotations

import torch

from wsss.core.map_kinds.base import GradientMapKind, register_map_kind


@register_map_kind("layercam")
class LayerCam(GradientMapKind):
    """map_c = relu(sum_k relu(d logit_c / d A_k) * A_k), location by location."""

    def weights(self, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        return gradients.clamp(min=0)
