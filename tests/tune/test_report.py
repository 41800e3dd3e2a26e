"""Sweep tables and plots from trial rows."""

from __future__ import annotations

import csv
import math

import pytest

from wsss.commands import command_line
from wsss.tune.report import (DEGENERATE, DEGENERATE_PENALTY, MIOU, best_trial, format_table,
                              objective_line, penalised_objective, with_objective,
                              write_outputs)


def _rows():
    return [{"trial_id": "a", "objective": 0.2, "epoch_total": 2, "full": 4,
             "status": "stopped early", "knobs": {"train.lr": 0.01, "method.params.grid_size": 4}},
            {"trial_id": "b", "objective": 0.5, "epoch_total": 4, "full": 4,
             "status": "completed", "knobs": {"train.lr": 0.05, "method.params.grid_size": 8}},
            {"trial_id": "c", "objective": math.nan, "epoch_total": 0, "full": 4,
             "status": "error", "knobs": {"train.lr": 0.02, "method.params.grid_size": 2}}]


def test_tables_are_sorted_best_first_and_plots_written(tmp_path):
    paths = write_outputs(_rows(), tmp_path, "epoch_total")
    assert all(p.is_file() and p.stat().st_size > 0 for p in paths)
    with open(tmp_path / "trials.csv") as handle:
        table = list(csv.DictReader(handle))
    assert [r["trial_id"] for r in table] == ["b", "a", "c"]
    assert table[0]["method.params.grid_size"] == "8"
    text = format_table(_rows(), "epoch_total").splitlines()
    assert text[0].split()[:4] == ["trial_id", "objective", "epoch_total", "status"]
    assert text[1].startswith("b ") and text[3].startswith("c ")


def test_compare_names_an_experiment_without_sweeps(tmp_path, capsys):
    from wsss.cli import main
    from wsss.tracking import ensure_experiment

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ensure_experiment("another", uri)
    code = main(["compare", "--experiment", "nothing-here", "--tracking-uri", uri,
                 "--out", str(tmp_path / "out")])
    assert code == 2
    assert "'nothing-here'" in capsys.readouterr().err


def test_compare_refuses_a_store_that_does_not_exist_and_creates_none(tmp_path, capsys,
                                                                     monkeypatch):
    """Run from a folder without ``mlflow.db`` (the default store), compare names the missing
    store and exits 2, instead of creating an empty one and finding no sweeps."""
    from wsss.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["compare", "--experiment", "demo-erasing", "--out", "out"]) == 2
    assert f"no MLflow store at {tmp_path / 'mlflow.db'}" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
    folder = tmp_path / "mlruns"
    assert main(["compare", "--experiment", "x", "--tracking-uri", folder.as_uri(),
                 "--out", "out"]) == 2
    assert f"no MLflow store at {folder}" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_the_best_trial_is_ranked_among_those_that_ran_their_full_budget():
    """A trial ASHA stopped after 2 of 4 epochs does not outrank a completed one, whatever its
    objective; with no completed trial the best scored one is chosen."""
    from wsss.tune.report import best_trial

    rows = _rows()
    rows[0]["objective"] = 0.9  # "a", stopped early, scored higher after less training
    assert best_trial(rows)["trial_id"] == "b"
    assert best_trial([rows[0], rows[2]])["trial_id"] == "a"
    assert best_trial([rows[2]]) is None


def test_the_best_checkpoint_is_the_model_in_the_trials_last_ray_checkpoint(tmp_path):
    """Tune's ``checkpoint_path`` has no scheme: a remote storage's is put back."""
    from wsss.tune.report import next_steps
    from wsss.tune.trial import checkpoint_file

    local = str(tmp_path / "ray/x-train/t1-round2/checkpoint_1")
    assert checkpoint_file(local, str(tmp_path / "ray")) == f"{local}/model.pt"
    assert checkpoint_file(local, (tmp_path / "ray").as_uri()) == f"{local}/model.pt"
    assert (checkpoint_file("bucket/sweeps/x-train/t1-round2/checkpoint_1", "s3://bucket/sweeps")
            == "s3://bucket/sweeps/x-train/t1-round2/checkpoint_1/model.pt")
    assert checkpoint_file(None, "s3://bucket") is None
    text = next_steps(f"{local}/model.pt", "data/my set", "sweep-x")
    assert f"best checkpoint: {local}/model.pt" in text
    wsss = command_line("wsss")
    assert (f"{wsss} cam --checkpoint {local}/model.pt --data 'data/my set' --split train "
            f"--out runs/sweep-x/cams") in text
    assert wsss != "wsss" and "/" in wsss  # a path a fresh shell runs, not a PATH lookup
    assert next_steps(None, "data") == ""


