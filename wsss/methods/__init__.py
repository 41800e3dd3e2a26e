"""The methods: importing this package imports every module in it, and each module registers
its methods (``wsss.registry``); a new method is one new module here.

Code above the methods layer imports the registry's API from here, so the registry it sees is
always complete.
"""
import importlib
import pkgutil

from wsss.methods.base import Method, NoParams
from wsss.registry import METHODS, get_method, register_method

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["METHODS", "Method", "NoParams", "get_method", "register_method"]
