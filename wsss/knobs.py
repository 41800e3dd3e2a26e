"""Sweep knobs: a dotted config key with a range or a list of choices.

A bottom-layer module (it imports only the config) so that each method in ``wsss.methods``
declares its own knobs (``Method.knobs``) and ``wsss.tune.spaces`` searches them.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from wsss.config import ExperimentConfig, flatten


@dataclass(frozen=True)
class Knob:
    """One searched config key: a float/int range (``log`` for log scale) or ``choices``.

    ``relative``: ``low`` and ``high`` are factors of the base config's value of ``key`` (a
    learning rate searched around the recipe's own, whatever the optimiser); :meth:`on` makes
    the range absolute.

    ``parse``: turns a suggested value into the config value, for values Optuna cannot suggest
    as they are (MDC's rate sets are searched as strings ``"1,3,6"``: :func:`int_list`). A
    module-level function, so that a space stays picklable. ``wsss.tune.spaces.trial_settings``
    applies it to the knobs a method declares (``Method.knobs``).
    """

    key: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False
    choices: tuple[Any, ...] | None = None
    relative: bool = False
    parse: Callable[[Any], Any] | None = None

    def on(self, base: ExperimentConfig) -> Knob:
        """This knob with a relative range made absolute around ``base``'s value of ``key``."""
        if not self.relative:
            return self
        value = flatten(base.to_dict())[self.key]
        return dataclasses.replace(self, low=self.low * value, high=self.high * value,
                                   relative=False)

    def suggest(self, trial: Any, name: str | None = None) -> Any:
        """Ask an ``optuna.Trial`` for a value (parameter ``name``, default the key). Raises
        ValueError for a relative knob (use :meth:`on` first)."""
        if self.relative:
            raise ValueError(f"knob {self.key} has a range relative to a base config; "
                             f"search Knob.on(base)")
        name = name or self.key
        if self.choices is not None:
            return trial.suggest_categorical(name, list(self.choices))
        if self.integer:
            return trial.suggest_int(name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(name, float(self.low), float(self.high), log=self.log)

    def ends(self) -> tuple[Any, ...]:
        """The extreme values this knob can take: every choice, or both ends of its range."""
        if self.choices is not None:
            return tuple(self.choices)
        if self.integer:
            return int(self.low), int(self.high)
        return float(self.low), float(self.high)


def dilation_sets(rates: Sequence[int] = (2, 3, 6, 9, 12), max_size: int = 3) -> tuple[str, ...]:
    """MDC rate sets as strings ``"1,3,6"``: 1 plus every subset of ``rates`` up to ``max_size``."""
    sets = [(1, *combo) for size in range(max_size + 1)
            for combo in itertools.combinations(rates, size)]
    return tuple(",".join(map(str, s)) for s in sets)


def int_list(value: Any) -> Any:
    """``"1,3,6"`` -> ``[1, 3, 6]`` (a ``Knob.parse``); anything but a string is kept as is."""
    if isinstance(value, str):
        return [int(v) for v in value.split(",")]
    return value