def test_the_runs_view_opens_the_experiments_runs_table():
    from wsss.tune.view import runs_view

    page = "#/experiments/7/runs?workflowType=machine_learning"
    local = runs_view("sqlite:////w/mlflow.db", "7")
    assert f"{command_line('mlflow')} ui --backend-store-uri sqlite:////w/mlflow.db" in local
    assert f"http://127.0.0.1:5000/{page}" in local
    assert runs_view("http://mlflow.lab:5000/", "7") == f"  runs: http://mlflow.lab:5000/{page}"
    shared = runs_view("http://mlflow.lab:5000/", "7", "wsss-abc")
    assert shared.endswith("#/experiments/7/runs?viewStateShareKey=wsss-abc&"
                           "workflowType=machine_learning")


def test_the_trials_view_is_stored_on_the_experiment(tmp_path):
    """The link's view: the sweep's trials sorted by objective, objective and knobs shown."""
    import json

    import mlflow

    from wsss.tune.view import SHARED_VIEW_TAG, share_trials_view, stored_view_key

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    experiment = client.create_experiment("sw")
    assert stored_view_key(uri, experiment, "p1") is None
    key = share_trials_view(uri, experiment, "p1", ["train.lr"])
    assert stored_view_key(uri, experiment, "p1") == key
    state = json.loads(client.get_experiment(experiment).tags[SHARED_VIEW_TAG + key])
    assert state["orderByKey"] == "metrics.`objective`" and state["orderByAsc"] is False
    assert state["searchFilter"] == "tags.`mlflow.parentRunId` = 'p1'"
    assert {"metrics.`objective`", "params.`train.lr`"} <= set(state["selectedColumns"])
    assert client.search_runs([experiment], state["searchFilter"]) == []  # a valid filter


def test_the_share_of_degenerate_masks_is_shown_and_a_flooded_best_trial_flagged():
    from wsss.tune.report import DEGENERATE, best_trial, degenerate_warning

    rows = _rows()
    for row, share in zip(rows, (0.0, 0.75, math.nan)):
        row[DEGENERATE] = share
    text = format_table(rows, "epoch_total").splitlines()
    assert text[0].split()[:5] == ["trial_id", "objective", "epoch_total", "status", DEGENERATE]
    assert text[1].split()[4] == "0.75"  # trial b, the best
    best = best_trial(rows)
    assert "75% of this trial's pseudo-masks are degenerate" in degenerate_warning(best)
    assert degenerate_warning(rows[0]) == "" and degenerate_warning(rows[2]) == ""
    assert DEGENERATE not in format_table(_rows(), "epoch_total").splitlines()[0]


def _sweep():
    """Rows of a sweep: two completed trials, two stopped early (one scored higher than every
    completed one after less training), an error; integer, float and categorical knobs."""
    def row(trial_id, objective, ran, status, lr, grid, bg, history):
        return {"trial_id": trial_id, "objective": objective, "epoch_total": ran, "full": 4,
                "status": status, "history": history,
                "knobs": {"train.lr": lr, "method.params.grid_size": grid, "refine.bg": bg}}

    return [row("a", 0.30, 4, "completed", 0.01, 1, "mean", [(1, 0.1), (2, 0.2), (4, 0.30)]),
            row("b", 0.60, 1, "stopped early", 0.02, 2, "max", [(1, 0.60)]),
            row("c", 0.45, 4, "completed", 0.05, 2, "max",
                [(1, 0.2), (2, 0.3), (3, 0.4), (4, 0.45)]),
            row("d", 0.25, 2, "stopped early", 0.03, 1, "mean", [(1, 0.1), (2, 0.25)]),
            row("e", math.nan, 0, "error", 0.04, 2, "fixed", [])]


