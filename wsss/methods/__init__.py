"""Method registry: importing this package registers every method."""
from wsss.methods.base import METHODS, Method, NoParams, get_method, register_method
from wsss.methods import cam  # noqa: F401  (registers cam, gradcam)
from wsss.methods import (  # noqa: F401  (each module registers its methods)
    acol, adversarial_erasing, hide_and_seek, mdc, mixup_cam, saliency_guided, seam)

__all__ = ["METHODS", "Method", "NoParams", "get_method", "register_method"]
