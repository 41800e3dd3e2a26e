"""Search spaces: the knobs of each method (and of the CRF), as Optuna define-by-run spaces.

A knob is a dotted config key (``method.params.hide_prob``, ``train.lr``, ``refine.crf_iterations``)
with a range or a list of choices. Method knobs are checked against the method's registered
``Params`` so a space can never name a knob the method does not have; a method registered without
an entry here is still searchable (learning rate only). Trial configs are plain dicts
``{config key: value}``; :func:`apply_trial` sets them on a base config.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

from wsss.config import ConfigError, ExperimentConfig, flatten, from_dict

SEP = ":"  # "<method>:<key>" names keep each method's sub-space its own Optuna distributions


@dataclass(frozen=True)
class Knob:
    """One searched config key: a float/int range (``log`` for log scale) or ``choices``.

    ``relative``: ``low`` and ``high`` are factors of the base config's value of ``key`` (a
    learning rate searched around the recipe's own, whatever the optimiser); :meth:`on` makes
    the range absolute.
    """

    key: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False
    choices: tuple[Any, ...] | None = None
    relative: bool = False

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


# A decade either side of the recipe's learning rate (AdamW from scratch: 1e-4..1e-2; SGD
# fine-tuning: 1e-3..1e-1).
LR = Knob("train.lr", 0.1, 10.0, log=True, relative=True)

METHOD_KNOBS: dict[str, tuple[Knob, ...]] = {
    "adversarial_erasing": (Knob("method.params.steps", 1, 4, integer=True),
                            Knob("method.params.threshold", 0.3, 0.9)),
    "hide_and_seek": (Knob("method.params.hide_prob", 0.0, 0.9),
                      Knob("method.params.grid_size", choices=(2, 4, 8, 16))),
    "mdc": (Knob("method.params.dilations", choices=dilation_sets()),),
    "acol": (Knob("method.params.delta", 0.3, 0.9),),
    "mixup_cam": (Knob("method.params.alpha", 0.2, 2.0),
                  Knob("method.params.entropy_weight", 0.0, 0.2)),
    "seam": (Knob("method.params.scale", 0.3, 0.7),
             Knob("method.params.er_weight", 0.1, 2.0),
             Knob("method.params.ecr_weight", 0.1, 2.0)),
    "saliency": (Knob("method.params.threshold", 0.2, 0.8),),
    "gradcam": (Knob("method.params.layer", choices=("layer3", "layer4")),),
}

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
    """The knobs of registered method ``name``, checked against its ``Params`` fields."""
    from wsss.methods import get_method

    params = {f.name for f in dataclasses.fields(get_method(name).Params)}
    knobs = METHOD_KNOBS.get(name, ())
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
                              for k, v in trial_settings(corner).items())
            raise ConfigError(f"the search space can propose an invalid config ({knobs}): "
                              f"{err}") from None


def trial_settings(trial_config: Mapping[str, Any]) -> dict[str, Any]:
    """``{config key: value}`` of a trial config: ``<method>:`` prefixes dropped, MDC rate
    strings turned into lists, keys starting with ``_`` (not config keys) skipped."""
    out = {}
    for name, value in trial_config.items():
        if name.startswith("_"):
            continue
        key = name.split(SEP, 1)[-1]
        if key == "method.params.dilations" and isinstance(value, str):
            value = [int(v) for v in value.split(",")]
        out[key] = value
    return out


def apply_trial(base: ExperimentConfig, trial_config: Mapping[str, Any]) -> ExperimentConfig:
    """``base`` with the trial's settings (validated; a bad value raises ``ConfigError``)."""
    data = base.to_dict()
    for key, value in trial_settings(trial_config).items():
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return from_dict(data)
