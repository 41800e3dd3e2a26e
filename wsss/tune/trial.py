"""What one sweep trial runs: Ray Train classifier training(s) whose reports go to Tune.

With Ray Train V2 a Tune trial builds the ``TorchTrainer`` itself (``train_classifier``) and a
Train callback forwards each epoch's report to Tune. Multi-round methods (adversarial erasing)
train one Ray Train run per round; reports carry ``epoch_total`` (epochs over all rounds so far),
the monotone time attribute ASHA schedules on. Train runs are named by trial id and round, so a
retried trial resumes each round from its last checkpoint and skips rounds already done.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import ray.tune
from ray.train.v2._internal.execution.callback import WorkerGroupCallback
from ray.tune.integration.ray_train import TuneReportCallback

from wsss.config import ExperimentConfig, from_dict
from wsss.methods import get_method
from wsss.train.classifier import train_classifier
from wsss.train.reporting import MODEL_FILE, StepLog
from wsss.tune.report import (DEGENERATE_METRIC, DEGENERATE_PENALTY, MIOU, RANKED,
                              with_objective)
from wsss.tune.spaces import apply_trial
from wsss.tune.tracking import trial_run, trial_run_name

# Ray Train gives up on a worker group that is not up after 60 s by default; a loaded machine
# (or a trial waiting for another trial's CPUs) can take longer to start one worker.
WORKER_START_TIMEOUT_S = "600"
OBJECTIVE = RANKED  # what Tune ranks: pseudo_miou less the degenerate-mask penalty
TIME_ATTR = "epoch_total"
PLACEMENT_GROUP = "train_placement_group"


@dataclass(frozen=True)
class SweepContext:
    """What every trial of a sweep shares (paths are absolute; URIs reach every node)."""

    base_config: dict[str, Any]
    workdir: str  # local folder for final model files
    storage_path: str  # Ray storage (local or s3://) of the sweep
    experiment: str
    tracking_uri: str
    parent_run_id: str
    unsent_file: str | None = None  # records a dead tracking server could not take
    eval_ids: tuple[str, ...] = ()
    workers_per_trial: int = 1
    gpus_per_trial: float = 0.0
    crash_marker: str | None = None  # tests: the first report of the sweep crashes its trial
    extra: dict[str, Any] = field(default_factory=dict)
    training_data: Any = None  # the base config's TrainingData, scanned once by the driver
    fixed_knobs: tuple[str, ...] = ()  # trial config keys every trial shares (Sweep.constants)
    degenerate_penalty: float = DEGENERATE_PENALTY  # see wsss.tune.report.penalised_objective

    def base(self) -> ExperimentConfig:
        return from_dict(self.base_config)

    def run_name(self, trial_id: str, config: Mapping[str, Any]) -> str:
        """The MLflow run name of the trial with Tune config ``config``: its id and searched
        knobs (:func:`~wsss.tune.tracking.trial_run_name`; the sweep's constants left out)."""
        return trial_run_name(trial_id, {k: v for k, v in config.items()
                                         if k not in self.fixed_knobs})


class TuneForwarder(TuneReportCallback):
    """Ray Train callback: add the round, ``epoch_total`` and the ranked ``objective``
    (``pseudo_miou`` less ``degenerate_penalty`` x ``degenerate_share``,
    :func:`~wsss.tune.report.penalised_objective`) to rank 0's report, log it to the trial's
    MLflow run (step = ``epoch_total``) and hand it to Tune, each step once. The report leads
    with the objective, ``pseudo_miou``, ``degenerate_share`` and ``epoch_total``: the metrics
    Tune's status table shows.

    A report of a step the trial's run already holds (an epoch trained again after a worker
    group restart or a trial retry) is neither logged nor handed to Tune again
    (:class:`wsss.train.reporting.StepLog`).

    Reports also carry the id of the workers' placement group: when Tune stops a trial (ASHA)
    its Train controller dies with it, and the sweep driver releases that group
    (:class:`~wsss.tune.tuner.ReleaseStoppedTrials`) in case Ray's own cleaner cannot.
    Pass ``[forwarder, forwarder.recorder]`` as the run's callbacks.
    """

    def __init__(self, round_number: int, epoch_offset: int, run_id: str, tracking_uri: str,
                 crash_marker: str | None = None, unsent: str | None = None,
                 degenerate_penalty: float = DEGENERATE_PENALTY) -> None:
        super().__init__()
        self.degenerate_penalty = degenerate_penalty
        self.round_number, self.epoch_offset = round_number, epoch_offset
        self.run_id, self.tracking_uri, self.crash_marker = run_id, tracking_uri, crash_marker
        self.unsent = unsent  # the sweep's unsent file
        self.placement_group: str | None = None
        self.recorder = PlacementGroupRecorder(self)
        self._log: Any = None

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]],
                     checkpoint: Any) -> None:
        report = with_objective(metrics[0], self.degenerate_penalty)
        lead = {k: report.pop(k) for k in (RANKED, MIOU, DEGENERATE_METRIC) if k in report}
        first = {**lead, TIME_ATTR: self.epoch_offset + int(metrics[0]["epoch"]), **report,
                 "round": self.round_number}
        if self.placement_group:
            first[PLACEMENT_GROUP] = self.placement_group
        if self._log is None:  # made on the first report: a retried trial reads its steps
            self._log = StepLog(self.run_id, self.tracking_uri, TIME_ATTR, self.unsent)
        if not self._log.log(first, step=first[TIME_ATTR]):
            return
        super().after_report(run_context, [first, *metrics[1:]], checkpoint)
        _maybe_crash(self.crash_marker)


