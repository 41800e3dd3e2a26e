"""Search spaces read the method registry; every sampled trial is a valid config."""

from __future__ import annotations

import dataclasses
import math

import optuna
import pytest

from wsss.config import ConfigError, ExperimentConfig
from wsss.knobs import Knob, dilation_sets
from wsss.methods import METHODS, get_method
from wsss.tune.spaces import (CRF_KNOBS, LR, Space, apply_trial, check_space, method_knobs,
                              trial_settings)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_registered_method_has_a_valid_space(name):
    space = Space([LR], methods=[name], base=ExperimentConfig())
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
    for _ in range(5):
        trial = study.ask()
        space(trial)
        cfg = apply_trial(ExperimentConfig(), trial.params)  # validates the method's Params
        assert cfg.method.name == name
        base_lr = ExperimentConfig().train.lr  # LR: a decade either side of the recipe's
        assert base_lr / 10 <= cfg.train.lr <= base_lr * 10
        study.tell(trial, 0.0)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_declares_knobs_of_its_own_params(name):
    """A method's knobs (``Method.knobs``, declared in its module) name fields of its
    ``Params``, and every corner of its space is a valid config."""
    method = get_method(name)
    fields = {f.name for f in dataclasses.fields(method.Params)}
    for knob in method.knobs:
        assert knob.key.startswith("method.params."), knob.key
        assert knob.key.removeprefix("method.params.") in fields, knob.key
    assert method_knobs(name) == tuple(method.knobs)
    check_space(Space(methods=[name]), ExperimentConfig())


def test_a_knob_the_method_does_not_have_is_refused(monkeypatch):
    monkeypatch.setattr(get_method("cam"), "knobs", (Knob("method.params.nope", 0.0, 1.0),))
    with pytest.raises(ConfigError, match="sweep knob 'method.params.nope' is not a parameter "
                                          "of method 'cam'"):
        method_knobs("cam")


def test_dilation_sets_always_keep_the_base_rate():
    sets = dilation_sets()
    assert "1" in sets and "1,2,3,6" in sets
    assert all(s.split(",")[0] == "1" and len(set(s.split(","))) == len(s.split(","))
               for s in sets)
    cfg = apply_trial(ExperimentConfig(), {"method.name": "mdc",
                                           "mdc:method.params.dilations": "1,3,12"})
    assert tuple(cfg.method.params["dilations"]) == (1, 3, 12)


def test_a_knobs_parse_turns_suggested_values_into_config_values():
    """MDC's rate strings become lists whether the method is searched (``mdc:`` prefix), fixed
    by the trial (``method.name``) or the base config's; other methods' values are kept."""
    assert trial_settings({"method.name": "mdc", "method.params.dilations": "1,2"}) == {
        "method.name": "mdc", "method.params.dilations": [1, 2]}
    assert trial_settings({"method.params.dilations": "1,2"}, "mdc") == {
        "method.params.dilations": [1, 2]}
    assert trial_settings({"method.params.dilations": "1,2"}) == {
        "method.params.dilations": "1,2"}
    base = apply_trial(ExperimentConfig(), {"method.name": "mdc"})
    cfg = apply_trial(base, {"method.params.dilations": "1,6"})
    assert tuple(cfg.method.params["dilations"]) == (1, 6)


def test_overrides_narrow_a_knob_and_constants_are_kept():
    space = Space([Knob("method.params.steps", 1, 4, integer=True)],
                  constants={"method.name": "adversarial_erasing"},
                  overrides=[Knob("method.params.steps", 1, 2, integer=True)])
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(10):
        trial = study.ask()
        constants = space(trial)
        assert constants == {"method.name": "adversarial_erasing"}
        assert 1 <= trial.params["method.params.steps"] <= 2


def test_crf_space_gives_valid_refine_configs():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(10):
        trial = study.ask()
        Space(CRF_KNOBS)(trial)
        refine = apply_trial(ExperimentConfig(), trial.params).refine
        assert refine.bg_mode in ("threshold", "power")
        assert refine.crf_iterations >= 1 and not math.isnan(refine.crf_bilateral_srgb)


def test_the_learning_rate_is_searched_around_the_recipes_own():
    """LR spans a decade either side of the base config's lr: AdamW from scratch and SGD
    fine-tuning get ranges of their own; a relative knob cannot be searched without a base."""
    from wsss.config import load_config

    scratch = Space([LR], base=ExperimentConfig()).knobs[0]
    assert (scratch.low, scratch.high) == pytest.approx((1e-4, 1e-2))
    tuned = Space([LR], base=load_config(None, ["model.pretrained=imagenet"])).knobs[0]
    assert (tuned.low, tuned.high) == pytest.approx((1e-3, 1e-1))
    with pytest.raises(ValueError, match="relative"):
        Space([LR])(optuna.create_study().ask())
