"""`make demo`: its commands are valid, and its sweep's trials do not depend on timing."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from wsss import demo
from wsss.tune.runner import base_config, parse_options
from wsss.tune.tuner import _searcher


def _erasing_sweep():
    spec = importlib.util.spec_from_file_location("demo_erasing_sweep", demo.SWEEP_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.SWEEP


def _sweep_args(tmp_path: Path):
    argv = demo.commands(tmp_path, 64, 64, 6, 4, 2, 32)[1]
    assert argv[:2] == [sys.executable, str(demo.SWEEP_SCRIPT)]
    sweep = _erasing_sweep()
    return sweep, parse_options(sweep, argv[2:])


def test_demo_sweep_runs_a_fixed_set_of_trials_to_the_end(tmp_path: Path) -> None:
    sweep, args = _sweep_args(tmp_path)
    assert (args.search, args.scheduler, args.num_samples, args.max_concurrent) == (
        "random", "fifo", 4, 2)
    cfg = base_config(args, args.data)
    assert cfg.refine.bg_threshold == demo.BG_THRESHOLD
    assert cfg.data.crop_size == 64 and cfg.train.epochs == 6


def _trials(sweep, args, cfg, order: list[int]) -> list[dict]:
    """Four suggestions of a fresh searcher, the first two trials finishing in ``order``
    with objectives that differ by finishing order."""
    searcher = _searcher(sweep, args, cfg)
    configs = [searcher.suggest(f"t{i}") for i in range(2)]
    for rank, i in enumerate(order):
        searcher.on_trial_complete(f"t{i}", {"objective": 0.1 + 0.4 * rank})
    configs += [searcher.suggest(f"t{i}") for i in range(2, 4)]
    return configs


def test_demo_trials_do_not_depend_on_which_trial_reports_first(tmp_path: Path) -> None:
    sweep, args = _sweep_args(tmp_path)
    cfg = base_config(args, args.data)
    first, second = _trials(sweep, args, cfg, [0, 1]), _trials(sweep, args, cfg, [1, 0])
    assert first == second
    assert len({str(c) for c in first}) == 4  # four distinct trials
    # TPE, the sweeps' default, does learn from the results: its later trials move with them
    args.search = "tpe"
    args.num_samples = 6  # two random start-up trials, then TPE
    assert _trials(sweep, args, cfg, [0, 1])[2:] != _trials(sweep, args, cfg, [1, 0])[2:]
