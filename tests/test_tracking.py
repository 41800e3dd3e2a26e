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
    assert tracking.resolve_tracking_uri() == "sqlite:///chosen.db"


def test_step_log_logs_each_step_once_across_restarts(tmp_path):
    """A worker restarted from its last checkpoint reports epochs again; each step reaches the
    run once, and a new log (a restarted process) reads the steps the run already holds,
    from the store and from the run's unsent-records file."""
    import json

    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with tracking.start_run("epochs", uri=uri, local_dir=tmp_path) as run:
        run_id = run.info.run_id
    unsent = tmp_path / tracking.UNSENT_FILE
    first = tracking.StepLog(run_id, uri, "epoch", unsent)
    assert first.log({"epoch": 1, "loss": 0.9}, step=1)
    assert first.log({"epoch": 2, "loss": 0.7}, step=2)
    assert not first.log({"epoch": 2, "loss": 0.6}, step=2)  # re-sent: skipped
    # epoch 3 was kept locally while the server was away (the record a dead server leaves)
    unsent.write_text(json.dumps({"run_id": run_id, "kind": "metrics", "step": 3,
                                  "values": {"epoch": 3.0, "loss": 0.5}}) + "\n{cut sh")
    restarted = tracking.StepLog(run_id, uri, "epoch", unsent)
    assert restarted.steps == {1, 2, 3}
    assert [restarted.log({"epoch": e, "loss": 0.1}, step=e) for e in (2, 3, 4)] == [
        False, False, True]
    history = mlflow.MlflowClient(uri).get_metric_history(run_id, "loss")
    assert sorted((m.step, m.value) for m in history) == [(1, 0.9), (2, 0.7), (4, 0.1)]
