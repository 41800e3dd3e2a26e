"""After a sweep: close each trial's MLflow run with its objective and pictures, and give the
parent run the best config, a table of all trials and plots (objective vs each knob, history);
or, when the sweep fails or is stopped, close its open runs as FAILED / KILLED.

A tracking server that does not answer loses nothing: what it could not take goes to the sweep's
unsent file as JSON records (``wsss.tracking``'s local fallback, ``mlflow_unsent.jsonl``).
"""

from __future__ import annotations

import csv
import json
import math
import re
import shlex
from functools import cache
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from wsss.tracking import is_server, keep_unsent, send_or_keep
from wsss.tune.tracking import find_trial_run, mlflow_client, trial_runs

KNOBS_TAG = "wsss.knobs"
BEST_TRIAL_TAG = "wsss.best_trial_id"  # on the parent run: the best trial's id
BEST_CHECKPOINT_TAG = "wsss.best_checkpoint"  # on the parent run: the best trial's model.pt
# the share of a trial's scored pseudo-masks that are flooded (``wsss.core.scoring.is_degenerate``)
DEGENERATE, DEGENERATE_METRIC = "degenerate", "degenerate_share"
DEGENERATE_WARNING = 0.25  # the share of degenerate masks from which a trial is flagged


def trial_row(result: Any, full_length: Callable[[dict[str, Any]], int], time_attr: str,
              objective: str) -> dict[str, Any]:
    """One table row from a Tune ``Result``: trial id, objective, progress, status, knobs and
    ``degenerate`` (the share of flooded pseudo-masks at the last report; NaN when the trial
    reports none)."""
    metrics = dict(result.metrics or {})
    ran = int(metrics.get(time_attr, 0) or 0)
    full = full_length(result.config)
    status = "error" if result.error else ("stopped early" if ran < full else "completed")
    value = metrics.get(objective)
    return {"trial_id": metrics.get("trial_id") or _trial_id_from_path(result.path),
            "objective": float(value) if value is not None else math.nan,
            DEGENERATE: float(metrics.get(DEGENERATE_METRIC, math.nan)),
            time_attr: ran, "full": full, "status": status,
            "checkpoint_path": metrics.get("checkpoint_path"),
            "knobs": {k: v for k, v in result.config.items() if not k.startswith("_")}}


