"""Run a :class:`~wsss.tune.runner.Sweep`: build (or restore) the Tuner, fit, record results."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import optuna
from ray import tune
from ray._raylet import PlacementGroupID
from ray.tune import Callback
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch
from ray.util import placement_group_table
from ray.util.placement_group import PlacementGroup, remove_placement_group

from wsss import tracking
from wsss.commands import command_line
from wsss.config import ConfigError, ExperimentConfig
from wsss.data.errors import DatasetError
from wsss.names import InvalidNameError, check_name, sweep_experiment_problem
from wsss.ray_utils import init_ray, verbose
from wsss.storage import OutputError, check_writable
from wsss.tracking import TrackingError, check_tracking_uri, env_restored, unsent_records
from wsss.train.checkpoint import CheckpointError
from wsss.train.classifier import scan_training_data
from wsss.tune.report import (close_trial_run, degenerate_warning, end_sweep_run, next_steps,
                              objective_line, run_status, smoke_note, summarize_sweep, trial_row)
from wsss.tune.view import runs_view, share_trials_view
from wsss.tune.console import TrialLines, log_to_file
from wsss.tune.prune import keep_best_model
from wsss.tune.runner import (CRASH_ENV, Sweep, base_config, dataset_root, parse_options,
                              select_train_eval_ids)
from wsss.tune.spaces import check_space
from wsss.tune.tracking import ROLE, SWEEP, find_runs, mlflow_client, sweep_run
from wsss.tune.trial import OBJECTIVE, PLACEMENT_GROUP, SweepContext, checkpoint_file

LOG_FILE = "sweep.log"  # WORKDIR/<experiment>/sweep.log: the driver's Ray, MLflow, Optuna lines
STORAGE_TAG = "wsss.storage_path"  # the parent run's Tune experiment folder (or URI)
TUNE_SIGINT_ENV = "TUNE_DISABLE_SIGINT_HANDLER"


def main(sweep: Sweep, argv: Sequence[str] | None = None, description: str | None = None) -> int:
    """Entry point of a sweep script: parse options, run the sweep, print the best trial.

    Returns 0 when a trial scored, 1 when none did, 2 when an option, the tracking store or a
    folder is unusable (before any compute), and 128 + the signal number when Ctrl+C (SIGINT)
    or SIGTERM stopped it (its MLflow runs are then closed as KILLED; ``--resume`` continues).
    """
    args = parse_options(sweep, argv, description)
    try:
        best = run_sweep(sweep, args)
    except (CheckpointError, ConfigError, DatasetError, InvalidNameError, OutputError,
            ResumeError, TrackingError) as err:
        print(f"{sweep.name} sweep: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ray may raise a KeyboardInterrupt of its own on the way out
        signum = _stop_signals[-1] if _stop_signals else signal.SIGINT
        print(f"{sweep.name} sweep: stopped by {signal.Signals(signum).name}; open MLflow runs "
              f"closed as KILLED; continue it with --resume", file=sys.stderr)
        return 128 + signum
    return 0 if best is not None else 1


class ResumeError(ValueError):
    """``--resume`` names another folder than the one the sweep keeps its state in."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl+C's KeyboardInterrupt so the sweep ends its runs as KILLED."""


_stop_signals: list[int] = []  # SIGTERMs received by the running sweep (for the exit status)


