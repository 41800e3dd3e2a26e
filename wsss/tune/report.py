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
from functools import cache
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import LogLocator, MaxNLocator, NullFormatter, StrMethodFormatter

from wsss.commands import command_line
from wsss.tracking import keep_unsent, send_or_keep
from wsss.tune.tracking import find_trial_run, mlflow_client, trial_runs
from wsss.viz import literal, save_figure

KNOBS_TAG = "wsss.knobs"
BEST_TRIAL_TAG = "wsss.best_trial_id"  # on the parent run: the best trial's id
BEST_CHECKPOINT_TAG = "wsss.best_checkpoint"  # on the parent run: the best trial's model.pt
NOTE_TAG = "mlflow.note.content"  # a run's description in the MLflow UI
# the share of a trial's scored pseudo-masks that are flooded (``wsss.core.scoring.is_degenerate``)
DEGENERATE, DEGENERATE_METRIC = "degenerate", "degenerate_share"
DEGENERATE_WARNING = 0.25  # the share of degenerate masks from which a trial is flagged
# What a sweep ranks (Optuna, ASHA, the best trial): the pseudo-mask mIoU less a penalty on the
# share of degenerate masks, so a trial that floods its masks (no background) does not win on a
# high mIoU. ``pseudo_miou`` itself stays the true mIoU; ``--degenerate-penalty 0`` ranks by it.
RANKED, MIOU = "objective", "pseudo_miou"
DEGENERATE_PENALTY = 0.5  # objective = pseudo_miou - DEGENERATE_PENALTY * degenerate_share
# How the plots draw a trial of each status (others: STATUS_OTHER); the best trial on top.
STATUS_STYLES = {
    "completed": {"color": "C0", "marker": "o", "linestyle": "-"},
    "stopped early": {"color": "0.55", "marker": "x", "linestyle": "--"},
    "error": {"color": "C3", "marker": "x", "linestyle": ":"},
}
STATUS_OTHER = {"color": "C4", "marker": "d", "linestyle": "-."}
BEST_STYLE = {"color": "C1", "marker": "*", "markersize": 16, "markeredgecolor": "black",
              "markeredgewidth": 0.6, "linestyle": "-", "linewidth": 2.4}


def penalised_objective(miou: float, share: float, penalty: float) -> float:
    """What a sweep ranks: ``miou - penalty * share`` (``share``, the share of degenerate
    pseudo-masks, counts as 0 when NaN: nothing was scored as flooded)."""
    share = 0.0 if share is None or math.isnan(share) else share
    return float(miou) - penalty * float(share)


def with_objective(metrics: dict[str, Any], penalty: float) -> dict[str, Any]:
    """``metrics`` (a trial's report) led by :data:`RANKED` (:func:`penalised_objective` of its
    :data:`MIOU` and :data:`DEGENERATE_METRIC`), :data:`MIOU` and :data:`DEGENERATE_METRIC`:
    Tune's status table shows the first metrics of a report. Unchanged without ``MIOU``."""
    if metrics.get(MIOU) is None:
        return dict(metrics)
    share = float(metrics.get(DEGENERATE_METRIC, math.nan))
    first = {RANKED: penalised_objective(metrics[MIOU], share, penalty), MIOU: metrics[MIOU],
             DEGENERATE_METRIC: share}
    return {**first, **{k: v for k, v in metrics.items() if k not in first}}


def trial_row(result: Any, full_length: Callable[[dict[str, Any]], int], time_attr: str,
              objective: str) -> dict[str, Any]:
    """One table row from a Tune ``Result``: trial id, objective, progress, status, knobs and
    ``degenerate`` (the share of flooded pseudo-masks at the last report; NaN when the trial
    reports none), ``pseudo_miou`` (the true mIoU at the last report, NaN without one) and
    ``history``, the objective at each reported ``time_attr`` value ([(t, objective), ...])."""
    metrics = dict(result.metrics or {})
    ran = int(metrics.get(time_attr, 0) or 0)
    full = full_length(result.config)
    status = "error" if result.error else ("stopped early" if ran < full else "completed")
    value = metrics.get(objective)
    return {"trial_id": metrics.get("trial_id") or _trial_id_from_path(result.path),
            "objective": float(value) if value is not None else math.nan,
            DEGENERATE: float(metrics.get(DEGENERATE_METRIC, math.nan)),
            MIOU: float(metrics.get(MIOU, math.nan)),
            time_attr: ran, "full": full, "status": status,
            "checkpoint_path": metrics.get("checkpoint_path"),
            "knobs": {k: v for k, v in result.config.items() if not k.startswith("_")},
            "history": _reported(getattr(result, "metrics_dataframe", None), time_attr,
                                 objective)}


