"""MLflow for sweeps: one parent run per sweep, one nested child run per trial.

Runs are found again by tags (``wsss.sweep``, ``wsss.role`` = ``sweep`` | ``trial``,
``wsss.trial_id``), so a resumed sweep or a retried trial keeps logging into the same runs.
The parent's params are the base config every trial starts from, as ``base.<key>``
(``base.train.lr``), and the sweep's options, as ``sweep.<option>``; a trial's run holds its
own whole config unprefixed (``train.lr``) and is named by its id and knobs
(:func:`trial_run_name`, e.g. ``trial-1a2b3c4d-hide_prob=0.314,grid_size=8,lr=0.00123``).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import mlflow
from mlflow.entities import Run

from wsss.config import ExperimentConfig
from wsss.names import filter_literal, run_name_limit
from wsss.tracking import (UNSENT_RUN_PREFIX, ensure_experiment, flatten_params, log_params,
                           send_or_keep)

ROLE, SWEEP, TRIAL_ID = "wsss.role", "wsss.sweep", "wsss.trial_id"
BASE, OPTIONS = "base", "sweep"  # the parent run's param prefixes: base config, sweep options
NAME_DIGITS = 3  # significant digits of a knob value in a trial run's name


def mlflow_client(uri: str) -> mlflow.MlflowClient:
    """An MLflow client of the store at ``uri``."""
    return mlflow.MlflowClient(uri)


def find_runs(uri: str, experiment: str, filters: Mapping[str, str]) -> list[Run]:
    """Runs of ``experiment`` whose tags equal ``filters`` exactly, newest first ([] if none).

    Each value goes into the search filter as a quoted literal (``wsss.names.filter_literal``)
    when one can hold it; every run found is then compared in Python too, so a value no
    literal can express (both quotes) and stores that compare text loosely (MySQL ignores case
    and trailing spaces) cannot widen or change the match.
    """
    client = mlflow_client(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    clauses = [f"tags.`{key}` = {filter_literal(value)}" for key, value in filters.items()
               if filter_literal(value) is not None]
    runs = client.search_runs([exp.experiment_id], " and ".join(clauses),
                              order_by=["attributes.start_time DESC"], max_results=10000)
    return [run for run in runs
            if all(run.data.tags.get(key) == value for key, value in filters.items())]


def sweep_run(uri: str, experiment: str, sweep_name: str, base_config: Mapping[str, Any],
              resume: bool, options: Mapping[str, Any] | None = None) -> str:
    """Id of the sweep's parent run: the newest one when resuming, else a new one, whose params
    are ``base_config`` (nested) as ``base.<key>`` and ``options`` as ``sweep.<option>``."""
    if resume:
        runs = find_runs(uri, experiment, {ROLE: "sweep", SWEEP: sweep_name})
        if runs:
            mlflow_client(uri).update_run(runs[0].info.run_id, status="RUNNING")
            return runs[0].info.run_id
    client = mlflow_client(uri)
    run = client.create_run(ensure_experiment(experiment, uri), run_name=sweep_name,
                            tags={ROLE: "sweep", SWEEP: sweep_name, "stage": "sweep"})
    params = {OPTIONS: dict(options)} if options else {}
    log_params({**params, BASE: dict(base_config)}, run_id=run.info.run_id, uri=uri)
    return run.info.run_id


def base_param(key: str) -> str:
    """The parent run's param of base config key ``key`` (``data.root`` -> ``base.data.root``)."""
    return f"{BASE}.{key}"


def trial_run_name(trial_id: str, knobs: Mapping[str, Any]) -> str:
    """A trial's run name: ``trial-<trial id>-<knob>=<value>,...``.

    A knob is shown by the last dotted part of its key (``method.params.hide_prob`` ->
    ``hide_prob``; the part after ``:`` of a method-prefixed key), or by its whole key where
    two knobs share that part; floats to :data:`NAME_DIGITS` significant digits; commas inside
    a value (MDC's rate sets ``1,3,6``) as ``/``; keys starting with ``_`` left out. Knobs
    that would take the name over MLflow's run-name limit (:func:`wsss.names.run_name_limit`)
    are left out and ``...`` ends the name. The trial id is unique in its sweep, so two trials
    never share a name.
    """
    keys = [k for k in knobs if not k.startswith("_")]
    full = {k: k.rpartition(":")[2] for k in keys}
    last = {k: full[k].rpartition(".")[2] for k in keys}
    shared = {part for part in last.values() if list(last.values()).count(part) > 1}
    items = [f"{full[k] if last[k] in shared else last[k]}={_name_value(knobs[k])}"
             for k in keys]
    limit, more = run_name_limit(), "..."
    name = f"trial-{trial_id}"
    for i, item in enumerate(items):
        candidate = f"{name}{'-' if i == 0 else ','}{item}"
        room = limit - (len(more) + 1 if i < len(items) - 1 else 0)
        if len(candidate) > room:
            return f"{name}{'-' if i == 0 else ','}{more}"[:limit]
        name = candidate
    return name[:limit]