def _star(ax):
    (star,) = [line for line in ax.lines if line.get_marker() == "*"]
    return float(star.get_xdata()[0]), float(star.get_ydata()[0])


def _legend_texts(fig):
    (legend,) = fig.legends
    return [t.get_text() for t in legend.get_texts()]


def test_knob_plot_names_its_axes_marks_the_best_trial_and_keeps_integer_knobs_integer():
    """One titled panel per knob (x: the knob, y: the objective); an integer knob has only
    integer ticks, a categorical one a tick per category, an lr a log axis; the best trial
    (the best completed one, not the higher stopped one) is a star at its knob value and
    objective, named in the legend; stopped trials are drawn apart from completed ones."""
    from wsss.tune.report import knobs_figure

    rows = _sweep()
    fig = knobs_figure(rows, sorted(rows[0]["knobs"]), "pseudo_miou")
    fig.canvas.draw()
    grid, bg, lr = fig.axes[:3]
    assert [ax.get_title() for ax in (grid, bg, lr)] == [
        "pseudo_miou vs method.params.grid_size", "pseudo_miou vs refine.bg",
        "pseudo_miou vs train.lr"]
    assert [(ax.get_xlabel(), ax.get_ylabel()) for ax in (grid, bg, lr)] == [
        ("method.params.grid_size", "pseudo_miou"), ("refine.bg", "pseudo_miou"),
        ("train.lr", "pseudo_miou")]
    ticks = [t for t in grid.get_xticks() if grid.get_xlim()[0] <= t <= grid.get_xlim()[1]]
    assert ticks == [1, 2]  # no 1.5
    assert [t.get_text() for t in bg.get_xticklabels()] == ["max", "mean"]  # the error: no score
    assert lr.get_xscale() == "log"
    assert _star(grid) == (2, 0.45) and _star(bg) == (0, 0.45) and _star(lr) == (0.05, 0.45)
    assert "best: trial c (0.45, completed)" in _legend_texts(fig)
    assert _legend_texts(fig)[:3] == ["completed", "stopped early",
                                      "error (not scored, not drawn)"]
    styles = {c.get_gid(): (tuple(c.get_facecolor()[0]), c.get_offsets().tolist())
              for c in grid.collections}
    assert styles["completed"][1] == [[1, 0.30], [2, 0.45]]
    assert styles["stopped early"][1] == [[2, 0.60], [1, 0.25]]
    assert styles["completed"][0] != styles["stopped early"][0]
    assert "5 trials (1 not scored" in fig.get_suptitle()


def test_an_lr_range_within_one_decade_gets_labelled_ticks():
    """The demo's lr values (0.0011-0.0085) lie within one decade, where a log axis has no
    labelled tick of its own (at most 10^-3 at the edge): the panel labels 1, 2 and 5 of the
    decade."""
    from wsss.tune.report import knobs_figure

    rows = [{"trial_id": t, "objective": o, "epoch_total": 4, "full": 4, "status": "completed",
             "history": [], "knobs": {"train.lr": lr}}
            for t, o, lr in (("a", 0.4, 0.0011), ("b", 0.5, 0.0016), ("c", 0.3, 0.0085))]
    fig = knobs_figure(rows, ["train.lr"], "pseudo_miou")
    fig.canvas.draw()
    lr = fig.axes[0]
    low, high = lr.get_xlim()
    texts = [label.get_text() for tick, label in zip(lr.get_xticks(), lr.get_xticklabels())
             if low <= tick <= high and label.get_text()]
    assert len(texts) >= 2 and {"0.002", "0.005"} <= set(texts)  # plain numbers, not 10^-3


