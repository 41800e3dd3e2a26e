"""Saliency-guided pseudo-masks (Oh et al., CVPR 2017).

The classifier trains as plain CAM; the difference is how maps become masks: foreground is where
an objectness/saliency map says "object", and each salient pixel takes the class of the best seed
(the arg-max CAM). Saliency comes from ``<dataset>/SaliencyMaps/<id>.png`` when that folder exists
(precomputed maps, the usual WSSS practice) or from spectral-residual static saliency
(``wsss.core.saliency``). Datasets without a background class have nothing for saliency to
separate,
so there the method falls back to the arg-max over present classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from wsss.config import RefineConfig
from wsss.errors import ConfigError
from wsss.core.masks import mask_from_scores, saliency_scores
from wsss.core.saliency import SOURCES
from wsss.knobs import Knob
from wsss.methods.base import Method, register_method

FUSIONS = ("best_seed", "product")


@dataclass(frozen=True)
class SaliencyParams:
    threshold: float = 0.5
    fusion: str = "best_seed"
    source: str = "auto"

    def validate(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ConfigError(f"saliency threshold={self.threshold} is out of range: (0, 1)")
        if self.fusion not in FUSIONS:
            raise ConfigError(f"saliency fusion '{self.fusion}' is not valid; choose one of: "
                              f"{', '.join(FUSIONS)}")
        if self.source not in SOURCES:
            raise ConfigError(f"saliency source '{self.source}' is not valid; choose one of: "
                              f"{', '.join(SOURCES)}")


@register_method("saliency")
class SaliencyGuided(Method):
    """CAM seeds + saliency foreground; knobs: saliency threshold, fusion rule, source."""

    Params = SaliencyParams
    knobs = (Knob("method.params.threshold", 0.2, 0.8),)
    masks_need_image = True

    def pseudo_mask(self, image: np.ndarray | None, maps: np.ndarray, class_ids: Sequence[int],
                    has_background: bool, cfg: RefineConfig,
                    saliency: Callable[[str], np.ndarray] | None = None) -> np.ndarray:
        if not has_background or saliency is None:
            return super().pseudo_mask(image, maps, class_ids, has_background, cfg, saliency)
        scores, ids = saliency_scores(maps, class_ids, saliency(self.params.source),
                                      self.params.threshold, self.params.fusion)
        return mask_from_scores(image, scores, ids, np.asarray(maps, np.float32), True, cfg)
