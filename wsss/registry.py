"""A registry: names -> classes, filled by a decorator where each class is defined.

The methods (``wsss.methods.METHODS``) and the map kinds (``wsss.core.map_kinds.MAP_KINDS``)
are registries: adding one is one decorated class in one new module of their package, and the
CLI's choices, the sweeps and the tests read the registry (timm's registry:
``timm/models/_registry.py``). A registry is a read-only mapping name -> class.
"""

from __future__ import annotations

from typing import Callable, Generic, Iterator, Mapping, TypeVar

from wsss.errors import ConfigError

T = TypeVar("T", bound=type)


class Registry(Mapping[str, T], Generic[T]):
    """Classes by name; ``what`` names an entry in messages (``"method"``, ``"map kind"``)."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Class decorator: make the class reachable as ``name`` (its ``name`` attribute is
        set). Raises ValueError when ``name`` is registered twice."""

        def decorate(cls: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.what} '{name}' is registered twice")
            cls.name = name
            self._entries[name] = cls
            return cls

        return decorate

    def lookup(self, name: str) -> T:
        """The class registered as ``name``.

        Raises:
            ConfigError: no entry has that name (the message lists the valid names).
        """
        if name not in self._entries:
            raise ConfigError(f"unknown {self.what} '{name}'; choose one of: "
                              f"{', '.join(self.names())}")
        return self._entries[name]

    def names(self) -> tuple[str, ...]:
        """The registered names, sorted."""
        return tuple(sorted(self._entries))

    def __getitem__(self, name: str) -> T:
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)
