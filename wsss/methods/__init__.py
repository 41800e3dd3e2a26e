"""Method registry: importing this package registers every method."""
from wsss.methods.base import METHODS, Method, NoParams, get_method, register_method
from wsss.methods import cam  # noqa: F401  (registers cam, gradcam)

__all__ = ["METHODS", "Method", "NoParams", "get_method", "register_method"]