@contextlib.contextmanager
def _signals_interrupt() -> Iterator[None]:
    """SIGTERM raises :class:`Terminated` (Ray's handler would end the process at once), and
    Ctrl+C raises KeyboardInterrupt during ``Tuner.fit`` too (Tune's own handler would end the
    fit as if it were done), so both reach :func:`run_sweep`'s clean-up; the previous handler
    and environment come back on exit."""
    def terminate(signum: int, frame: Any) -> None:
        _stop_signals.append(signum)
        raise Terminated()

    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set in the main thread
        return

    _stop_signals.clear()
    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        with env_restored(TUNE_SIGINT_ENV, "1"):
            yield
    finally:  # None: a handler not set from Python (Ray's C++ one); the default then
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def run_sweep(sweep: Sweep, args: argparse.Namespace) -> dict[str, Any] | None:
    """Run (or resume) the sweep; returns the best trial's row (None if no trial scored).

    ``args`` come from :func:`~wsss.tune.runner.parse_options` (absolute paths). Raises
    OutputError, TrackingError or ResumeError before any compute. Whatever is raised once the
    parent run exists (KeyboardInterrupt, and SIGTERM as :class:`Terminated`, included) first
    ends it, FAILED (KILLED when interrupted), with its trial runs still open
    (:func:`~wsss.tune.report.end_sweep_run`).
    """
    start = time.perf_counter()
    # Before any compute: names that fit, a tracking server that answers, folders that can be
    # written, a search space of valid configs, a dataset whose training split can be read
    # (scanned once for every trial).
    check_name(args.experiment, "--experiment", sweep_experiment_problem,
               "a sweep's experiment is also its Tune run name and a folder under --workdir "
               "and --storage-path")
    uri, storage = check_before_compute(args)
    cfg = base_config(args, dataset_root(args, Path(args.workdir)))
    check_space(sweep.space(args.smoke_test, cfg), cfg)  # every proposal is a valid config
    training_data = scan_training_data(cfg)
    workdir = Path(args.workdir) / args.experiment
    log = None if verbose() else log_to_file(workdir / LOG_FILE)  # Ray's set-up lines too
    init_ray(args.address, log_to_driver=verbose())
    if log is not None:
        log_to_file(log)  # ray.init gave Ray's logger a console handler again
    unsent = workdir / tracking.UNSENT_FILE
    with _signals_interrupt():  # after ray.init, which sets its own SIGTERM handler
        experiment_id = tracking.ensure_experiment(args.experiment, uri)
        parent = sweep_run(uri, args.experiment, args.experiment, cfg.to_dict(), args.resume,
                           _sweep_options(args))
        outcomes: dict[str, str] = {}  # trial id -> MLflow status, once Tune's results are in
        with _ended_on_failure(uri, args.experiment, parent, outcomes, unsent):
            mlflow_client(uri).set_tag(parent, STORAGE_TAG, tune_path(storage, args.experiment))
            ctx = SweepContext(
                base_config=cfg.to_dict(), workdir=str(workdir), storage_path=storage,
                experiment=args.experiment, tracking_uri=uri, parent_run_id=parent,
                unsent_file=str(unsent),
                eval_ids=tuple(select_train_eval_ids(cfg, args.eval_images, args.seed)),
                workers_per_trial=args.workers_per_trial, gpus_per_trial=args.gpus_per_trial,
                crash_marker=os.environ.get(CRASH_ENV), training_data=training_data,
                fixed_knobs=tuple(sweep.constants), degenerate_penalty=args.degenerate_penalty,
                extra=sweep.prepare(args, cfg, workdir))
            results = make_tuner(sweep, args, ctx, cfg).fit()
            rows = [trial_row(r, lambda c: sweep.full_length(cfg, c), sweep.time_attr,
                              OBJECTIVE) for r in results]
            outcomes.update({row["trial_id"]: run_status(row) for row in rows})
            best = record_results(sweep, ctx, cfg, rows)
            pruned = keep_best_model(rows, best, workdir, storage, args.experiment)
    share = _shared_view(uri, experiment_id, parent, rows)
    disk = pruned.line() + (f"logs: {log} (Ray's own lines; --verbose prints them)\n"
                            if log is not None else "")
    _print_summary(args, uri, parent, best, time.perf_counter() - start, unsent,
                   str(cfg.data.root), experiment_id, disk, share)
    return best


def _shared_view(uri: str, experiment_id: str, parent: str,
                 rows: list[dict[str, Any]]) -> str | None:
    """The key of the UI view of the sweep's trials (``wsss.tune.view``); None when the
    tracking store did not take it (the link then opens the plain runs table)."""
    knobs = sorted({k for row in rows for k in row["knobs"]})
    try:
        return share_trials_view(uri, experiment_id, parent, knobs, OBJECTIVE)
    except Exception as err:  # noqa: BLE001 - a link is never worth losing the summary
        print(f"warning: could not store the trials view in MLflow: {err}", file=sys.stderr)
        return None


