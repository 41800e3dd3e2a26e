"""Sweep tables and plots from trial rows."""

from __future__ import annotations

import csv
import math

from wsss.sweeps.report import format_table, write_outputs


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