def _reported(frame: Any, time_attr: str, objective: str) -> list[tuple[float, float]]:
    """(time, objective) of each report in Tune's metrics table, by time (the last report of a
    time wins); [] without a table or those columns."""
    if frame is None or time_attr not in frame or objective not in frame:
        return []
    return history_points(zip(frame[time_attr], frame[objective]))


def history_points(pairs: Any) -> list[tuple[float, float]]:
    """(time, value) pairs with both numbers, by time, one per time (the last given);
    integral times as ints."""
    points: dict[float, float] = {}
    for t, value in pairs:
        try:
            t, value = float(t), float(value)
        except (TypeError, ValueError):
            continue
        if not (math.isnan(t) or math.isnan(value)):
            points[int(t) if t.is_integer() else t] = value
    return sorted(points.items())


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


def smoke_note(smoke_test: bool) -> str:
    """A line saying what a ``--smoke-test`` result means (empty for a real sweep)."""
    if not smoke_test:
        return ""
    return ("note: this was a --smoke-test, a check of the setup: 1 epoch per round on 64 px "
            "crops learns almost nothing, so a low or negative objective and mostly degenerate "
            "pseudo-masks are expected by design; run without --smoke-test for real results\n")


def objective_line(row: dict[str, Any], penalty: float) -> str:
    """A line spelling out what the trial's objective is made of: its true ``pseudo_miou``,
    its share of degenerate masks and the penalty (empty without a scored mIoU)."""
    miou, share = row.get(MIOU, math.nan), row.get(DEGENERATE, math.nan)
    if math.isnan(miou):
        return ""
    shown = "n/a" if math.isnan(share) else f"{share:.0%}"
    return (f"  {RANKED} = {MIOU} {miou:.4f} - {penalty:g} x degenerate share {shown} "
            f"(--degenerate-penalty {penalty:g})\n")


def next_steps(checkpoint: str | None, data: str, experiment: str = "sweep") -> str:
    """Lines naming the best trial's checkpoint and the commands to run on it, each as it runs
    pasted into a fresh shell (``wsss.commands``), writing into folders of ``experiment``'s
    own (``runs/<experiment>/...``): two sweeps never suggest the same folder. Empty without a
    checkpoint (a sweep that trains nothing, or a best trial stopped inside its first round)."""
    if not checkpoint:
        return ""
    runs = f"runs/{experiment}"
    common = ("--checkpoint", checkpoint, "--data", data, "--split", "train")
    return (f"best checkpoint: {checkpoint}\n"
            f"next: its maps and pseudo-masks on the train split:\n"
            f"  {command_line('wsss', 'cam', *common, '--out', f'{runs}/cams')}\n"
            f"  {command_line('wsss', 'pseudo-label', *common, '--out', f'{runs}/pseudo-masks')}"
            f" --eval\n")


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
    for key, name in (("objective", RANKED), (DEGENERATE, DEGENERATE_METRIC)):
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
                     record["status"], step=_step(row.get(time_attr)))

    kept = send_or_keep(uri, None, record, send, unsent)
    if not kept and found["run"] is None:
        keep_unsent(None, record, unsent)
        kept = True
    if kept:
        pictures()


def _step(value: Any) -> int:
    """An MLflow step from a trial's progress (0 when unknown)."""
    try:
        return max(int(value), 0)
    except (TypeError, ValueError):
        return 0


def _end_run(client: Any, run_id: str, metrics: dict[str, float], tags: dict[str, str],
             artifacts: Sequence[Path], status: str, artifact_path: str = "samples",
             step: int = 0) -> None:
    """Log ``metrics`` at ``step`` (a trial's final progress: the objective's last point of its
    per-step history), then ``tags`` and ``artifacts``; end the run with ``status``."""
    for key, value in metrics.items():
        client.log_metric(run_id, key, value, step=step)
    for key, value in tags.items():
        client.set_tag(run_id, key, value)
    for path in artifacts:
        client.log_artifact(run_id, str(path), artifact_path=artifact_path)
    client.set_terminated(run_id, status=status)