def _name_value(value: Any) -> str:
    """A knob value as a trial run's name shows it."""
    if isinstance(value, float) and math.isfinite(value):
        return f"{value:.{NAME_DIGITS}g}"
    if isinstance(value, (list, tuple)):
        return "/".join(_name_value(v) for v in value)
    return str(value).replace(",", "/")


def unsent_run_id(trial_id: str) -> str:
    """Stand-in run id of a trial whose child run the tracking server could not create: the
    trial's records are kept under it in the sweep's unsent file."""
    return f"{UNSENT_RUN_PREFIX}trial-{trial_id}"


def trial_filters(experiment: str, parent_run_id: str, trial_id: str) -> dict[str, str]:
    """The tags that name one trial's child run."""
    return {ROLE: "trial", SWEEP: experiment, TRIAL_ID: trial_id,
            "mlflow.parentRunId": parent_run_id}


def trial_run(ctx: Any, trial_id: str, trial_name: str, cfg: ExperimentConfig) -> str:
    """Id of the trial's child run (created on the trial's first start, reopened on retries).

    A tracking server that does not answer: the run's tags and params are kept as one
    ``create_run`` record in the sweep's unsent file (``ctx.unsent_file``), and the stand-in
    :func:`unsent_run_id` is returned, under which the trial's later records are kept too.
    """
    tags = {**trial_filters(ctx.experiment, ctx.parent_run_id, trial_id), "stage": "sweep-trial"}
    params = flatten_params(cfg.to_dict())
    opened: dict[str, Any] = {}
    record = {"kind": "create_run", "run_id": unsent_run_id(trial_id), "trial_id": trial_id,
              "experiment": ctx.experiment, "run_name": trial_name, "tags": tags,
              "params": params}
    if send_or_keep(ctx.tracking_uri, None, record,
                lambda: opened.update(_open_trial_run(ctx, trial_id, trial_name, tags)),
                ctx.unsent_file):
        return unsent_run_id(trial_id)
    if opened["created"]:
        log_params(cfg.to_dict(), run_id=opened["run_id"], uri=ctx.tracking_uri,
                   unsent=ctx.unsent_file)
    return opened["run_id"]


def _open_trial_run(ctx: Any, trial_id: str, trial_name: str,
                    tags: Mapping[str, str]) -> dict[str, Any]:
    """{"run_id", "created"}: the trial's run, found again (a retry: reopened) or created.

    A sweep stopped while this trial was starting ends its parent run, then the open child
    runs (``wsss.tune.report.end_sweep_run``); a run opened here after that is ended
    KILLED here, once the parent is seen ended, so it is never left RUNNING.
    """
    found = find_trial_run(ctx.tracking_uri, ctx.experiment, ctx.parent_run_id, trial_id)
    client = mlflow_client(ctx.tracking_uri)
    if found is not None:
        run_id, created = found.info.run_id, False
        client.set_tag(run_id, "wsss.retried", "true")
        client.update_run(run_id, status="RUNNING")  # closed as KILLED by an interrupted sweep
    else:
        run = client.create_run(ensure_experiment(ctx.experiment, ctx.tracking_uri),
                                run_name=trial_name, tags=dict(tags))
        run_id, created = run.info.run_id, True
    if client.get_run(ctx.parent_run_id).info.status != "RUNNING":  # the sweep has ended
        client.set_terminated(run_id, status="KILLED")
    return {"run_id": run_id, "created": created}


def find_trial_run(uri: str, experiment: str, parent_run_id: str,
                   trial_id: str) -> Run | None:
    """The trial's child run (None if the store has none)."""
    runs = find_runs(uri, experiment, trial_filters(experiment, parent_run_id, trial_id))
    return runs[0] if runs else None


def trial_runs(uri: str, experiment: str, parent_run_id: str) -> dict[str, Run]:
    """The child runs of a sweep by trial id."""
    runs = find_runs(uri, experiment, {ROLE: "trial", "mlflow.parentRunId": parent_run_id})
    return {run.data.tags[TRIAL_ID]: run for run in reversed(runs)}


def latest_sweep(uri: str, experiment: str) -> Run:
    """The newest parent sweep run of ``experiment`` (error if it has none)."""
    runs = find_runs(uri, experiment, {ROLE: "sweep"})
    if not runs:
        raise LookupError(f"MLflow experiment '{experiment}' at {uri} has no sweep runs")
    return runs[0]
