"""The methods: importing this package imports every module in it, and each module registers
its methods (``@register_method``, ``wsss.methods.base.METHODS``); a new method is one new
module here (docs/methods.md, "Adding a method").

Code above the methods layer imports the registry's API from here, so the registry it sees is
always complete.
"""
import importlib
import pkgutil

from wsss.methods.base import (METHODS, Method, NoParams, check_method_config, get_method,
                               register_method)

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["METHODS", "Method", "NoParams", "check_method_config", "get_method",
           "register_method"]
