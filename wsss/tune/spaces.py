"""Search spaces: the knobs of each method (and of the CRF), as Optuna define-by-run spaces.

A knob (:class:`wsss.knobs.Knob`) is a dotted config key (``method.params.hide_prob``,
``train.lr``, ``refine.crf_iterations``) with a range or a list of choices. Each method declares
its own knobs (``Method.knobs``, in its module of ``wsss.methods``); they are checked against the
method's registered ``Params`` so a space can never name a knob the method does not have; a method
that declares none is still searchable (learning rate only). Trial configs are plain dicts
``{config key: value}``; :func:`apply_trial` sets them on a base config.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any, Iterator, Mapping, Sequence

from wsss.config import ConfigError, ExperimentConfig, from_dict
from wsss.knobs import Knob
from wsss.methods import get_method

SEP = ":"  # "<method>:<key>" names keep each method's sub-space its own Optuna distributions


# A decade either side of the recipe's learning rate (AdamW from scratch: 1e-4..1e-2; SGD
# fine-tuning: 1e-3..1e-1).
LR = Knob("train.lr", 0.1, 10.0, log=True, relative=True)

CRF_KNOBS: tuple[Knob, ...] = (
    Knob("refine.crf_gaussian_sxy", 1.0, 10.0),
    Knob("refine.crf_gaussian_compat", 1.0, 10.0),
    Knob("refine.crf_bilateral_sxy", 10.0, 120.0),
    Knob("refine.crf_bilateral_srgb", 3.0, 30.0),
    Knob("refine.crf_bilateral_compat", 1.0, 15.0),
    Knob("refine.crf_iterations", 1, 10, integer=True),
    Knob("refine.crf_unary", choices=("scores", "labels")),
    Knob("refine.crf_label_confidence", 0.55, 0.95),
    Knob("refine.bg_mode", choices=("threshold", "power")),
    Knob("refine.bg_threshold", 0.1, 0.6),
    Knob("refine.bg_power", 1.0, 8.0),
)


def method_knobs(name: str) -> tuple[Knob, ...]:
    """The knobs registered method ``name`` declares (``Method.knobs``), checked against its
    ``Params`` fields."""
    method = get_method(name)
    params = {f.name for f in dataclasses.fields(method.Params)}
    knobs = tuple(method.knobs)
    for knob in knobs:
        field = knob.key.removeprefix("method.params.")
        if field not in params:
            raise ConfigError(f"sweep knob '{knob.key}' is not a parameter of method '{name}'; "
                              f"its parameters: {', '.join(sorted(params)) or '(none)'}")
    return knobs


class Space:
    """An Optuna define-by-run space (picklable, so a restored sweep keeps its searcher).

    ``Space(knobs, constants)`` suggests every knob under its key. With ``methods`` the method is
    searched too: ``method.name`` is suggested first, then that method's knobs under
    ``"<method>:<key>"`` names (each method's distributions stay separate). ``overrides``
    replace knobs of the same key (e.g. narrower ranges for a smoke test). ``base``: the config
    that relative knobs (``Knob.relative``) take their ranges from.
    """

    def __init__(self, knobs: Sequence[Knob] = (), constants: Mapping[str, Any] | None = None,
                 methods: Sequence[str] | None = None, overrides: Sequence[Knob] = (),
                 base: ExperimentConfig | None = None) -> None:
        def fixed(knob: Knob) -> Knob:
            return knob.on(base) if base is not None else knob

        self.overrides = {k.key: fixed(k) for k in overrides}
        self.knobs = tuple(self.overrides.get(k.key, fixed(k)) for k in knobs)
        self.constants = dict(constants or {})
        self.methods = tuple(methods) if methods else None
        for name in self.methods or ():
            method_knobs(name)

    def __call__(self, trial: Any) -> dict[str, Any] | None:
        for knob in self.knobs:
            knob.suggest(trial)
        if self.methods:
            name = trial.suggest_categorical("method.name", list(self.methods))
            for knob in method_knobs(name):
                knob = self.overrides.get(knob.key, knob)
                knob.suggest(trial, f"{name}{SEP}{knob.key}")
        return dict(self.constants) or None

    def corners(self) -> Iterator[dict[str, Any]]:
        """Every trial config (constants included) with each knob at one of its ``ends``."""
        for name in self.methods or [None]:
            pairs = [(k.key, k.ends()) for k in self.knobs]
            if name is not None:
                pairs += [("method.name", (name,))] + [
                    (f"{name}{SEP}{k.key}", self.overrides.get(k.key, k).ends())
                    for k in method_knobs(name)]
            for values in itertools.product(*(ends for _, ends in pairs)):
                yield {**self.constants, **dict(zip([key for key, _ in pairs], values))}

    def keys(self) -> list[str]:
        """The knob names this space can suggest (for tables and plots)."""
        names = [k.key for k in self.knobs]
        if self.methods:
            names.append("method.name")
            names += [f"{m}{SEP}{k.key}" for m in self.methods for k in method_knobs(m)]
        return names


def check_space(space: Space, base: ExperimentConfig) -> None:
    """Raise ConfigError when the space can propose a config that is not valid on ``base``.

    Every config check is a range per key, and the dense-CRF width limits (which tie widths
    to ``data.max_image_side``) only loosen as a width grows, so the space is valid exactly
    when all its corners (:meth:`Space.corners`) are.
    """
    for corner in space.corners():
        try:
            apply_trial(base, corner)
        except ConfigError as err:
            knobs = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                              for k, v in trial_settings(corner, base.method.name).items())
            raise ConfigError(f"the search space can propose an invalid config ({knobs}): "
                              f"{err}") from None


def trial_settings(trial_config: Mapping[str, Any], method: str | None = None) -> dict[str, Any]:
    """``{config key: value}`` of a trial config: ``<method>:`` prefixes dropped, values of a
    method's knobs with a ``parse`` parsed (MDC rate strings turned into lists), keys starting
    with ``_`` (not config keys) skipped.

    A ``method.params.*`` key belongs to the method of its ``<method>:`` prefix, else to the
    trial's ``method.name``, else to ``method`` (the base config's)."""
    trial_method = trial_config.get("method.name", method)
    out = {}
    for name, value in trial_config.items():
        if name.startswith("_"):
            continue
        prefix, sep, key = name.partition(SEP)
        if not sep:
            prefix, key = trial_method, name
        parse = _parser(prefix, key)
        out[key] = parse(value) if parse is not None else value
    return out


def _parser(method: str | None, key: str) -> Any:
    """The ``parse`` of ``method``'s declared knob ``key`` (None: none, or not a method knob)."""
    if not method or not key.startswith("method.params."):
        return None
    try:
        knobs = get_method(method).knobs
    except ConfigError:  # an unknown method: the config check names it
        return None
    return next((k.parse for k in knobs if k.key == key), None)


def apply_trial(base: ExperimentConfig, trial_config: Mapping[str, Any]) -> ExperimentConfig:
    """``base`` with the trial's settings (validated; a bad value raises ``ConfigError``)."""
    data = base.to_dict()
    for key, value in trial_settings(trial_config, base.method.name).items():
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return from_dict(data)
