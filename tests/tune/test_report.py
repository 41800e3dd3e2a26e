"""Sweep tables and plots from trial rows."""

from __future__ import annotations

import csv
import math

from wsss.tune.report import format_table, write_outputs


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
    text = next_steps(f"{local}/model.pt", "data/my set")
    assert f"best checkpoint: {local}/model.pt" in text
    assert f"wsss cam --checkpoint {local}/model.pt --data 'data/my set' --split train" in text
    assert next_steps(None, "data") == ""


def test_the_runs_view_opens_the_experiments_runs_table():
    from wsss.tune.report import runs_view

    page = "#/experiments/7/runs?workflowType=machine_learning"
    local = runs_view("sqlite:////w/mlflow.db", "7")
    assert "mlflow ui --backend-store-uri sqlite:////w/mlflow.db" in local
    assert f"http://127.0.0.1:5000/{page}" in local
    assert runs_view("http://mlflow.lab:5000/", "7") == f"  runs: http://mlflow.lab:5000/{page}"


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