def summarize_sweep(uri: str, parent_run_id: str, rows: list[dict[str, Any]], time_attr: str,
                    out_dir: Path, unsent: str | Path | None = None,
                    objective: str = "objective") -> dict[str, Any] | None:
    """Best config, trials table and plots (written to ``out_dir``; ``objective`` names the
    objective on them) on the parent run, which then ends FINISHED; returns the best row (None
    if no trial scored).

    When the tracking server does not answer, all of it goes to ``unsent`` as one
    ``close_sweep_run`` record (the tables and plots stay in ``out_dir``).
    """
    best = best_trial(rows)
    outputs = write_outputs(rows, out_dir, time_attr, objective)
    metrics = {"trials": len(rows), f"{time_attr}_run": sum(r[time_attr] for r in rows),
               f"{time_attr}_full_budget": sum(r["full"] for r in rows)}
    best_config = None if best is None else {"trial_id": best["trial_id"],
                                             "objective": best["objective"],
                                             MIOU: best.get(MIOU, math.nan),
                                             DEGENERATE_METRIC: best.get(DEGENERATE, math.nan),
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
    for key, name in ((MIOU, f"best_{MIOU}"), (DEGENERATE, f"best_{DEGENERATE_METRIC}")):
        if not math.isnan(best.get(key, math.nan)):
            client.log_metric(run_id, name, best[key])
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
    client.set_tag(run_id, NOTE_TAG, best_description(best))


def best_description(best: dict[str, Any]) -> str:
    """The parent run's description (Markdown, on its page in the MLflow UI): the best trial's
    objective, knobs and checkpoint."""
    miou = best.get(MIOU, math.nan)
    knobs = "\n".join(f"- `{k}` = {v}" for k, v in sorted(best["knobs"].items()))
    return (f"**Best trial {best['trial_id']}** ({best['status']}): objective "
            f"{best['objective']:.4f}" + ("" if math.isnan(miou) else f", {MIOU} {miou:.4f}")
            + f"\n\nKnobs:\n\n{knobs}\n\n"
            f"Checkpoint: `{best.get('checkpoint') or 'none kept'}`\n")


def _trial_id_from_path(path: str) -> str:
    """Tune's trial id from a trial folder name such as ``train_trial_1a2b3c4d_3_...``."""
    found = re.search(r"_([0-9a-f]{5,})_\d+", Path(path).name)
    return found.group(1) if found else Path(path).name


def write_outputs(rows: list[dict[str, Any]], out_dir: Path, time_attr: str,
                  objective: str = "objective") -> list[Path]:
    """``trials.csv``, ``trials.md``, ``objective_vs_knobs.png`` and ``history.png`` (their
    axes name the objective ``objective``)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    columns, table = _table(rows, time_attr)
    keys = sorted({k for r in rows for k in r["knobs"]})
    with open(out_dir / "trials.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([columns, *table])
    md = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    md += ["| " + " | ".join(row) + " |" for row in table]
    (out_dir / "trials.md").write_text("\n".join(md) + "\n")
    return [out_dir / "trials.csv", out_dir / "trials.md",
            plot_knobs(rows, keys, out_dir / "objective_vs_knobs.png", objective),
            plot_history(rows, out_dir / "history.png", time_attr, objective)]


def format_table(rows: list[dict[str, Any]], time_attr: str) -> str:
    """The trials sorted by objective (best first) as a fixed-width text table."""
    columns, table = _table(rows, time_attr)
    cells = [columns, *table]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells)


def plot_knobs(rows: list[dict[str, Any]], keys: Sequence[str], path: Path,
               objective: str = "objective") -> Path:
    """:func:`knobs_figure` written to ``path`` (PNG, atomically)."""
    return save_figure(knobs_figure(rows, keys, objective), path)


def knobs_figure(rows: list[dict[str, Any]], keys: Sequence[str],
                 objective: str = "objective") -> Figure:
    """Scatter of the objective against each knob that varies, one panel per knob: categorical
    knobs on a labelled axis, integer knobs with integer ticks, ``lr`` knobs on a log axis;
    each trial drawn in the style of its status (:data:`STATUS_STYLES`), the best trial
    (:func:`best_trial`) as a star named in the legend."""
    varying = [k for k in keys if len({str(r["knobs"].get(k)) for r in rows}) > 1]
    keys = varying or list(keys)
    cols = max(1, min(3, len(keys)))
    nrows = max(1, math.ceil(len(keys) / cols))
    fig = Figure(figsize=(4 * cols, 3.2 * nrows + 0.9), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, cols, squeeze=False).ravel()
    best = best_trial(rows)
    for ax, key in zip(axes, keys):
        scored = [r for r in rows if key in r["knobs"] and not math.isnan(r["objective"])]
        values = [r["knobs"][key] for r in scored]
        kind = _knob_kind(values)
        if kind == "category":
            labels = sorted({str(v) for v in values})
            position = {label: i for i, label in enumerate(labels)}
            xs = [position[str(v)] for v in values]
            slanted = len(labels) > 3
            ax.set_xticks(range(len(labels)), [literal(v) for v in labels],
                          rotation=30 if slanted else 0, ha="right" if slanted else "center",
                          fontsize=8)
            ax.set_xlim(-0.5, len(labels) - 0.5)
        else:
            xs = values
        for status, group in _by_status(scored, xs):
            style = _status_style(status)
            ax.scatter([x for x, _ in group], [r["objective"] for _, r in group], s=28,
                       color=style["color"], marker=style["marker"], zorder=2, gid=status)
        for x, row in zip(xs, scored):
            if row is best:
                ax.plot([x], [row["objective"]], linestyle="none", zorder=3,
                        **_marker_only(BEST_STYLE))
        if kind == "int":
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        elif kind == "float" and key.endswith("lr") and all(v > 0 for v in values):
            ax.set_xscale("log")
            # ticks at 1, 2 and 5 of each decade, written plainly: a search range within one
            # decade (the usual lr range) still gets labelled ticks
            ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(StrMethodFormatter("{x:g}"))
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_title(literal(f"{objective} vs {key}"), fontsize=9)
        ax.set_xlabel(literal(key), fontsize=8)
        ax.set_ylabel(literal(objective), fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    for ax in axes[len(keys):]:
        ax.set_axis_off()
    unscored = sum(math.isnan(r["objective"]) for r in rows)
    fig.suptitle(literal(f"{objective} against each knob: {len(rows)} trials"
                         + (f" ({unscored} not scored, not shown)" if unscored else "")),
                 fontsize=10)
    _legend(fig, rows, best)
    return fig


def plot_history(rows: list[dict[str, Any]], path: Path, time_attr: str = "progress",
                 objective: str = "objective") -> Path:
    """:func:`history_figure` written to ``path`` (PNG, atomically)."""
    return save_figure(history_figure(rows, time_attr, objective), path)


def history_figure(rows: list[dict[str, Any]], time_attr: str = "progress",
                   objective: str = "objective") -> Figure:
    """Two panels. Left: each trial's objective against ``time_attr`` (its ``history``, else
    its final objective at the ``time_attr`` it reached), in a colour of its own
    (:func:`trial_colors`) and the line style of its status (:data:`STATUS_STYLES`: a trial
    stopped early dashed, an ``x`` where it stopped). Right: each trial's final objective in
    start order, in the same colours, and the best so far (among the completed trials when
    any completed, as :func:`best_trial` ranks). The legend names every trial by id, status,
    objective and the knobs that vary; the best trial is drawn thick with a star and named
    first."""
    best = best_trial(rows)
    colors = trial_colors(rows)
    entries = math.ceil((len(rows) + 2) / 2)  # legend rows below the panels (2 columns)
    fig = Figure(figsize=(11, 4.2 + 0.22 * entries), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    curves, order = fig.subplots(1, 2)
    times: list[float] = []
    lines = False  # whether any trial has more than one point
    for row in sorted(rows, key=lambda r: r is best):  # the best one drawn last, on top
        points = _curve(row, time_attr)
        if not points:
            continue
        ts, values = zip(*points)
        times += ts
        lines = lines or len(points) > 1
        style = _trial_style(row, row is best, colors)
        curves.plot(ts, values, color=style["color"], linestyle=style["linestyle"],
                    linewidth=style["linewidth"], alpha=1.0 if row is best else 0.85,
                    zorder=3 if row is best else 2, gid=str(row["trial_id"]))
        curves.plot(ts[-1:], values[-1:], linestyle="none", zorder=3 if row is best else 2,
                    **_marker_only(style))
    if times and all(float(t).is_integer() for t in times):
        curves.xaxis.set_major_locator(MaxNLocator(integer=True))
    curves.set_title(literal(f"{objective} per {time_attr}, one line per trial" if lines else
                             f"final {objective} at the {time_attr} each trial reached"),
                     fontsize=9)
    if not times:
        curves.text(0.5, 0.5, literal(f"no trial reported {objective} with {time_attr}"),
                    ha="center", va="center", fontsize=8, transform=curves.transAxes)
    curves.set_xlabel(literal(time_attr), fontsize=8)
    curves.set_ylabel(literal(objective), fontsize=8)
    x = np.arange(1, len(rows) + 1)
    for number, row in zip(x, rows):
        if not math.isnan(row["objective"]):
            style = _trial_style(row, row is best, colors)
            order.plot([number], [row["objective"]], linestyle="none", zorder=3 if row is best
                       else 2, gid=str(row["trial_id"]), **_marker_only(style))
    if rows:
        pool = {"completed"} if any(r["status"] == "completed" for r in rows) else None
        values = np.array([r["objective"] if pool is None or r["status"] in pool else math.nan
                           for r in rows], dtype=float)
        so_far = np.fmax.accumulate(np.nan_to_num(values, nan=-np.inf))
        order.step(x, np.where(np.isfinite(so_far), so_far, np.nan), where="post",
                   color="0.3", linewidth=1.0, zorder=1)
    order.xaxis.set_major_locator(MaxNLocator(integer=True))
    order.set_title(literal(f"final {objective} of each trial, in start order"), fontsize=9)
    order.set_xlabel("trial (start order)", fontsize=8)
    order.set_ylabel(literal(objective), fontsize=8)
    for ax in (curves, order):
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(literal(f"Sweep history: {objective} of {len(rows)} trials ({_counts(rows)})"),
                 fontsize=10)
    _trials_legend(fig, rows, best, colors, lines)
    return fig


def trial_colors(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """A colour per trial id, in start order (matplotlib's tab10, tab20 beyond 10 trials;
    beyond 20 the colours repeat and the legend's ids tell the trials apart)."""
    cmap = colormaps["tab10" if len(rows) <= 10 else "tab20"]
    return {str(r["trial_id"]): cmap(i % cmap.N) for i, r in enumerate(rows)}


def _trial_style(row: dict[str, Any], is_best: bool, colors: dict[str, Any]) -> dict[str, Any]:
    """A trial's line and end marker: its colour, its status's line style and marker (the
    best trial: thick, a star)."""
    status = _status_style(row["status"])
    base = BEST_STYLE if is_best else {"marker": status["marker"], "linewidth": 1.2}
    return {**base, "linestyle": status["linestyle"], "color": colors[str(row["trial_id"])]}


def knob_text(knobs: dict[str, Any], varying: Sequence[str]) -> str:
    """``name=value, ...`` of the ``varying`` knobs, each named by its last dotted part
    (``method.params.steps`` -> ``steps``), numbers to 3 significant digits."""
    parts = []
    for key in (k for k in varying if k in knobs):
        value = knobs[key]
        parts.append(f"{key.rsplit('.', 1)[-1]}="
                     + (f"{value:.3g}" if isinstance(value, float) else str(value)))
    return ", ".join(parts)


def _trials_legend(fig: Figure, rows: Sequence[dict[str, Any]], best: dict[str, Any] | None,
                   colors: dict[str, Any], lines: bool) -> None:
    """A legend entry per trial (best first, then in start order): its line and marker,
    ``id (status, objective): knobs that vary``; then the best-so-far line."""
    keys = sorted({k for r in rows for k in r["knobs"]})
    varying = [k for k in keys if len({str(r["knobs"].get(k)) for r in rows}) > 1] or keys
    handles = []
    for row in sorted(rows, key=lambda r: r is not best):
        style = _trial_style(row, row is best, colors)
        value = ("not scored" if math.isnan(row["objective"])
                 else f"{row['objective']:.3g}")
        stopped = " (x: where it stopped)" if row["status"] == "stopped early" else ""
        label = (f"{'best: ' if row is best else ''}trial {row['trial_id']} ({row['status']}"
                 f"{stopped}, {value}): {knob_text(row['knobs'], varying)}")
        handles.append(Line2D([], [], linestyle=style["linestyle"] if lines else "none",
                              linewidth=style["linewidth"], **_marker_only(style),
                              label=literal(label)))
    if rows:
        completed = any(r["status"] == "completed" for r in rows)
        handles.append(Line2D([], [], color="0.3", linewidth=1.0, label="best so far" + (
            " (completed trials)" if completed else "")))
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncols=min(2, len(handles)),
                   fontsize=7.5, frameon=False)


