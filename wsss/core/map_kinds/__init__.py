"""Map kinds: how a localization map is computed from a trained classifier, one module each.

Importing this package imports every module in it, and each module registers its kind
(``@register_map_kind("name")``), so :data:`MAP_KINDS` is complete whoever asks first. Adding a
kind is one module here and its test: the ``wsss cam --kind`` choices, the check of
``cams.kind``, each method's ``supported_map_kinds`` and the tests parametrized over the
registry pick it up (docs/methods.md, "Adding a map kind").
"""
import importlib
import pkgutil

from wsss.core.map_kinds.base import (MAP_KINDS, GradientMapKind, MapKind, MapSource,
                                      map_kind_for, register_map_kind)

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["MAP_KINDS", "GradientMapKind", "MapKind", "MapSource", "map_kind_for",
           "register_map_kind"]
