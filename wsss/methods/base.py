"""The one interface every method implements, and the registry that names them (``METHODS``).

A method says how to build its model, how to compute its training loss from a batch, and how to
turn images into raw class maps. Methods that act on the inputs (Hide-and-Seek, Mixup), on the
model (ACoL, MDC, SEAM) or on the whole procedure (adversarial erasing) override the matching hook;
the training loop, map extraction and tracking never special-case a method.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from wsss.config import MethodConfig, ModelConfig, RefineConfig, typed_value
from wsss.core.map_kinds import MAP_KINDS
from wsss.core.masks import pseudo_mask
from wsss.errors import ConfigError
from wsss.knobs import Knob
from wsss.models import CamClassifier, build_backbone
from wsss.models.classifier import unwrap
from wsss.registry import Registry


@dataclass(frozen=True)
class NoParams:
    """A method without knobs."""


class Method:
    """Base method: plain CAM training (multi-label BCE on GAP logits).

    Subclasses set ``Params`` (a frozen dataclass of knobs with a ``validate`` method if needed),
    ``knobs`` (what a sweep searches) and override the hooks they change.
    """

    name: ClassVar[str] = ""
    Params: ClassVar[type] = NoParams
    # the method's sweep knobs: dotted keys ``method.params.<field>``; checked against Params
    # (``wsss.tune.spaces.method_knobs``)
    knobs: ClassVar[tuple[Knob, ...]] = ()
    default_map_kind: ClassVar[str] = "cam"
    # the model follows the backbone contract (``wsss.core.map_kinds.MapKind``), so the map
    # kinds that weight a backbone layer (Grad-CAM, LayerCAM...) work on it
    layer_maps: ClassVar[bool] = True
    masks_need_image: ClassVar[bool] = False  # pseudo_mask reads the image even without CRF

    def __init__(self, num_classes: int, params: Mapping[str, Any] | Any = None) -> None:
        self.num_classes = num_classes
        self.params = params if dataclasses.is_dataclass(params) else self.parse_params(params)

    @classmethod
    def parse_params(cls, raw: Mapping[str, Any] | None) -> Any:
        """Build and validate ``Params`` from a dict; unknown keys list the valid ones."""
        raw = dict(raw or {})
        valid = {f.name for f in dataclasses.fields(cls.Params)}
        unknown = sorted(set(raw) - valid)
        if unknown:
            raise ConfigError(f"method '{cls.name}' has no parameter(s) {', '.join(unknown)}; "
                              f"valid: {', '.join(sorted(valid)) or '(none)'}")
        types = {f.name: str(f.type) for f in dataclasses.fields(cls.Params)}
        params = cls.Params(**{key: typed_value(f"method.params.{key}", value, types[key])
                               for key, value in raw.items()})
        if hasattr(params, "validate"):
            params.validate()
        return params

    def params_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self.params)

    # -- model -------------------------------------------------------------------------------
    def build_model(self, model_cfg: ModelConfig) -> nn.Module:
        """A fresh model for this method (images [B, 3, H, W] -> logits [B, C])."""
        return CamClassifier(build_backbone(model_cfg.backbone, model_cfg.pretrained),
                             self.num_classes)

    # -- training ----------------------------------------------------------------------------
    @property
    def num_rounds(self) -> int:
        """How many consecutive trainings the method's procedure needs (one Ray Train run each)."""
        return 1

    def prepare_round(self, model: nn.Module, round_index: int) -> None:
        """Called on every worker before round ``round_index`` trains (freeze, switch heads...)."""

    def training_loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                      epoch: int) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss for one batch. images [B, 3, H, W], labels multi-hot float [B, C]."""
        logits = model(images)
        loss = F.multilabel_soft_margin_loss(logits, labels)
        return loss, {"cls_loss": float(loss.detach())}

    # -- maps --------------------------------------------------------------------------------
    @property
    def supported_map_kinds(self) -> tuple[str, ...]:
        """The registered map kinds this method's model gives (``wsss.core.map_kinds``): all
        of them, or those that weight no layer when the model has no ``layer_maps``."""
        return tuple(name for name in MAP_KINDS.names()
                     if self.layer_maps or not MAP_KINDS[name].layers)

    @property
    def map_layer(self) -> str:
        """Backbone stage whose activations Grad-CAM weights."""
        return "layer4"

    def class_maps(self, model: nn.Module, images: torch.Tensor,
                   labels: torch.Tensor | None = None) -> torch.Tensor:
        """Raw class maps [B, C, h, w] for images [B, 3, H, W] in eval mode.

        ``labels`` (multi-hot [B, C]) is there for methods whose maps depend on the classes
        present (adversarial erasing mines only those); most methods ignore it.
        """
        return unwrap(model).class_maps(images)

    # -- masks -------------------------------------------------------------------------------
    def pseudo_mask(self, image: np.ndarray | None, maps: np.ndarray, class_ids: Sequence[int],
                    has_background: bool, refine: RefineConfig,
                    saliency: Callable[[str], np.ndarray] | None = None) -> np.ndarray:
        """Pseudo-mask uint8 [H, W] (255 = uncertain) from maps float [K, H, W] in [0, 1] of
        the present classes ``class_ids``, at the size of ``image`` RGB uint8 [H, W, 3] (needed
        by the CRF and by methods with ``masks_need_image``).

        ``refine``: background score, CRF and confidence marking (validated by the caller,
        once per job); ``saliency(source)`` gives the image's saliency map [H, W] for methods
        that use one (loaded lazily: most do not).
        """
        return pseudo_mask(image, maps, class_ids, has_background, refine)


METHODS: Registry[type[Method]] = Registry("method")
register_method = METHODS.register
get_method = METHODS.lookup


def check_method_config(section: MethodConfig) -> None:
    """The methods layer's check of the ``method`` config section (``wsss.config`` imports no
    method): ConfigError naming an unregistered ``method.name`` (with the valid names) or a
    ``method.params`` key or value its method refuses."""
    get_method(section.name).parse_params(section.params)