def check_before_compute(args: argparse.Namespace) -> tuple[str, str]:
    """(tracking URI, Ray storage path) once the tracking server answers, ``--workdir`` and
    ``--storage-path`` can be written and a ``--resume`` looks where the sweep keeps its state.

    Raises TrackingError, OutputError or ResumeError naming the URI, folder or option.
    """
    uri = check_tracking_uri(args.tracking_uri)
    storage = args.storage_path or str(Path(args.workdir) / "ray")
    check_writable(args.workdir, "--workdir folder")
    check_writable(storage, "--storage-path folder")
    if args.resume:
        _check_resume(uri, args.experiment, tune_path(storage, args.experiment))
    return uri, storage


def tune_path(storage: str, experiment: str) -> str:
    """The folder (or URI) of the sweep's Tune experiment in Ray storage."""
    return f"{storage.rstrip('/')}/{experiment}"


def _check_resume(uri: str, experiment: str, path: str) -> None:
    """ResumeError when ``path`` holds no Tune state but the sweep's parent run recorded
    another folder (a relative ``--storage-path`` or ``--workdir`` given from another folder)."""
    if tune.Tuner.can_restore(path):
        return
    runs = find_runs(uri, experiment, {ROLE: "sweep", SWEEP: experiment})
    recorded = runs[0].data.tags.get(STORAGE_TAG) if runs else None
    if recorded and recorded != path:
        raise ResumeError(
            f"--resume: sweep '{experiment}' keeps its state in {recorded}, not in {path}; "
            f"relative paths are taken from the working directory: run from the folder the "
            f"sweep started in, or pass --storage-path {recorded.rsplit('/', 1)[0]}")
    print(f"--resume: no interrupted sweep at {path}; starting it anew", flush=True)


@contextlib.contextmanager
def _ended_on_failure(uri: str, experiment: str, parent: str, outcomes: dict[str, str],
                      unsent: Path) -> Iterator[None]:
    """End the sweep's MLflow runs when the body raises (KILLED if interrupted, else FAILED),
    then raise on; a failure to end them is printed, never hides the first error."""
    try:
        yield
    except BaseException as err:
        status = "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED"
        try:
            end_sweep_run(uri, experiment, parent, status, outcomes, unsent)
        except Exception as close_err:  # noqa: BLE001
            print(f"warning: could not close MLflow run {parent} as {status}: {close_err}",
                  file=sys.stderr)
        raise


def make_tuner(sweep: Sweep, args: argparse.Namespace, ctx: SweepContext,
               cfg: ExperimentConfig) -> tune.Tuner:
    """A new Tuner, or the interrupted one restored from storage under ``--resume``."""
    trainable = tune.with_resources(tune.with_parameters(sweep.trainable, ctx=ctx),
                                    sweep.resources(args))
    path = tune_path(ctx.storage_path, args.experiment)
    if args.resume and tune.Tuner.can_restore(path):
        print(f"resuming sweep from {path}", flush=True)
        return tune.Tuner.restore(path, trainable, resume_errored=True)
    tune_config = tune.TuneConfig(metric=OBJECTIVE, mode="max", num_samples=args.num_samples,
                                  search_alg=_searcher(sweep, args, cfg),
                                  scheduler=_scheduler(sweep, args, cfg))
    run_config = tune.RunConfig(name=args.experiment, storage_path=ctx.storage_path,
                                failure_config=tune.FailureConfig(max_failures=2),
                                callbacks=[ReleaseStoppedTrials(),
                                           *([] if verbose() else
                                             [TrialLines(args.num_samples, OBJECTIVE)])],
                                verbose=2 if verbose() else 0)
    return tune.Tuner(trainable, tune_config=tune_config, run_config=run_config)


class ReleaseStoppedTrials(Callback):
    """Release the Ray Train workers' placement group of a trial that ended or was stopped.

    A trial stopped by ASHA takes its Train controller down before the controller can free its
    workers' resources; Ray normally frees them with a cleaner actor, which needs the state API
    of the dashboard (a cluster started without one, as the tests do, has none). Removing an
    already removed group is a no-op, so this is safe either way.
    """

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        _release(trial)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        _release(trial)

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        _release(trial)


def _release(trial: Any) -> None:
    pg_id = (trial.last_result or {}).get(PLACEMENT_GROUP)
    if not pg_id:
        return
    state = placement_group_table().get(pg_id, {}).get("state")
    if state in ("CREATED", "PENDING", "RESCHEDULING"):
        remove_placement_group(PlacementGroup(PlacementGroupID(bytes.fromhex(pg_id))))