def best_trial(rows: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The scored row with the highest objective among the trials that ran their full budget
    (status ``completed``) when any did, else among all scored rows; None when none scored.

    A trial stopped early (ASHA) reported its objective after less budget (fewer epochs, or a
    CRF trial's first chunk of images), which does not rank against a full run's.
    """
    scored = [r for r in rows if not math.isnan(r["objective"])]
    pool = [r for r in scored if r["status"] == "completed"] or scored
    return max(pool, key=lambda r: r["objective"]) if pool else None


def degenerate_warning(row: dict[str, Any]) -> str:
    """A line flagging a trial whose pseudo-masks are often flooded (at least
    :data:`DEGENERATE_WARNING` of them: one class where the ground truth has several, or no
    background where it has some), which a high mIoU can hide; empty otherwise."""
    share = row.get(DEGENERATE, math.nan)
    if math.isnan(share) or share < DEGENERATE_WARNING:
        return ""
    return (f"warning: {share:.0%} of this trial's pseudo-masks are degenerate (a single class, "
            f"or no background where the ground truth has some): look at its cam_overlays.png "
            f"before using it\n")


def next_steps(checkpoint: str | None, data: str) -> str:
    """Lines naming the best trial's checkpoint and the commands to run on it (empty without
    one: a sweep that trains nothing, or a best trial stopped inside its first round)."""
    if not checkpoint:
        return ""
    ckpt = shlex.quote(checkpoint)
    return (f"best checkpoint: {checkpoint}\n"
            f"next: its maps and pseudo-masks on the train split:\n"
            f"  wsss cam --checkpoint {ckpt} --data {shlex.quote(data)} --split train "
            f"--out runs/cams\n"
            f"  wsss pseudo-label --checkpoint {ckpt} --data {shlex.quote(data)} --split train "
            f"--out runs/pseudo-masks --eval\n")


def runs_view(uri: str, experiment_id: str) -> str:
    """Lines telling how to browse the experiment's runs: the MLflow UI command for a local
    store (its default address) or the server's own address, each opened on the runs table
    (the UI's "Model training" view, not its GenAI overview)."""
    page = f"#/experiments/{experiment_id}/runs?workflowType=machine_learning"
    if is_server(uri):
        return f"  runs: {uri.rstrip('/')}/{page}"
    return (f"  mlflow ui --backend-store-uri {uri}\n"
            f"  then open http://127.0.0.1:5000/{page}")


def run_status(row: dict[str, Any]) -> str:
    """The MLflow status a trial's run ends with: FAILED (error), else FINISHED; a trial ASHA
    stopped early ran as planned (its ``wsss.status`` tag says ``stopped early``), so it does not
    end KILLED, which the MLflow UI marks as a failure."""
    return "FAILED" if row["status"] == "error" else "FINISHED"


def close_trial_run(uri: str, experiment: str, parent_run_id: str, row: dict[str, Any],
                    time_attr: str, pictures: Callable[[], Sequence[Path]] = tuple,
                    pictures_dir: Path | None = None, unsent: str | Path | None = None) -> None:
    """Log the trial's final objective, progress, knobs and pictures to its child run (found by
    trial id under the parent) and end it; a run closed before (a resumed sweep) is left alone.

    ``pictures`` makes the trial's pictures (in ``pictures_dir``) and is called at most once,
    only for a run still open. When the tracking server does not answer, or has no run for the
    trial (it started while the server was down), the same goes to ``unsent`` as one
    ``close_trial_run`` record naming the trial id (``wsss.tracking``'s local fallback), and
    the pictures are made in ``pictures_dir``.
    """
    metrics = {f"{time_attr}_run": row[time_attr]}
    for key, name in (("objective", "objective"), (DEGENERATE, DEGENERATE_METRIC)):
        if not math.isnan(row.get(key, math.nan)):
            metrics[name] = row[key]
    tags = {"wsss.status": row["status"], KNOBS_TAG: json.dumps(row["knobs"], default=str)}
    record = {"kind": "close_trial_run", "trial_id": row["trial_id"],
              "parent_run_id": parent_run_id, "metrics": metrics, "tags": tags,
              "pictures_dir": str(pictures_dir) if pictures_dir else None,
              "status": run_status(row)}
    pictures, found = cache(pictures), {}

    def send() -> None:
        run = found["run"] = find_trial_run(uri, experiment, parent_run_id, row["trial_id"])
        if run is not None and "wsss.status" not in run.data.tags:
            _end_run(mlflow_client(uri), run.info.run_id, metrics, tags, pictures(),
                     record["status"])

    kept = send_or_keep(uri, None, record, send, unsent)
    if not kept and found["run"] is None:
        keep_unsent(None, record, unsent)
        kept = True
    if kept:
        pictures()


def _end_run(client: Any, run_id: str, metrics: dict[str, float], tags: dict[str, str],
             artifacts: Sequence[Path], status: str, artifact_path: str = "samples") -> None:
    for key, value in metrics.items():
        client.log_metric(run_id, key, value)
    for key, value in tags.items():
        client.set_tag(run_id, key, value)
    for path in artifacts:
        client.log_artifact(run_id, str(path), artifact_path=artifact_path)
    client.set_terminated(run_id, status=status)


def summarize_sweep(uri: str, parent_run_id: str, rows: list[dict[str, Any]], time_attr: str,
                    out_dir: Path, unsent: str | Path | None = None) -> dict[str, Any] | None:
    """Best config, trials table and plots (written to ``out_dir``) on the parent run, which
    then ends FINISHED; returns the best row (None if no trial scored).

    When the tracking server does not answer, all of it goes to ``unsent`` as one
    ``close_sweep_run`` record (the tables and plots stay in ``out_dir``).
    """
    best = best_trial(rows)
    outputs = write_outputs(rows, out_dir, time_attr)
    metrics = {"trials": len(rows), f"{time_attr}_run": sum(r[time_attr] for r in rows),
               f"{time_attr}_full_budget": sum(r["full"] for r in rows)}
    best_config = None if best is None else {"trial_id": best["trial_id"],
                                             "objective": best["objective"],
                                             "config": best["knobs"],
                                             "checkpoint": best.get("checkpoint")}
    record = {"kind": "close_sweep_run", "metrics": metrics, "best": best_config,
              "artifacts": [str(p) for p in outputs], "status": "FINISHED"}

    def send() -> None:
        client = mlflow_client(uri)
        if best is not None:
            _log_best(client, parent_run_id, best)
        _end_run(client, parent_run_id, metrics, {}, outputs, "FINISHED", artifact_path=None)

    send_or_keep(uri, parent_run_id, record, send, unsent)
    return best


def end_sweep_run(uri: str, experiment: str, parent_run_id: str, status: str,
                  trial_statuses: dict[str, str], unsent: str | Path | None = None) -> None:
    """End a sweep that failed (``status`` FAILED) or was interrupted (KILLED): its child runs
    still RUNNING end with their trial's outcome from ``trial_statuses`` (trial id -> MLflow
    status, known once Tune's results are in), else KILLED (cut short with the sweep). The
    parent run ends first: a trial still starting opens its run, then looks at the parent and
    ends its run itself when the parent has ended (``wsss.tune.tracking.trial_run``), so no
    child run stays RUNNING whichever comes first. A tracking server that does not answer: one
    ``end_sweep_run`` record in ``unsent``.
    """
    def send() -> None:
        client = mlflow_client(uri)
        client.set_terminated(parent_run_id, status=status)
        for trial_id, run in trial_runs(uri, experiment, parent_run_id).items():
            if run.info.status == "RUNNING":
                client.set_terminated(run.info.run_id, trial_statuses.get(trial_id, "KILLED"))

    record = {"kind": "end_sweep_run", "status": status, "trial_statuses": trial_statuses}
    send_or_keep(uri, parent_run_id, record, send, unsent)


def _log_best(client: Any, run_id: str, best: dict[str, Any]) -> None:
    """Best objective, trial and config (``best.*`` params when first set; MLflow params are
    immutable, so a resumed sweep with a new best updates the ``wsss.best.*`` tags)."""
    client.log_metric(run_id, "best_objective", best["objective"])
    client.log_metric(run_id, "objective", best["objective"])  # the parent's row in the UI
    client.set_tag(run_id, BEST_TRIAL_TAG, best["trial_id"])
    if best.get("checkpoint"):
        client.set_tag(run_id, BEST_CHECKPOINT_TAG, best["checkpoint"])
    params = client.get_run(run_id).data.params
    for key, value in best["knobs"].items():
        client.set_tag(run_id, f"wsss.best.{key}", str(value))
        if f"best.{key}" not in params:
            client.log_param(run_id, f"best.{key}", str(value))
    client.log_dict(run_id, {"trial_id": best["trial_id"], "objective": best["objective"],
                             "config": best["knobs"]}, "best_config.json")


def _trial_id_from_path(path: str) -> str:
    """Tune's trial id from a trial folder name such as ``train_trial_1a2b3c4d_3_...``."""
    found = re.search(r"_([0-9a-f]{5,})_\d+", Path(path).name)
    return found.group(1) if found else Path(path).name


def write_outputs(rows: list[dict[str, Any]], out_dir: Path, time_attr: str) -> list[Path]:
    """``trials.csv``, ``trials.md``, ``objective_vs_knobs.png`` and ``history.png``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    columns, table = _table(rows, time_attr)
    keys = sorted({k for r in rows for k in r["knobs"]})
    with open(out_dir / "trials.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([columns, *table])
    md = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    md += ["| " + " | ".join(row) + " |" for row in table]
    (out_dir / "trials.md").write_text("\n".join(md) + "\n")
    return [out_dir / "trials.csv", out_dir / "trials.md",
            plot_knobs(rows, keys, out_dir / "objective_vs_knobs.png"),
            plot_history(rows, out_dir / "history.png")]


def format_table(rows: list[dict[str, Any]], time_attr: str) -> str:
    """The trials sorted by objective (best first) as a fixed-width text table."""
    columns, table = _table(rows, time_attr)
    cells = [columns, *table]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells)


def plot_knobs(rows: list[dict[str, Any]], keys: Sequence[str], path: Path) -> Path:
    """Scatter of the objective against each knob that varies (categorical knobs on a
    labelled axis)."""
    varying = [k for k in keys if len({str(r["knobs"].get(k)) for r in rows}) > 1]
    keys = varying or list(keys)
    cols = max(1, min(3, len(keys)))
    nrows = max(1, math.ceil(len(keys) / cols))
    fig = Figure(figsize=(4 * cols, 3 * nrows), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, cols, squeeze=False).ravel()
    for ax, key in zip(axes, keys):
        points = [(r["knobs"][key], r["objective"]) for r in rows
                  if key in r["knobs"] and not math.isnan(r["objective"])]
        values = [p[0] for p in points]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        if not numeric:
            labels = sorted({str(v) for v in values})
            values = [labels.index(str(v)) for v in values]
            ax.set_xticks(range(len(labels)), labels, rotation=45, fontsize=7)
        ax.scatter(values, [p[1] for p in points], s=18)
        ax.set_xlabel(key, fontsize=8)
        ax.set_ylabel("objective", fontsize=8)
        if numeric and key.endswith("lr"):
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())
    for ax in axes[len(keys):]:
        ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(path)
    return path


def plot_history(rows: list[dict[str, Any]], path: Path) -> Path:
    """Objective of each trial in start order, and the best so far."""
    values = np.array([r["objective"] for r in rows], dtype=float)
    fig = Figure(figsize=(5, 3.2), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    x = np.arange(1, len(values) + 1)
    ax.scatter(x, values, s=18, label="trial")
    if len(values):
        ax.step(x, np.fmax.accumulate(np.nan_to_num(values, nan=-np.inf)), where="post",
                color="C1", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel("objective")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    return path


def _table(rows: list[dict[str, Any]], time_attr: str) -> tuple[list[str], list[list[str]]]:
    """Column names and string cells of ``rows``, best objective first (NaN last)."""
    ordered = sorted(rows, key=lambda r: -r["objective"] if not math.isnan(r["objective"])
                     else math.inf)
    keys = sorted({k for r in rows for k in r["knobs"]})
    scored = any(not math.isnan(r.get(DEGENERATE, math.nan)) for r in rows)
    columns = ["trial_id", "objective", time_attr, "status", *([DEGENERATE] if scored else []),
               *keys]
    return columns, [[_cell(r[c] if c in r else r["knobs"].get(c, math.nan)) for c in columns]
                     for r in ordered]


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)
