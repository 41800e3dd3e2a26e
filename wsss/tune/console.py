"""What a sweep prints while it runs: a line per trial by default, Ray's own output with
``--verbose``.

Quiet (the default), Tune's status tables are off (``RunConfig(verbose=0)``: they came every
30 s and counted only the trial functions' reserved CPUs, ``0/2 CPUs`` while the Ray Train
workers of every trial were busy) and :class:`TrialLines` prints one line when a trial starts
and one when it ends. The driver's log records of Ray, MLflow and Optuna (Ray's warnings of slow
callbacks, MLflow's database set-up, Optuna's study creation) and Python warnings go to a log
file (:func:`log_to_file`); the worker processes' output (Ray Train's harmless resource-request
timeouts with their tracebacks, actor warnings) stays in Ray's session logs instead of being
forwarded to the terminal (``log_to_driver=False``).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from ray.tune import Callback

# The driver's loggers whose records go to the log file in quiet mode.
QUIET_LOGGERS = ("ray", "mlflow", "optuna", "alembic", "py.warnings")
_HANDLERS: dict[Path, logging.FileHandler] = {}


def log_to_file(path: Path) -> Path:
    """Send the records of :data:`QUIET_LOGGERS` (INFO and up) to ``path`` (appended) instead
    of the terminal, and Python's warnings with them; returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = _HANDLERS.get(path)
    if handler is None:  # one handler a file: called again (after ray.init), no line twice
        handler = _HANDLERS[path] = logging.FileHandler(path, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: "
                                               "%(message)s"))
    logging.captureWarnings(True)
    for name in QUIET_LOGGERS:
        logger = logging.getLogger(name)
        for old in [h for h in logger.handlers if h is not handler]:
            logger.removeHandler(old)
        if handler not in logger.handlers:
            logger.addHandler(handler)
        logger.propagate = False
        if logger.level == logging.NOTSET or logger.level > logging.INFO:
            logger.setLevel(logging.INFO)
    return path


class TrialLines(Callback):
    """One line when a trial starts (its knobs) and one when it ends (its objective, or where
    its error is), with the count of trials ended so far."""

    def __init__(self, total: int, objective: str) -> None:
        self.total, self.objective, self.ended = total, objective, 0

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        print(f"trial {trial.trial_id} started: {_knobs(trial.config)}", flush=True)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.ended += 1
        value = (trial.last_result or {}).get(self.objective, math.nan)
        print(f"trial {trial.trial_id} ended ({self.ended}/{self.total}): {self.objective}="
              f"{value:.4f}", flush=True)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.ended += 1
        print(f"trial {trial.trial_id} failed ({self.ended}/{self.total}); its error: "
              f"{Path(getattr(trial, 'local_path', None) or '.') / 'error.txt'}", flush=True)


def _knobs(config: dict[str, Any]) -> str:
    """``k=v, ...`` of a trial's sampled knobs (numbers to 4 significant digits)."""
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in sorted(config.items()) if not k.startswith("_"))
