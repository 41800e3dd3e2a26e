"""MLflow helpers: a run's store stays that run's."""

from __future__ import annotations

from wsss import tracking


def test_a_runs_store_does_not_become_the_next_default(tmp_path, monkeypatch):
    """``mlflow.set_tracking_uri`` also sets $MLFLOW_TRACKING_URI; ``start_run`` restores it,
    so a later stage without ``--tracking-uri`` uses its own default, not the last run's."""
    monkeypatch.delenv(tracking.URI_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    first = f"sqlite:///{tmp_path / 'first.db'}"
    with tracking.start_run("first", uri=first):
        assert tracking.resolve_tracking_uri() == first  # inside the run: its store
    assert tracking.resolve_tracking_uri() == f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv(tracking.URI_ENV, "sqlite:///chosen.db")
    with tracking.start_run("second", uri=first):
        pass
    # the environment's relative store, made absolute (Ray workers run in other folders)
    assert tracking.resolve_tracking_uri() == f"sqlite:///{tmp_path / 'chosen.db'}"