def test_history_plot_draws_each_trial_per_epoch_and_tells_stopped_from_completed():
    """Left: one line per trial over the time attribute (its reported history), each trial in
    a colour of its own, completed solid, stopped early dashed with an x where it stopped, the
    best trial thick with a star at its last point; right: trials in start order with the
    best so far. Every trial has a legend entry with its id and knobs. Titled, axes named."""
    from wsss.tune.report import history_figure

    rows = _sweep()
    fig = history_figure(rows, "epoch_total", "pseudo_miou")
    curves, order = fig.axes
    assert fig.get_suptitle().startswith("Sweep history: pseudo_miou of 5 trials")
    assert "2 completed, 2 stopped early, 1 error" in fig.get_suptitle()
    assert (curves.get_xlabel(), curves.get_ylabel()) == ("epoch_total", "pseudo_miou")
    assert (order.get_xlabel(), order.get_ylabel()) == ("trial (start order)", "pseudo_miou")
    lines = {line.get_gid(): line for line in curves.lines if line.get_gid()}
    assert set(lines) == {"a", "b", "c", "d"}  # e has no point
    assert list(lines["c"].get_xdata()) == [1, 2, 3, 4]
    assert len({tuple(line.get_color()) for line in lines.values()}) == 4  # one colour each
    assert lines["d"].get_linestyle() == "--" and lines["a"].get_linestyle() == "-"
    assert lines["c"].get_linewidth() > lines["a"].get_linewidth()  # the best
    ends = {(float(m.get_xdata()[0]), float(m.get_ydata()[0])): m.get_marker()
            for m in curves.lines if not m.get_gid()}
    assert ends[(2, 0.25)] == "x" and ends[(1, 0.60)] == "x" and ends[(4, 0.45)] == "*"
    assert _star(order) == (3, 0.45)
    (so_far,) = [line for line in order.lines if line.get_marker() not in ("*", "o", "x")]
    assert list(so_far.get_ydata())[2:] == [0.45, 0.45, 0.45]  # among the completed trials
    texts = _legend_texts(fig)
    assert len([t for t in texts if "trial " in t]) == len(rows)  # every trial, by id
    assert texts[0].startswith("best: trial c (completed, 0.45): ")
    for row in rows:
        (entry,) = [t for t in texts if f"trial {row['trial_id']} (" in t]
        for key, value in row["knobs"].items():
            assert f"{key.rsplit('.', 1)[-1]}=" in entry  # its knobs
    assert any("(stopped early (x: where it stopped)" in t for t in texts)
    fig.canvas.draw()
    ticks = [t for t in curves.get_xticks() if curves.get_xlim()[0] <= t <= curves.get_xlim()[1]]
    assert all(float(t).is_integer() for t in ticks)


def test_history_without_reports_shows_each_trials_final_objective():
    """Rows without ``history`` (a store that kept no steps): each trial is one point at the
    time attribute it reached."""
    from wsss.tune.report import history_figure

    rows = [{k: v for k, v in r.items() if k != "history"} for r in _sweep()]
    fig = history_figure(rows, "epoch_total", "pseudo_miou")
    curves = fig.axes[0]
    points = {line.get_gid(): list(zip(line.get_xdata(), line.get_ydata()))
              for line in curves.lines if line.get_gid()}
    assert points == {"a": [(4, 0.30)], "b": [(1, 0.60)], "c": [(4, 0.45)], "d": [(2, 0.25)]}
    assert curves.get_title() == "final pseudo_miou at the epoch_total each trial reached"


def test_a_trial_row_keeps_the_objective_of_each_report():
    """``trial_row`` reads the history from Tune's metrics table: one value per time (the last
    report of a time), reports without the objective left out."""
    import pandas as pd
    from types import SimpleNamespace

    from wsss.tune.report import trial_row

    frame = pd.DataFrame({"epoch_total": [1, 2, 2, 3], "pseudo_miou": [0.1, 0.2, 0.25, None]})
    result = SimpleNamespace(metrics={"epoch_total": 3, "pseudo_miou": 0.3, "trial_id": "t1"},
                             config={"train.lr": 0.1}, error=None, path="/x",
                             metrics_dataframe=frame)
    row = trial_row(result, lambda config: 4, "epoch_total", "pseudo_miou")
    assert row["history"] == [(1, 0.1), (2, 0.25)]
    assert row["status"] == "stopped early"
    result.metrics_dataframe = None
    assert trial_row(result, lambda config: 4, "epoch_total", "pseudo_miou")["history"] == []


