"""The end of a training epoch: the worker's report and checkpoint, then the MLflow record.

Every Ray Train worker reports each epoch's metrics; rank 0 hands over its checkpoint with them
(:func:`report_epoch`). MLflow hears of an epoch only from :class:`EpochRecorder`, a Ray Train
callback that runs in the Train controller after Ray Train registered the epoch's checkpoint
(Ray Train V2 calls its checkpoint manager before user callbacks). So the record never runs
ahead of the checkpoints: a worker group that restarts resumes from the last registered
checkpoint, whose epochs are all recorded, and an epoch trained again (a worker killed before
its checkpoint was registered) is recorded once, with the values of the checkpoint that counts.
:class:`StepLog` also skips steps the run already holds (a re-run of the whole
Ray Train run, a retried sweep trial). The fault point ``epoch_reported`` (:mod:`wsss.faults`)
lets tests kill a worker right after its report.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping

import mlflow
import ray.train
from ray.train import UserCallback

from wsss.errors import WsssError
from wsss.faults import fault_point
from wsss.tracking import (UNSENT_RUN_PREFIX, is_offline, is_server, log_metrics,
                           resolve_tracking_uri, unsent_file, unsent_records, worker_unsent_file)

MODEL_FILE = "model.pt"


class TrainingError(WsssError, RuntimeError):
    """A training run finished without learning anything (no optimizer step)."""


def report_epoch(history: list[dict[str, Any]], rank: int,
                 write_checkpoint: Callable[[Path], Any]) -> None:
    """Report the last epoch of ``history`` to Ray Train; rank 0 with its checkpoint.

    Args:
        history: one dict of metrics per epoch done, each with its 1-based ``epoch``.
        rank: this worker's world rank; only rank 0 writes a checkpoint.
        write_checkpoint: writes the checkpoint file at the path it is given.
    """
    metrics = history[-1]
    if rank != 0:
        ray.train.report(metrics, checkpoint=None)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            write_checkpoint(Path(tmp) / MODEL_FILE)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
    fault_point("epoch_reported", int(metrics["epoch"]))


class EpochRecorder(UserCallback):
    """Ray Train callback: log rank 0's metrics of each epoch to an MLflow run, once per
    epoch (step = ``epoch``), after Ray Train registered the epoch's checkpoint.

    Args:
        run_id / tracking_uri: the MLflow run and its store.
        unsent: the run's unsent-records file (:func:`wsss.tracking.unsent_file`); the
            controller runs on the driver's node, so a local path works.
    """

    def __init__(self, run_id: str, tracking_uri: str | None, unsent: str | None) -> None:
        self.run_id, self.tracking_uri, self.unsent = run_id, tracking_uri, unsent
        self._log: Any = None

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]],
                     checkpoint: Any) -> None:
        if self._log is None:  # made in the controller: reads the epochs the run holds
            self._log = StepLog(self.run_id, self.tracking_uri, "epoch", self.unsent)
        self._log.log(metrics[0], step=int(metrics[0]["epoch"]))


class StepLog:
    """Per-step metrics of one MLflow run, each step logged once (a re-sent step is skipped).

    A Ray Train worker group that restarts from its last checkpoint trains (and reports) again
    the epochs after it; a Tune trial that is retried does the same. The steps the run already
    holds, in the store or in its unsent-records file, are read once when the log is made, so a
    restarted process does not log them again.

    Args:
        run_id / uri: the MLflow run and its store.
        key: a metric logged at every step (its history tells the steps already logged).
        unsent: the run's unsent-records file (see :func:`log_metrics`).
    """

    def __init__(self, run_id: str, uri: str | None, key: str,
                 unsent: str | Path | None = None) -> None:
        self.run_id, self.uri, self.unsent = run_id, resolve_tracking_uri(uri), unsent
        self.steps = logged_steps(run_id, key, self.uri, unsent)

    def log(self, metrics: Mapping[str, Any], step: int) -> bool:
        """Log ``metrics`` at ``step`` unless the run holds that step; True when logged."""
        if step in self.steps:
            return False
        log_metrics(metrics, step=step, run_id=self.run_id, uri=self.uri, unsent=self.unsent)
        self.steps.add(step)
        return True


def logged_steps(run_id: str, key: str, uri: str | None = None,
                 unsent: str | Path | None = None) -> set[int]:
    """Steps at which run ``run_id`` holds metric ``key``: in the store at ``uri`` and in its
    unsent-records file (a server that does not answer contributes nothing)."""
    uri = resolve_tracking_uri(uri)
    steps: set[int] = set()
    if not run_id.startswith(UNSENT_RUN_PREFIX) and not is_offline(uri):
        try:
            history = mlflow.MlflowClient(uri).get_metric_history(run_id, key)
            steps.update(m.step for m in history)
        except Exception:  # noqa: BLE001  (a server gone: its steps are unknown here)
            if not is_server(uri):
                raise
    for record in unsent_records(unsent or unsent_file(run_id), run_id):
        if (record.get("kind") == "metrics" and key in record.get("values", {})
                and record.get("step") is not None):
            steps.add(int(record["step"]))
    return steps


def epoch_callbacks(mlflow_run_id: str | None, tracking_uri: str | None) -> list[UserCallback]:
    """The Ray Train callbacks that record a run's epochs in MLflow ([] without a run)."""
    if not mlflow_run_id:
        return []
    return [EpochRecorder(mlflow_run_id, tracking_uri, worker_unsent_file(mlflow_run_id))]


def check_optimizer_steps(last_metrics: dict[str, Any] | None, what: str) -> None:
    """TrainingError unless the last epoch reported (``last_metrics``, from
    ``ray.train.Result.metrics``) took at least one optimizer step.

    The loops stop at the first epoch without a step (nothing to learn from: every batch
    without a labelled pixel), so its metrics are the last ones reported. Metrics without
    ``optimizer_steps`` (checkpoints of older versions) are not checked.
    """
    steps = (last_metrics or {}).get("optimizer_steps")
    if steps is not None and int(steps) == 0:
        raise TrainingError(f"{what} took no optimizer step in epoch "
                            f"{last_metrics.get('epoch')}: no training batch gave a loss to "
                            f"learn from, so no model was written")
