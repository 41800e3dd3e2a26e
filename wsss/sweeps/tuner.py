"""Run a :class:`~wsss.sweeps.runner.Sweep`: build (or restore) the Tuner, fit, record results."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from wsss.sweeps.runner import (CRASH_ENV, Sweep, base_config, dataset_root, parse_options,
                                select_train_eval_ids)
from ray.tune import Callback

from wsss.sweeps.trial import OBJECTIVE, PLACEMENT_GROUP, SweepContext


def main(sweep: Sweep, argv: Sequence[str] | None = None, description: str | None = None) -> int:
    """Entry point of a sweep script: parse options, run the sweep, print the best trial."""
    from wsss.storage import OutputError
    from wsss.tracking import TrackingError

    args = parse_options(sweep, argv, description)
    try:
        best = run_sweep(sweep, args)
    except (OutputError, TrackingError) as err:
        print(f"{sweep.name} sweep: error: {err}", file=sys.stderr)
        return 2
    return 0 if best is not None else 1


def run_sweep(sweep: Sweep, args: argparse.Namespace) -> dict[str, Any] | None:
    """Run (or resume) the sweep; returns the best trial's row (None if no trial scored).

    ``args`` come from :func:`~wsss.sweeps.runner.parse_options` (absolute paths)."""
    from wsss import tracking
    from wsss.ray_utils import init_ray
    from wsss.sweeps.tracking import sweep_run

    from wsss.storage import check_writable

    start = time.perf_counter()
    # Before any compute: a tracking server that answers, folders that can be written.
    uri = tracking.check_tracking_uri(args.tracking_uri)
    storage = args.storage_path or str(Path(args.workdir) / "ray")
    check_writable(args.workdir, "--workdir folder")
    check_writable(storage, "--storage-path folder")
    init_ray(args.address)
    workdir = Path(args.workdir) / args.experiment  # absolute: see parse_options
    data = dataset_root(args, Path(args.workdir))
    cfg = base_config(args, data)
    tracking.ensure_experiment(args.experiment, uri)
    parent = sweep_run(uri, args.experiment, args.experiment, _sweep_params(args, cfg),
                       args.resume)
    ctx = SweepContext(base_config=cfg.to_dict(), workdir=str(workdir), storage_path=storage,
                       experiment=args.experiment, tracking_uri=uri, parent_run_id=parent,
                       eval_ids=tuple(select_train_eval_ids(cfg, args.eval_images, args.seed)),
                       workers_per_trial=args.workers_per_trial,
                       gpus_per_trial=args.gpus_per_trial,
                       crash_marker=os.environ.get(CRASH_ENV),
                       extra=sweep.prepare(args, cfg, workdir))
    results = make_tuner(sweep, args, ctx, cfg).fit()
    best = record_results(sweep, ctx, cfg, results)
    _print_summary(args, uri, parent, best, time.perf_counter() - start)
    return best


def make_tuner(sweep: Sweep, args: argparse.Namespace, ctx: SweepContext, cfg: Any) -> Any:
    """A new Tuner, or the interrupted one restored from storage under ``--resume``."""
    from ray import tune

    trainable = tune.with_resources(tune.with_parameters(sweep.trainable, ctx=ctx),
                                    sweep.resources(args))
    path = f"{ctx.storage_path.rstrip('/')}/{args.experiment}"
    if args.resume and tune.Tuner.can_restore(path):
        print(f"resuming sweep from {path}", flush=True)
        return tune.Tuner.restore(path, trainable, resume_errored=True)
    tune_config = tune.TuneConfig(metric=OBJECTIVE, mode="max", num_samples=args.num_samples,
                                  search_alg=_searcher(sweep, args),
                                  scheduler=_scheduler(sweep, args, cfg))
    run_config = tune.RunConfig(name=args.experiment, storage_path=ctx.storage_path,
                                failure_config=tune.FailureConfig(max_failures=2),
                                callbacks=[ReleaseStoppedTrials()])
    return tune.Tuner(trainable, tune_config=tune_config, run_config=run_config)


class ReleaseStoppedTrials(Callback):
    """Release the Ray Train workers' placement group of a trial that ended or was stopped.

    A trial stopped by ASHA takes its Train controller down before the controller can free its
    workers' resources; Ray normally frees them with a cleaner actor, which cannot find its
    cluster when several Ray instances share a machine. Removing an already removed group is a
    no-op, so this is safe either way.
    """

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        _release(trial)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        _release(trial)

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        _release(trial)


def _release(trial: Any) -> None:
    from ray._raylet import PlacementGroupID
    from ray.util import placement_group_table
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    pg_id = (trial.last_result or {}).get(PLACEMENT_GROUP)
    if not pg_id:
        return
    state = placement_group_table().get(pg_id, {}).get("state")
    if state in ("CREATED", "PENDING", "RESCHEDULING"):
        remove_placement_group(PlacementGroup(PlacementGroupID(bytes.fromhex(pg_id))))


def _searcher(sweep: Sweep, args: argparse.Namespace) -> Any:
    import optuna
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    if args.search == "random":
        sampler = optuna.samplers.RandomSampler(seed=args.seed)
    else:
        startup = max(2, min(10, args.num_samples // 3))
        sampler = optuna.samplers.TPESampler(seed=args.seed, n_startup_trials=startup)
    search = OptunaSearch(space=sweep.space(args.smoke_test), metric=OBJECTIVE, mode="max",
                          sampler=sampler)
    return ConcurrencyLimiter(search, max_concurrent=args.max_concurrent)


def _scheduler(sweep: Sweep, args: argparse.Namespace, cfg: Any) -> Any:
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if args.scheduler == "fifo":
        return FIFOScheduler()
    return ASHAScheduler(time_attr=sweep.time_attr, max_t=max(sweep.max_t(cfg), 1),
                         grace_period=1, reduction_factor=2 if args.smoke_test else 3)


def record_results(sweep: Sweep, ctx: SweepContext, cfg: Any, results: Any) -> dict | None:
    """Close every trial's MLflow run (objective, status, pictures); summarise on the parent."""
    from wsss.sweeps.report import close_trial_run, summarize_sweep, trial_row
    from wsss.sweeps.tracking import trial_runs

    runs = trial_runs(ctx.tracking_uri, ctx.experiment, ctx.parent_run_id)
    rows = []
    for result in results:
        row = trial_row(result, lambda c: sweep.full_length(cfg, c), sweep.time_attr, OBJECTIVE)
        rows.append(row)
        run = runs.get(row["trial_id"])
        if run is not None and "wsss.status" not in run.data.tags:
            close_trial_run(ctx.tracking_uri, run.info.run_id, row, sweep.time_attr,
                            _trial_samples(sweep, ctx, cfg, row))
    return summarize_sweep(ctx.tracking_uri, ctx.parent_run_id, rows, sweep.time_attr)