def _searcher(sweep: Sweep, args: argparse.Namespace, cfg: Any) -> Any:
    if args.search == "random":
        sampler = optuna.samplers.RandomSampler(seed=args.seed)
    else:
        startup = max(2, min(10, args.num_samples // 3))
        sampler = optuna.samplers.TPESampler(seed=args.seed, n_startup_trials=startup)
    search = OptunaSearch(space=sweep.space(args.smoke_test, cfg), metric=OBJECTIVE, mode="max",
                          sampler=sampler)
    return ConcurrencyLimiter(search, max_concurrent=args.max_concurrent)


def _scheduler(sweep: Sweep, args: argparse.Namespace, cfg: Any) -> Any:
    if args.scheduler == "fifo":
        return FIFOScheduler()
    return ASHAScheduler(time_attr=sweep.time_attr, max_t=max(sweep.max_t(cfg), 1),
                         grace_period=1, reduction_factor=2 if args.smoke_test else 3)


def record_results(sweep: Sweep, ctx: SweepContext, cfg: Any,
                   rows: list[dict[str, Any]]) -> dict | None:
    """Close every trial's MLflow run (objective, status, pictures); summarise on the parent
    (tables and plots also in ``WORKDIR/summary``). Returns the best row."""
    for row in rows:
        row["checkpoint"] = checkpoint_file(row.get("checkpoint_path"), ctx.storage_path)
        folder = Path(ctx.workdir) / "samples" / row["trial_id"]
        close_trial_run(ctx.tracking_uri, ctx.experiment, ctx.parent_run_id, row,
                        sweep.time_attr, lambda: _trial_samples(sweep, ctx, cfg, row, folder),
                        folder, ctx.unsent_file)
    return summarize_sweep(ctx.tracking_uri, ctx.parent_run_id, rows, sweep.time_attr,
                           Path(ctx.workdir) / "summary", ctx.unsent_file, OBJECTIVE)


def _trial_samples(sweep: Sweep, ctx: SweepContext, cfg: Any, row: dict[str, Any],
                   out_dir: Path) -> list[Path]:
    """The trial's pictures; a failure is reported, never allowed to lose the summary."""
    try:
        return sweep.samples(ctx, cfg, row, out_dir)
    except Exception as err:  # noqa: BLE001
        print(f"warning: no samples for trial {row['trial_id']}: {err}", file=sys.stderr)
        return []


def _sweep_options(args: argparse.Namespace) -> dict[str, Any]:
    """The options the parent run records as ``sweep.<option>`` params."""
    keys = ("num_samples", "max_concurrent", "gpus_per_trial", "workers_per_trial", "search",
            "scheduler", "seed", "smoke_test", "eval_images", "degenerate_penalty")
    return {k: getattr(args, k) for k in keys}


def _print_summary(args: argparse.Namespace, uri: str, parent: str, best: dict | None,
                   seconds: float, unsent: Path, data: str, experiment_id: str,
                   disk: str = "", share_key: str | None = None) -> None:
    kept = len(unsent_records(unsent))
    if kept:
        print(f"warning: MLflow at {uri} did not answer during sweep '{args.experiment}'; "
              f"{kept} record(s) kept in {unsent}", file=sys.stderr)
    if best is None:
        print(f"\nsweep '{args.experiment}' finished in {seconds:.0f}s with no scored trial\n"
              + disk, end="")
        return
    knobs = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                      for k, v in best["knobs"].items())
    print(f"\nsweep '{args.experiment}' finished in {seconds:.0f}s; best trial "
          f"{best['trial_id']} ({best['status']}): {OBJECTIVE}={best['objective']:.4f} "
          f"({knobs})\n" + objective_line(best, args.degenerate_penalty)
          + degenerate_warning(best) + smoke_note(args.smoke_test)
          + next_steps(best.get("checkpoint"), data, args.experiment) + disk
          + f"MLflow: parent run {parent} in experiment '{args.experiment}' at {uri}\n"
          + "  " + command_line("wsss", "compare", "--experiment", args.experiment,
                                *(["--tracking-uri", uri] if args.tracking_uri else [])) + "\n"
          + runs_view(uri, experiment_id, share_key)
          + (f"\nMLflow did not answer: {kept} record(s) kept in {unsent}" if kept else ""))