class PlacementGroupRecorder(WorkerGroupCallback):
    """Internal Ray Train callback: tell the forwarder its workers' placement group id."""

    def __init__(self, forwarder: TuneForwarder) -> None:
        self.forwarder = forwarder

    def after_worker_group_start(self, worker_group: Any) -> None:
        try:  # Ray Train internals: best effort, the id only helps release resources early
            handle = worker_group.get_worker_group_state().placement_group_handle
            self.forwarder.placement_group = handle.placement_group.id.hex()
        except AttributeError:
            self.forwarder.placement_group = None


def _maybe_crash(marker: str | None) -> None:
    """Fail once per marker file: lets tests check that a crashed trial is retried."""
    if marker is None or Path(marker).exists():
        return
    Path(marker).parent.mkdir(parents=True, exist_ok=True)
    Path(marker).write_text("crashed once\n")
    raise RuntimeError(f"injected trial crash (marker {marker})")


def train_trial(config: dict[str, Any], ctx: SweepContext) -> None:
    """Tune function trainable: train the trial's method (all its rounds) with Ray Train."""
    trial = ray.tune.get_context()
    trial_id = trial.get_trial_id()
    os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", WORKER_START_TIMEOUT_S)
    cfg = scaled(apply_trial(ctx.base(), config), ctx.workers_per_trial, ctx.gpus_per_trial)
    run_id = trial_run(ctx, trial_id, ctx.run_name(trial_id, config), cfg)
    rounds = get_method(cfg.method.name)(1, cfg.method.params).num_rounds
    out_dir = Path(ctx.workdir) / "trials" / trial_id
    previous = None
    for k in range(rounds):
        final = out_dir / f"round{k + 1}" / "model.pt"
        if final.is_file():  # a retried trial: this round finished before the crash
            previous = final
            continue
        forward = TuneForwarder(k + 1, k * cfg.train.epochs, run_id, ctx.tracking_uri,
                               ctx.crash_marker, ctx.unsent_file, ctx.degenerate_penalty)
        result = train_classifier(
            cfg, final.parent, f"{trial_id}-round{k + 1}",
            storage_path=f"{ctx.storage_path.rstrip('/')}/{ctx.experiment}-train",
            round_index=k, init_model=previous, mask_eval_ids=ctx.eval_ids,
            callbacks=[forward, forward.recorder], resources_per_worker=worker_resources(ctx),
            data=ctx.training_data)
        previous = result.checkpoint


def checkpoint_file(checkpoint_path: str | None, storage_path: str) -> str | None:
    """The ``model.pt`` in a trial's last reported Ray Train checkpoint (the ``checkpoint_path``
    Tune's report carries: the checkpoint folder on the storage's file system, without its
    scheme), as a local path or a URI on ``storage_path``'s scheme; None without one. This is
    the model as it was when the trial stopped, whether it completed or ASHA stopped it (Tune
    may end a trial at its last report, before ``train_trial`` copies the round's model)."""
    if not checkpoint_path:
        return None
    scheme, remote, _ = storage_path.partition("://")
    prefix = f"{scheme}://" if remote and scheme != "file" and "://" not in checkpoint_path else ""
    return f"{prefix}{checkpoint_path.rstrip('/')}/{MODEL_FILE}"


def scaled(cfg: ExperimentConfig, workers: int, gpus: float) -> ExperimentConfig:
    """``cfg`` trained by ``workers`` Ray Train workers, on GPUs when ``gpus`` > 0."""
    train = dataclasses.replace(cfg.train, num_workers=workers, use_gpu=gpus > 0)
    return dataclasses.replace(cfg, train=train)


def worker_resources(ctx: SweepContext) -> dict[str, float]:
    """Ray resources of each Ray Train worker of a trial: one CPU, and its share of
    ``--gpus-per-trial``."""
    resources = {"CPU": 1.0}
    if ctx.gpus_per_trial > 0:
        resources["GPU"] = ctx.gpus_per_trial / ctx.workers_per_trial
    return resources
