"""CAM (Zhou et al., CVPR 2016) and Grad-CAM (Selvaraju et al., ICCV 2017)."""

from __future__ import annotations

from dataclasses import dataclass

from wsss.errors import ConfigError
from wsss.knobs import Knob
from wsss.methods.base import Method, register_method
from wsss.models.backbones import STAGES


@register_method("cam")
class CamMethod(Method):
    """GAP + linear classifier; map = classifier weights applied to the last features."""


@dataclass(frozen=True)
class GradCamParams:
    layer: str = "layer4"

    def validate(self) -> None:
        if self.layer not in STAGES[1:]:
            raise ConfigError(f"gradcam layer '{self.layer}' is not valid; choose one of: "
                              f"{', '.join(STAGES[1:])}")


@register_method("gradcam")
class GradCamMethod(Method):
    """Trained like CAM; maps are gradient-weighted activations of ``params.layer``."""

    Params = GradCamParams
    knobs = (Knob("method.params.layer", choices=("layer3", "layer4")),)
    default_map_kind = "gradcam"

    @property
    def map_layer(self) -> str:
        return self.params.layer