def _trial_samples(sweep: Sweep, ctx: SweepContext, cfg: Any,
                   row: dict[str, Any]) -> list[Path]:
    """The trial's pictures; a failure is reported, never allowed to lose the summary."""
    try:
        return sweep.samples(ctx, cfg, row, Path(ctx.workdir) / "samples" / row["trial_id"])
    except Exception as err:  # noqa: BLE001
        print(f"warning: no samples for trial {row['trial_id']}: {err}", file=sys.stderr)
        return []


def _sweep_params(args: argparse.Namespace, cfg: Any) -> dict[str, Any]:
    keys = ("num_samples", "max_concurrent", "gpus_per_trial", "workers_per_trial", "search",
            "scheduler", "seed", "smoke_test", "eval_images")
    return {"sweep": {k: getattr(args, k) for k in keys}, **cfg.to_dict()}


def _print_summary(args: argparse.Namespace, uri: str, parent: str, best: dict | None,
                   seconds: float) -> None:
    if best is None:
        print(f"\nsweep '{args.experiment}' finished in {seconds:.0f}s with no scored trial")
        return
    knobs = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                      for k, v in best["knobs"].items())
    print(f"\nsweep '{args.experiment}' finished in {seconds:.0f}s; best trial "
          f"{best['trial_id']}: {OBJECTIVE}={best['objective']:.4f} ({knobs})\n"
          f"MLflow: parent run {parent} in experiment '{args.experiment}' at {uri}\n"
          f"  wsss compare --experiment {args.experiment}"
          + (f" --tracking-uri {uri}" if args.tracking_uri else "") + "\n"
          f"  mlflow ui --backend-store-uri {uri}")