def _knob_kind(values: Sequence[Any]) -> str:
    """``int`` (every value an integer), ``float`` (numbers) or ``category`` (anything else,
    booleans included)."""
    def number(v: Any) -> bool:
        return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(
            v, (bool, np.bool_))

    if values and all(number(v) for v in values):
        return "int" if all(isinstance(v, (int, np.integer)) for v in values) else "float"
    return "category" if values else "float"


def _curve(row: dict[str, Any], time_attr: str) -> list[tuple[float, float]]:
    """The trial's (time, objective) points: its ``history``, else its final objective at the
    time it reached; [] when it has neither."""
    points = history_points(row.get("history") or [])
    if points:
        return points
    return history_points([(row.get(time_attr), row["objective"])])


def _by_status(rows: Sequence[dict[str, Any]],
               xs: Sequence[Any]) -> list[tuple[str, list[tuple[Any, dict[str, Any]]]]]:
    """(status, [(x, row), ...]) of the scored rows, statuses in first-seen order."""
    groups: dict[str, list[tuple[Any, dict[str, Any]]]] = {}
    for x, row in zip(xs, rows):
        if not math.isnan(row["objective"]):
            groups.setdefault(row["status"], []).append((x, row))
    return list(groups.items())


def _status_style(status: str) -> dict[str, Any]:
    return STATUS_STYLES.get(status, STATUS_OTHER)


