"""CAM (Zhou et al., CVPR 2016): the classifier's weights applied to its last features."""

from __future__ import annotations

import torch
from torch import nn

from wsss.core.map_kinds.base import MapKind, MapSource, register_map_kind


@register_map_kind("cam")
class Cam(MapKind):
    """The method's own class maps (``Method.class_maps``), computed without autograd."""

    def raw_maps(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, layer: str,
                 source: MapSource | None = None) -> torch.Tensor:
        if source is None:
            raise ValueError("CAM maps are the method's class maps: pass the method as source")
        with torch.no_grad():
            return source.class_maps(model, images, labels)
