"""The method registry: names -> method classes, filled by ``@register_method``.

It sits below the config so that ``wsss.config`` can check a method's name and parameters
without importing the methods; the methods (one layer up) register themselves into it. The
built-in methods live in ``wsss.methods``, loaded the first time a name is looked up (as a
plugin package), so the registry is complete whichever module asks first. Adding a method is
one decorated class (timm's registry: ``timm/models/_registry.py``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Callable

from wsss.errors import ConfigError

if TYPE_CHECKING:
    from wsss.methods.base import Method

BUILTIN_METHODS = "wsss.methods"

METHODS: dict[str, type[Method]] = {}


def register_method(name: str) -> Callable[[type], type]:
    """Class decorator: make a method reachable by ``name`` from the CLI, sweeps and tests.

    Raises ValueError when ``name`` is registered twice."""

    def decorate(cls: type) -> type:
        if name in METHODS:
            raise ValueError(f"method '{name}' is registered twice")
        cls.name = name
        METHODS[name] = cls
        return cls

    return decorate


def get_method(name: str) -> type[Method]:
    """The registered method class called ``name``.

    Raises:
        ConfigError: no method has that name (the message lists the valid names).
    """
    importlib.import_module(BUILTIN_METHODS)  # registers the built-in methods (once)
    if name not in METHODS:
        raise ConfigError(f"unknown method '{name}'; choose one of: "
                                 f"{', '.join(sorted(METHODS))}")
    return METHODS[name]