def test_compare_reads_each_trials_steps_and_names_the_time_attribute(tmp_path):
    """``wsss compare`` rows hold the objective each trial's run logged per step, and the
    table and plots name the sweep's time attribute (from ``<attr>_run``)."""
    import mlflow

    from wsss.tune.compare import compare, sweep_rows
    from wsss.tune.report import KNOBS_TAG
    from wsss.tune.tracking import ROLE, TRIAL_ID

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    exp = client.create_experiment("sw")
    parent = client.create_run(exp, tags={ROLE: "sweep"}).info.run_id
    for trial_id, steps, status in (("t1", [0.1, 0.3], "completed"),
                                    ("t2", [0.2], "stopped early")):
        run = client.create_run(exp, tags={ROLE: "trial", TRIAL_ID: trial_id,
                                           "mlflow.parentRunId": parent,
                                           "wsss.status": status,
                                           KNOBS_TAG: '{"train.lr": 0.1}'}).info.run_id
        for step, value in enumerate(steps, start=1):
            client.log_metric(run, "pseudo_miou", value, step=step)
        client.log_metric(run, "objective", steps[-1])
        client.log_metric(run, "epoch_total_run", len(steps))
        client.set_terminated(run)
    _, rows, time_attr = sweep_rows(uri, "sw")
    assert time_attr == "epoch_total"
    assert {r["trial_id"]: r["history"] for r in rows} == {"t1": [(1, 0.1), (2, 0.3)],
                                                          "t2": [(1, 0.2)]}
    table, paths, _, _ = compare(uri, "sw", tmp_path / "out")
    assert table.splitlines()[1].split()[:4] == ["trial_id", "objective", "epoch_total", "status"]
    assert {p.name for p in paths} >= {"history.png", "objective_vs_knobs.png"}


def test_the_objective_penalises_degenerate_masks_and_changes_the_best_trial():
    """A flooded trial with the higher mIoU loses to a cleaner one once its degenerate share
    is penalised; with penalty 0 the objective is the mIoU; the table keeps the true mIoU."""
    flooded = {"epoch": 4, "pseudo_miou": 0.46, "degenerate_share": 0.47}
    clean = {"epoch": 4, "pseudo_miou": 0.44, "degenerate_share": 0.09}
    assert with_objective(flooded, 0.0)["objective"] == pytest.approx(0.46)
    ranked = {name: with_objective(m, DEGENERATE_PENALTY)
              for name, m in (("flooded", flooded), ("clean", clean))}
    assert ranked["flooded"]["objective"] == pytest.approx(0.46 - 0.5 * 0.47)
    assert ranked["flooded"]["pseudo_miou"] == 0.46  # the true mIoU stays as reported
    assert list(ranked["clean"])[:3] == ["objective", "pseudo_miou", "degenerate_share"]
    assert penalised_objective(0.3, math.nan, 0.5) == pytest.approx(0.3)  # nothing scored
    rows = [{"trial_id": name, "objective": m["objective"], MIOU: m["pseudo_miou"],
             DEGENERATE: m["degenerate_share"], "epoch_total": 4, "full": 4,
             "status": "completed", "knobs": {}} for name, m in ranked.items()]
    assert best_trial(rows)["trial_id"] == "clean"
    header, first = format_table(rows, "epoch_total").splitlines()[:2]
    assert header.split()[:6] == ["trial_id", "objective", "epoch_total", "status", MIOU,
                                  DEGENERATE]
    assert first.split()[0] == "clean" and first.split()[4] == "0.44"
    line = objective_line(rows[1], DEGENERATE_PENALTY)
    assert "pseudo_miou 0.4400 - 0.5 x degenerate share 9%" in line


def test_the_parent_runs_description_holds_the_best_trial():
    from wsss.tune.report import best_description

    best = {"trial_id": "c", "status": "completed", "objective": 0.45, MIOU: 0.5,
            "knobs": {"train.lr": 0.05, "method.params.steps": 2},
            "checkpoint": "/runs/c/model.pt"}
    text = best_description(best)
    assert text.startswith("**Best trial c** (completed): objective 0.4500, pseudo_miou 0.5000")
    assert "- `train.lr` = 0.05" in text and "- `method.params.steps` = 2" in text
    assert "Checkpoint: `/runs/c/model.pt`" in text
