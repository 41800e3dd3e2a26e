"""``wsss compare``: a sweep's trials from MLflow, best objective first, with knobs and plots."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from wsss.tracking import missing_local_store
from wsss.tune.report import (BEST_CHECKPOINT_TAG, BEST_TRIAL_TAG, DEGENERATE, DEGENERATE_METRIC,
                              KNOBS_TAG, MIOU, RANKED, best_trial, degenerate_warning,
                              format_table, history_points, next_steps, write_outputs)
from wsss.tune.tracking import (SWEEP, TRIAL_ID, base_param, latest_sweep, mlflow_client,
                                trial_runs)

PROGRESS = "progress"  # the progress column when no trial says its time attribute
OBJECTIVE = RANKED  # what a trial reports at each step (epoch_total, chunk) and is ranked by


def sweep_rows(uri: str, experiment: str) -> tuple[Any, list[dict[str, Any]], str]:
    """The newest sweep (parent run) of ``experiment``, one row per trial with its ``history``
    (the objective at each step its run logged), and the name of the rows' progress column:
    the sweep's time attribute (``epoch_total``, ``chunk``: a closed trial's run has
    ``<time attribute>_run``), else ``progress``."""
    parent = latest_sweep(uri, experiment)
    client = mlflow_client(uri)
    runs = trial_runs(uri, experiment, parent.info.run_id)
    names = {k[:-len("_run")] for run in runs.values() for k in run.data.metrics
             if k.endswith("_run")}
    time_attr = names.pop() if len(names) == 1 else PROGRESS
    rows = []
    for trial_id, run in runs.items():
        metrics, tags = run.data.metrics, run.data.tags
        objective = metrics.get(RANKED, metrics.get(MIOU, math.nan))
        progress = next((v for k, v in metrics.items() if k.endswith("_run")), math.nan)
        rows.append({"trial_id": tags.get(TRIAL_ID, trial_id), "objective": objective,
                     MIOU: metrics.get(MIOU, math.nan), "history": _history(client, run),
                     DEGENERATE: metrics.get(DEGENERATE_METRIC, math.nan),
                     time_attr: progress, "status": tags.get("wsss.status", run.info.status),
                     "knobs": json.loads(tags.get(KNOBS_TAG, "{}")), "run_id": run.info.run_id})
    return parent, rows, time_attr


def _history(client: Any, run: Any) -> list[tuple[float, float]]:
    """The objective at each step the trial's run logged; a run of a sweep from before the
    objective was logged per step (only its final value, at step 0) has its pseudo_miou's."""
    ranked = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, RANKED)
              if m.step > 0]
    return history_points(ranked or ((m.step, m.value) for m in
                                     client.get_metric_history(run.info.run_id, MIOU)))


def compare(uri: str, experiment: str,
            out_dir: str | Path) -> tuple[str, list[Path], str, str]:
    """The trials table (best first) as text, the tables and plots written to ``out_dir``, the
    experiment's id and the sweep's parent run id.

    Raises LookupError naming the store when ``uri`` is a local store that does not exist
    (nothing is created), or the experiment when it holds no sweep with trials.
    """
    missing = missing_local_store(uri)
    if missing is not None:
        raise LookupError(f"no MLflow store at {missing}; run wsss compare where the sweep "
                          f"ran, or pass --tracking-uri (or set $MLFLOW_TRACKING_URI)")

    parent, rows, time_attr = sweep_rows(uri, experiment)
    if not rows:
        raise LookupError(f"sweep run {parent.info.run_id} of '{experiment}' has no trials yet")
    paths = write_outputs(rows, Path(out_dir), time_attr, OBJECTIVE)
    header = (f"sweep '{experiment}' (MLflow parent run {parent.info.run_id}, "
              f"{parent.info.status}): {len(rows)} trials")
    return (header + "\n" + format_table(rows, time_attr) + best_lines(parent, rows), paths,
            parent.info.experiment_id, parent.info.run_id)


def best_lines(parent: Any, rows: list[dict[str, Any]]) -> str:
    """The best trial (``report.best_trial``), its checkpoint (the parent run's
    ``wsss.best_checkpoint`` tag, written when the sweep finished) and the commands to run on
    it; empty when no trial scored."""
    best = best_trial(rows)
    if best is None:
        return ""
    checkpoint = parent.data.tags.get(BEST_CHECKPOINT_TAG)
    if checkpoint and parent.data.tags.get(BEST_TRIAL_TAG) != best["trial_id"]:
        checkpoint = None  # the tag names another trial (a sweep resumed since)
    params = parent.data.params  # data.root: a sweep recorded before the base. prefix
    data = params.get(base_param("data.root"), params.get("data.root", "DATA"))
    miou, share = best.get(MIOU, math.nan), best.get(DEGENERATE, math.nan)
    parts = ([f"pseudo_miou {miou:.4f}"] if not math.isnan(miou) else []) + (
        [f"degenerate share {share:.0%}"] if not math.isnan(share) else [])
    return (f"\nbest trial {best['trial_id']} ({best['status']}): objective "
            f"{best['objective']:.4f}" + (f" ({', '.join(parts)})" if parts else "") + "\n"
            + degenerate_warning(best)
            + next_steps(checkpoint, data, parent.data.tags.get(SWEEP, "sweep")).rstrip("\n"))