def _marker_only(style: dict[str, Any]) -> dict[str, Any]:
    """The marker settings of a style (for ``Axes.plot`` with ``linestyle="none"``)."""
    keys = ("color", "marker", "markersize", "markeredgecolor", "markeredgewidth")
    return {"markersize": 7, **{k: style[k] for k in keys if k in style}}


def _statuses(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The statuses of ``rows``: those of :data:`STATUS_STYLES` in its order, then others."""
    present = dict.fromkeys(r["status"] for r in rows)
    return [s for s in STATUS_STYLES if s in present] + [s for s in present
                                                         if s not in STATUS_STYLES]


def _counts(rows: Sequence[dict[str, Any]]) -> str:
    """``3 completed, 2 stopped early, 1 error``."""
    return ", ".join(f"{sum(r['status'] == status for r in rows)} {status}"
                     for status in _statuses(rows))


def _legend(fig: Figure, rows: Sequence[dict[str, Any]], best: dict[str, Any] | None) -> None:
    """The knob plot's legend below the panels: one marker per status present, and the best
    trial by id and objective."""
    handles = []
    for status in _statuses(rows):
        style = _status_style(status)
        drawn = any(not math.isnan(r["objective"]) for r in rows if r["status"] == status)
        handles.append(Line2D([], [], color=style["color"], marker=style["marker"],
                              linestyle="none", label=literal(
                                  status + ("" if drawn else " (not scored, not drawn)"))))
    if best is not None:
        handles.append(Line2D([], [], linestyle="none", **_marker_only(BEST_STYLE),
                              label=literal(f"best: trial {best['trial_id']} "
                                            f"({best['objective']:.4g}, {best['status']})")))
    if handles:
        fig.legend(handles=handles, loc="outside lower center",
                   ncols=len(handles) if len(handles) <= 5 else math.ceil(len(handles) / 2),
                   fontsize=8, frameon=False)


def _table(rows: list[dict[str, Any]], time_attr: str) -> tuple[list[str], list[list[str]]]:
    """Column names and string cells of ``rows``, best objective first (NaN last)."""
    ordered = sorted(rows, key=lambda r: -r["objective"] if not math.isnan(r["objective"])
                     else math.inf)
    keys = sorted({k for r in rows for k in r["knobs"]})
    extra = [k for k in (MIOU, DEGENERATE)
             if any(not math.isnan(r.get(k, math.nan)) for r in rows)]
    columns = ["trial_id", "objective", time_attr, "status", *extra, *keys]
    return columns, [[_cell(r[c] if c in r else r["knobs"].get(c, math.nan)) for c in columns]
                     for r in ordered]


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)
