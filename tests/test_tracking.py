"""MLflow helpers: a run's store stays that run's."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import mlflow

from wsss import names, tracking
from wsss.train.reporting import StepLog


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
    first = StepLog(run_id, uri, "epoch", unsent)
    assert first.log({"epoch": 1, "loss": 0.9}, step=1)
    assert first.log({"epoch": 2, "loss": 0.7}, step=2)
    assert not first.log({"epoch": 2, "loss": 0.6}, step=2)  # re-sent: skipped
    # epoch 3 was kept locally while the server was away (the record a dead server leaves)
    unsent.write_text(json.dumps({"run_id": run_id, "kind": "metrics", "step": 3,
                                  "values": {"epoch": 3.0, "loss": 0.5}}) + "\n{cut sh")
    restarted = StepLog(run_id, uri, "epoch", unsent)
    assert restarted.steps == {1, 2, 3}
    assert [restarted.log({"epoch": e, "loss": 0.1}, step=e) for e in (2, 3, 4)] == [
        False, False, True]
    history = mlflow.MlflowClient(uri).get_metric_history(run_id, "loss")
    assert sorted((m.step, m.value) for m in history) == [(1, 0.9), (2, 0.7), (4, 0.1)]
# -- params: logged in full where the store allows, kept in full where it does not -------------
def _store(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def _full_params(client, run_id: str, tmp_path) -> dict:
    return json.loads(Path(client.download_artifacts(run_id, tracking.PARAMS_ARTIFACT,
                                                     str(tmp_path))).read_text())


def test_a_long_dataset_path_is_logged_in_full(tmp_path):
    """A 1,077-character path is far below MLflow's 6,000-character limit: logged as it is,
    with no shortened-keys tag and no artifact."""
    path = "/data/" + "long_folder_name/" * 63
    assert len(path) == 1077
    with tracking.start_run("long-path", uri=_store(tmp_path),
                            params={"data": {"root": path}}) as run:
        run_id = run.info.run_id
    stored = mlflow.MlflowClient(_store(tmp_path)).get_run(run_id)
    assert stored.data.params["data.root"] == path
    assert tracking.SHORTENED_TAG not in stored.data.tags


def test_a_value_over_the_store_limit_is_shortened_and_kept_in_full(tmp_path):
    limit = mlflow.utils.validation.MAX_PARAM_VAL_LENGTH
    assert names.param_value_limit() == limit == 6000
    long_value, other = "é" * (limit + 1), "ids-" + "7" * (2 * limit)
    with tracking.start_run("long-value", uri=_store(tmp_path),
                            params={"data": {"root": long_value, "ok": "short"}}) as run:
        tracking.log_params({"extra": other})  # a second call adds to the same artifact
        run_id = run.info.run_id
    client = mlflow.MlflowClient(_store(tmp_path))
    stored = client.get_run(run_id)
    value = stored.data.params["data.root"]
    assert len(value) == limit and value.startswith("é" * 100)
    assert value.endswith(f"[cut: {limit + 1} characters in all; full text in "
                          f"{tracking.PARAMS_ARTIFACT}]")
    assert stored.data.params["data.ok"] == "short"
    assert stored.data.tags[tracking.SHORTENED_TAG] == "data.root, extra"
    assert _full_params(client, run_id, tmp_path) == {"data.root": long_value, "extra": other}


def test_sweep_parent_and_trial_runs_keep_long_params_in_full(tmp_path):
    """The sweep's own runs (MlflowClient, no active run) follow the same rule (the parent
    holds the base config as ``base.*``)."""
    from wsss.config import load_config
    from wsss.tune.tracking import sweep_run, trial_run

    uri, root = _store(tmp_path), "/d/" + "r" * 7000
    cfg = load_config(None, [f"data.root={root}"])
    parent = sweep_run(uri, "sweep-x", "sweep-x", {"data": {"root": root}}, resume=False)
    ctx = SimpleNamespace(experiment="sweep-x", parent_run_id=parent, tracking_uri=uri,
                          unsent_file=None)
    trial = trial_run(ctx, "t1", "trial-1", cfg)
    client = mlflow.MlflowClient(uri)
    for run_id, key in ((parent, "base.data.root"), (trial, "data.root")):
        run = client.get_run(run_id)
        assert len(run.data.params[key]) == names.param_value_limit()
        assert run.data.tags[tracking.SHORTENED_TAG] == key
        assert _full_params(client, run_id, tmp_path / run_id) == {key: root}
    assert client.get_run(trial).data.params["train.epochs"] == str(cfg.train.epochs)


def test_no_trial_run_stays_running_after_its_sweep_was_stopped(tmp_path):
    """A trial that opens its run after the stopped sweep closed the open ones (a busy machine:
    its worker was still starting) ends that run itself; one opened before is ended by the
    sweep. Either order leaves no child RUNNING."""
    from wsss.config import load_config
    from wsss.tune.report import end_sweep_run
    from wsss.tune.tracking import sweep_run, trial_run, trial_runs

    uri, cfg = _store(tmp_path), load_config(None, [])
    parent = sweep_run(uri, "sweep-stop", "sweep-stop", {}, resume=False)
    ctx = SimpleNamespace(experiment="sweep-stop", parent_run_id=parent, tracking_uri=uri,
                          unsent_file=None)
    before = trial_run(ctx, "t1", "trial-1", cfg)
    client = mlflow.MlflowClient(uri)
    assert client.get_run(before).info.status == "RUNNING"
    end_sweep_run(uri, "sweep-stop", parent, "KILLED", {})
    after = trial_run(ctx, "t2", "trial-2", cfg)  # started as the sweep stopped
    reopened = trial_run(ctx, "t1", "trial-1", cfg)  # a retry of the first trial
    assert reopened == before
    statuses = {t: r.info.status for t, r in trial_runs(uri, "sweep-stop", parent).items()}
    assert statuses == {"t1": "KILLED", "t2": "KILLED"}
    assert client.get_run(after).info.status == "KILLED"
    assert client.get_run(parent).info.status == "KILLED"


def test_params_go_in_batches_the_store_takes():
    params = {f"k{i}": "水" * 6000 for i in range(250)}
    batches = list(tracking.param_batches(params))
    assert [len(b) for b in batches] == [13] * 19 + [3]  # ~36 KB of JSON each, 500 KB budget
    assert {k: v for b in batches for k, v in b.items()} == params
    assert [len(b) for b in tracking.param_batches({f"k{i}": "v" for i in range(250)})] == \
        [100, 100, 50]
