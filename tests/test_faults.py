"""Fault injection: a killed Ray Train worker, a killed sweep driver, an MLflow server that is
down at start or goes away mid-run, and output folders that cannot be written.

(A map actor killed during pseudo-labelling is tested in ``tests/pipeline/test_pseudo_label.py``.)
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from wsss.cli import main

ROOT = Path(__file__).resolve().parents[1]
PYTHON_BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _dead_server() -> str:
    """An http URI on 127.0.0.1 where nothing listens."""
    return f"http://127.0.0.1:{_free_port()}"


def _descendants(pid: int) -> list:
    import psutil

    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def _kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL a process started by a test and everything it started."""
    import psutil

    for child in [*_descendants(proc.pid), psutil.Process(proc.pid)]:
        try:
            child.kill()
        except psutil.Error:
            continue
    proc.wait(timeout=30)


# -- a Ray Train worker killed during training ------------------------------------------------
def _logged(uri: str, experiment: str, key: str) -> list[tuple[int, float]]:
    """(step, value) of every record of metric ``key`` in the experiment's only run."""
    import mlflow

    client = mlflow.MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert run.info.status == "FINISHED"
    return sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))


@pytest.mark.slow
def test_killed_training_worker_restarts_from_its_checkpoint(ray_with_fault, synth_root,
                                                             tmp_path):
    """The worker is SIGKILLed right after reporting epoch 2 with its checkpoint (fault point
    ``epoch_reported``): Ray Train starts a new worker group, which resumes from the last
    checkpoint Ray Train registered (epoch 2, or epoch 1 if the kill came first, and epoch 2 is
    trained again); the final model holds all 3 epochs and MLflow holds epochs 1-3 once each,
    with the values of the final checkpoint's history, whichever way the race went."""
    import psutil

    from wsss.config import load_config
    from wsss.pipeline.train_cls import run_train_classifier
    from wsss.train.checkpoint import load_checkpoint_state

    marker, epochs = tmp_path / "killed", 3
    ray_with_fault(f"epoch_reported:2:{marker}")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = load_config(None, [f"data.root={synth_root}", f"train.epochs={epochs}",
                             "data.crop_size=64", "train.batch_size=8", "train.num_workers=1",
                             "train.use_gpu=false", "train.max_failures=3",
                             f"tracking.uri={uri}", "tracking.experiment=faults"])
    result = run_train_classifier(cfg, tmp_path / "runs", run_name="killed")
    point, step, _, pid = marker.read_text().split()
    assert (point, step) == ("epoch_reported", "2")  # the worker was killed there
    assert not psutil.pid_exists(int(pid)) or psutil.Process(int(pid)).status() == "zombie"
    assert load_checkpoint_state(result.checkpoint)["epoch"] == epochs
    assert [h["epoch"] for h in result.history] == list(range(1, epochs + 1))
    assert _logged(uri, "faults", "loss") == [(h["epoch"], pytest.approx(h["loss"]))
                                              for h in result.history]


@pytest.mark.slow
def test_killed_segmenter_worker_logs_each_epoch_once(ray_with_fault, synth_root, tmp_path):
    """One of two segmenter workers dies right after reporting epoch 1: epochs 1 and 2 reach
    MLflow once each, with the values of the final checkpoint's history."""
    from wsss.config import load_config
    from wsss.data.voc import MASK_DIR
    from wsss.pipeline.train_seg import run_train_segmenter

    marker = tmp_path / "killed"
    ray_with_fault(f"epoch_reported:1:{marker}")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = load_config(None, [f"data.root={synth_root}", "segmenter.epochs=2",
                             "segmenter.batch_size=4", "segmenter.crop_size=64",
                             "segmenter.num_workers=2", "segmenter.use_gpu=false",
                             f"tracking.uri={uri}", "tracking.experiment=faults"])
    result = run_train_segmenter(cfg, synth_root / MASK_DIR, tmp_path / "runs", run_name="seg")
    assert marker.read_text().startswith("epoch_reported 1")
    assert [h["epoch"] for h in result.history] == [1, 2]
    assert _logged(uri, "faults", "loss") == [(h["epoch"], pytest.approx(h["loss"]))
                                              for h in result.history]


def test_max_failures_is_a_config_value():
    from wsss.config import ConfigError, load_config

    assert load_config(None, ["train.max_failures=0"]).train.max_failures == 0
    assert load_config(None, ["segmenter.max_failures=-1"]).segmenter.max_failures == -1
    with pytest.raises(ConfigError, match="train.max_failures=-2"):
        load_config(None, ["train.max_failures=-2"])


# -- a sweep whose driver is killed -----------------------------------------------------------
def _sweep_test_helpers() -> tuple:
    """``run_script``, ``stored_sweep`` and ``check_store`` of the sweep script tests."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "sweep_script_tests", ROOT / "tests/tune/test_sweep_scripts.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.run_script, module.stored_sweep, module.check_store


def _trial_dirs(experiment_dir: Path) -> list[Path]:
    return sorted(p for p in experiment_dir.glob("train_trial_*") if p.is_dir())


def _trial_ids(experiment_dir: Path) -> list[str]:
    """Trial ids in the order Tune started them (``train_trial_<id>_<index>_...`` folders)."""
    names = [p.name.split("_") for p in _trial_dirs(experiment_dir)]
    return [parts[2] for parts in sorted(names, key=lambda parts: int(parts[3]))]


@pytest.mark.slow
def test_killed_sweep_driver_resumes_with_one_child_run_per_trial(tmp_path, synth_root,
                                                                   ray_session):
    import mlflow

    run_script, stored_sweep, check_store = _sweep_test_helpers()
    uri, experiment = f"sqlite:///{tmp_path / 'mlflow.db'}", "test-hide_and_seek"
    argv = [sys.executable, str(ROOT / "sweeps/hide_and_seek.py"), "--smoke-test",
            "--num-samples", "2", "--max-concurrent", "1", "--data", str(synth_root),
            "--eval-images", "8",
            "--workdir", str(tmp_path / "runs"), "--tracking-uri", uri, "--experiment",
            experiment]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    driver = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    tune_dir = tmp_path / "runs" / "ray" / experiment
    try:  # one trial at a time: a second trial dir means the first finished
        deadline = time.monotonic() + 900  # a hang guard, generous for a loaded machine
        while len(_trial_dirs(tune_dir)) < 2 and driver.poll() is None:
            assert time.monotonic() < deadline, "the sweep's first trial did not finish"
            time.sleep(0.2)
        assert driver.poll() is None, "the sweep ended before it could be killed"
        time.sleep(3)  # let the second trial start training
    finally:
        _kill_tree(driver)
    assert driver.returncode == -signal.SIGKILL
    parent, children = stored_sweep(uri, experiment)
    assert parent.info.status == "RUNNING"  # the killed driver never closed it
    started = {c.data.tags["wsss.trial_id"] for c in children}
    finished = _trial_ids(tune_dir)[0]
    train_dir = tmp_path / "runs" / "ray" / f"{experiment}-train"
    checkpoints = {p.relative_to(train_dir) for p in train_dir.glob("*/checkpoint_*")}
    assert any(p.parts[0].startswith(finished) for p in checkpoints)

    best, _ = run_script("hide_and_seek", tmp_path, synth_root, "--max-concurrent", "1",
                         "--resume")
    assert best is not None
    check_store(uri, experiment, 2, best, "method.params.hide_prob")  # all a sweep must leave
    parent, children = stored_sweep(uri, experiment)
    trial_ids = [c.data.tags["wsss.trial_id"] for c in children]
    assert len(trial_ids) == len(set(trial_ids)) == 2, trial_ids  # one child run per trial
    assert started <= set(trial_ids)
    assert parent.info.status == "FINISHED"
    assert all("objective" in c.data.metrics for c in children)
    assert len(_trial_dirs(tune_dir)) == 2
    after = {p.relative_to(train_dir) for p in train_dir.glob("*/checkpoint_*")}
    # the finished trial was not trained again (its checkpoint is gone unless it is the best:
    # a finished sweep keeps only the best trial's model, wsss.tune.prune)
    assert not any(p.parts[0].startswith(finished) for p in after - checkpoints)
    if best["trial_id"] == finished:
        assert {p for p in checkpoints if p.parts[0].startswith(finished)} <= after
    assert {p.parts[0].split("-round")[0] for p in after} == {best["trial_id"]}
    client = mlflow.MlflowClient(uri)
    assert client.get_run(parent.info.run_id).data.metrics["best_objective"] == pytest.approx(
        best["objective"])


# -- a sweep that fails or is stopped: its MLflow runs are closed -----------------------------
MLFLOW_STATUS = {"completed": "FINISHED", "stopped early": "FINISHED", "error": "FAILED"}


def _inject_failure(where: str, monkeypatch) -> None:
    """Make the sweep raise RuntimeError in its preparation, in Tuner.fit (at the first trial
    result) or while it records the trials' results."""
    import wsss.tune.tuner as tuner
    from wsss.tune.runner import Sweep
    from wsss.tune.tuner import ReleaseStoppedTrials

    def fail(*args, **kwargs):
        raise RuntimeError(f"injected failure in {where}")

    target = {"prepare": (Sweep, "prepare"), "fit": (ReleaseStoppedTrials, "on_trial_result"),
              "record": (tuner, "close_trial_run")}[where]
    monkeypatch.setattr(*target, fail)


@pytest.mark.slow
@pytest.mark.parametrize("where, child_statuses", [("prepare", []), ("fit", ["KILLED"]),
                                                    ("record", ["FINISHED"])])
def test_failing_sweep_closes_its_runs_as_failed(where, child_statuses, tmp_path, synth_root,
                                                 ray_session, monkeypatch):
    """The parent run ends FAILED; a trial run left open ends with its trial's outcome when
    Tune's results are in (the trial completed: FINISHED), else KILLED (cut short)."""
    from ray.tune.error import TuneError

    run_script, stored_sweep, _ = _sweep_test_helpers()
    _inject_failure(where, monkeypatch)
    # Tune hands a callback's error on as a TuneError holding its traceback.
    with pytest.raises((RuntimeError, TuneError), match=f"injected failure in {where}"):
        run_script("hide_and_seek", tmp_path, synth_root, "--num-samples", "1")
    parent, children = stored_sweep(f"sqlite:///{tmp_path / 'mlflow.db'}", "test-hide_and_seek")
    assert parent.info.status == "FAILED"
    assert [c.info.status for c in children] == child_statuses


def _first_report(tune_dir: Path) -> bool:
    """Whether a trial of the Tune experiment in ``tune_dir`` has reported."""
    return any(p.stat().st_size > 0 for p in tune_dir.glob("train_trial_*/result.json"))


def _sweep_command(tmp_path: Path, synth_root: Path, experiment: str, uri: str,
                   *extra: str, script: str = "hide_and_seek") -> list[str]:
    return [sys.executable, str(ROOT / f"sweeps/{script}.py"), "--smoke-test",
            "--num-samples", "2", "--max-concurrent", "1", "--data", str(synth_root),
            "--eval-images", "8", "--workdir", str(tmp_path / "runs"), "--tracking-uri", uri,
            "--experiment", experiment, *extra]


def _start_sweep(argv: list[str], cwd: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def _wait_for(condition, driver: subprocess.Popen, what: str, seconds: float = 900) -> None:
    """Wait until ``condition()``; the deadline is a hang guard, generous for a loaded machine."""
    deadline = time.monotonic() + seconds
    while not condition():
        if driver.poll() is not None:
            _, err = driver.communicate()
            raise AssertionError(f"the sweep ended (exit {driver.returncode}) before {what}:\n"
                                 f"{err[-3000:]}")
        assert time.monotonic() < deadline, f"no {what} within {seconds:.0f}s"
        time.sleep(0.2)


@pytest.mark.slow
@pytest.mark.parametrize("signum, script", [(signal.SIGINT, "hide_and_seek"),
                                            (signal.SIGTERM, "methods")], ids=["SIGINT", "SIGTERM"])
def test_stopped_sweep_closes_its_runs_as_killed(signum, script, tmp_path, synth_root,
                                                 ray_session):
    """Ctrl+C or SIGTERM mid-sweep: exit status 128 + signal, the parent and the open trial
    runs end KILLED; ``--resume`` reopens them and finishes the sweep, leaving all a finished
    sweep leaves (the ``methods`` sweep's end-to-end check)."""
    run_script, stored_sweep, check_store = _sweep_test_helpers()
    uri, experiment = f"sqlite:///{tmp_path / 'mlflow.db'}", f"test-{script}"
    driver = _start_sweep(_sweep_command(tmp_path, synth_root, experiment, uri, script=script),
                          tmp_path)
    try:
        _wait_for(lambda: _first_report(tmp_path / "runs/ray" / experiment), driver,
                  "a trial reported")
        os.kill(driver.pid, signum)
        out, err = driver.communicate(timeout=900)
    finally:
        if driver.poll() is None:
            _kill_tree(driver)
    assert driver.returncode == 128 + signum, err[-3000:]
    assert f"stopped by {signal.Signals(signum).name}" in err
    parent, children = stored_sweep(uri, experiment)
    assert parent.info.status == "KILLED"
    assert children and [c.info.status for c in children] == ["KILLED"] * len(children)
    if signum == signal.SIGINT:
        return  # one resume is enough
    best, _ = run_script(script, tmp_path, synth_root, "--max-concurrent", "1", "--resume")
    assert best is not None
    children = check_store(uri, experiment, 2, best, "method.name")
    assert len({c.data.tags["wsss.trial_id"] for c in children}) == len(children) == 2
    for child in children:
        assert child.info.status == MLFLOW_STATUS[child.data.tags["wsss.status"]]
        assert "objective" in child.data.metrics


# -- MLflow unreachable -----------------------------------------------------------------------
def _cli_args(command: str, tmp_path: Path, synth_root: Path, out: Path) -> list[str]:
    """Arguments of ``command`` whose inputs need not exist: checks must come first."""
    missing = str(tmp_path / "missing")
    return {
        "train-cls": ["train-cls", "--data", str(synth_root), "--out", str(out)],
        "cam": ["cam", "--checkpoint", missing, "--data", str(synth_root), "--out", str(out)],
        "refine": ["refine", "--cams", missing, "--data", str(synth_root), "--out", str(out)],
        "pseudo-label": ["pseudo-label", "--checkpoint", missing, "--data", str(synth_root),
                         "--out", str(out)],
        "train-seg": ["train-seg", "--pseudo-masks", missing, "--data", str(synth_root),
                      "--out", str(out)],
    }[command]


COMMANDS = ["train-cls", "cam", "refine", "pseudo-label", "train-seg"]


@pytest.mark.parametrize("command", COMMANDS)
def test_unreachable_tracking_server_fails_before_any_compute(command, tmp_path, synth_root,
                                                              capsys, monkeypatch):
    import wsss.cli

    def no_ray(*args, **kwargs):
        raise AssertionError("Ray was started before the tracking server was checked")

    monkeypatch.setattr(wsss.cli, "init_ray", no_ray)
    uri, out = _dead_server(), tmp_path / "out"
    code = main(_cli_args(command, tmp_path, synth_root, out) + ["--tracking-uri", uri])
    err = capsys.readouterr().err
    assert code == 2
    assert f"MLflow tracking server {uri} is not reachable" in err, err
    assert "--tracking-uri" in err and not out.exists()


def test_unreachable_tracking_server_from_the_environment(tmp_path, synth_root, capsys,
                                                          monkeypatch):
    uri = _dead_server()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert main(_cli_args("cam", tmp_path, synth_root, tmp_path / "out")) == 2
    assert f"MLflow tracking server {uri} is not reachable" in capsys.readouterr().err


def test_sweep_with_unreachable_tracking_server_fails_before_any_compute(tmp_path, capsys):
    import runpy

    from wsss.tune.tuner import main as sweep_main

    sweep = runpy.run_path(str(ROOT / "sweeps/erasing.py"))["SWEEP"]
    uri, workdir = _dead_server(), tmp_path / "runs"
    code = sweep_main(sweep, ["--smoke-test", "--workdir", str(workdir), "--tracking-uri", uri])
    assert code == 2
    assert f"MLflow tracking server {uri} is not reachable" in capsys.readouterr().err
    assert not workdir.exists()  # no synthetic data generated, no Ray storage


@pytest.fixture
def mlflow_server(tmp_path, monkeypatch):
    """A real MLflow server on 127.0.0.1 (sqlite store); yields (uri, process).

    ``mlflow.set_tracking_uri`` also sets ``$MLFLOW_TRACKING_URI``: both are reset after, so
    later tests do not inherit a dead server.
    """
    import mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    port = _free_port()
    proc = subprocess.Popen(
        [str(PYTHON_BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "server-artifacts"), "--workers", "1"],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600  # a hang guard: a loaded machine takes minutes
    try:
        while not _answers(uri):
            assert proc.poll() is None, "mlflow server exited before it answered"
            assert time.monotonic() < deadline, "mlflow server did not start"
            time.sleep(0.3)
        yield uri, proc
    finally:  # also when it never answered: no server outlives its test
        if proc.poll() is None:
            _kill_tree(proc)
        mlflow.set_tracking_uri(None)


def _answers(uri: str) -> bool:
    """Whether the MLflow server at ``uri`` answers its health check."""
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=1) as answer:
            return answer.status == 200
    except OSError:
        return False


@pytest.mark.slow
def test_tracking_server_lost_mid_run_keeps_metrics_locally(mlflow_server, tmp_path, synth_root,
                                                            monkeypatch, capsys):
    import mlflow
    import torch

    import wsss.pipeline.maps as maps_step
    from wsss import tracking
    from wsss.config import ExperimentConfig
    from wsss.methods import get_method
    from wsss.train.checkpoint import save_checkpoint

    uri, server = mlflow_server
    checkpoint = tmp_path / "model.pt"
    method = get_method("cam")(5)
    torch.manual_seed(0)
    save_checkpoint(checkpoint, model=method.build_model(ExperimentConfig().model), method=method,
                    cfg=ExperimentConfig(), class_names=["background", *"abcde"],
                    has_background=True, epoch=1)
    real_collect = maps_step.collect

    probes, killed_at = [], []  # the run does not wait on a dead server for every record

    def server_dies_then_collect(*args, **kwargs):  # the run and its params are on the server
        _kill_tree(server)
        killed_at.append(len(probes))
        return real_collect(*args, **kwargs)

    monkeypatch.setattr(maps_step, "collect", server_dies_then_collect)
    real_probe = tracking._health_problem
    monkeypatch.setattr(tracking, "_health_problem",
                        lambda *a, **k: probes.append(a) or real_probe(*a, **k))
    out = tmp_path / "cams"
    code = main(["cam", "--checkpoint", str(checkpoint), "--data", str(synth_root), "--out",
                 str(out), "--device", "cpu", "--tracking-uri", uri])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert len(probes) - killed_at[0] == 1  # once after the first failed call, then no more
    ids = (synth_root / "ImageSets/Segmentation/train.txt").read_text().split()
    assert sorted(p.stem for p in out.glob("*.npz")) == sorted(ids)
    report = json.loads((out / "report.json").read_text())
    unsent = out / "mlflow_unsent.jsonl"
    assert report["done"] == len(ids) and report["mlflow_unsent"]["file"] == str(unsent)
    records = [json.loads(line) for line in unsent.read_text().splitlines()]
    assert report["mlflow_unsent"]["records"] == len(records)
    metrics = {k: v for r in records if r["kind"] == "metrics" for k, v in r["values"].items()}
    assert metrics["maps_done"] == len(ids)
    kept = {r["kind"] for r in records}
    assert {"metrics", "artifact", "end_run"} <= kept
    assert (out / "mlflow_unsent_artifacts" / "report.json").is_file()
    assert "MLflow did not answer" in captured.out and str(unsent) in captured.out
    assert f"MLflow at {uri} stopped answering" in captured.err
    assert mlflow.active_run() is None


def _trial_report(uri: str, experiment: str) -> bool:
    """Whether a trial run of ``experiment`` on the server at ``uri`` has a pseudo_miou."""
    import mlflow

    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    return exp is not None and bool(client.search_runs(
        [exp.experiment_id], "tags.`wsss.role` = 'trial' and metrics.pseudo_miou >= 0"))


@pytest.mark.slow
def test_tracking_server_lost_mid_sweep_keeps_the_trials_records(mlflow_server, tmp_path,
                                                                 synth_root):
    """The server dies after the first trial's first report: the sweep finishes (exit 0), the
    first trial's later metrics, the second trial's run, metrics and objective and the sweep's
    summary are in the sweep's unsent file, which the end summary names."""
    import mlflow

    uri, server = mlflow_server
    experiment = "test-lost"
    driver = _start_sweep(_sweep_command(tmp_path, synth_root, experiment, uri, "--epochs", "2",
                                         "--scheduler", "fifo"), tmp_path)
    try:
        _wait_for(lambda: _trial_report(uri, experiment), driver, "a trial reported")
        _kill_tree(server)
        out, err = driver.communicate(timeout=900)
    finally:
        if driver.poll() is None:
            _kill_tree(driver)
    assert driver.returncode == 0, err[-3000:]
    unsent = tmp_path / "runs" / experiment / "mlflow_unsent.jsonl"
    records = [json.loads(line) for line in unsent.read_text().splitlines()]
    assert f"MLflow did not answer: {len(records)} record(s) kept in {unsent}" in out
    assert f"MLflow at {uri} did not answer during sweep '{experiment}'" in err
    first, second = _trial_ids(tmp_path / "runs/ray" / experiment)

    # The first trial's run was on the server before it died, with its epoch-1 report only.
    store = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'server.db'}")
    (run,) = [r for r in store.search_runs([store.get_experiment_by_name(experiment)
                                            .experiment_id]) if r.data.tags.get(
        "wsss.trial_id") == first]
    (stored,) = store.get_metric_history(run.info.run_id, "pseudo_miou")
    assert stored.step == 1

    def reports(run_id: str, key: str = "pseudo_miou") -> dict[int, float]:
        return {r["step"]: r["values"][key] for r in records
                if r["kind"] == "metrics" and r["run_id"] == run_id}

    # Its epoch-2 report, under its run id; the second trial (started while the server was
    # down) under a stand-in id, with its tags and params. A server killed after storing the
    # epoch-1 report but before answering leaves the client no way to know it arrived: then
    # epoch 1 is kept too (at least once, never lost), with the value the server holds.
    kept = reports(run.info.run_id)
    assert 2 in kept and set(kept) <= {1, 2}
    assert kept.get(1, stored.value) == pytest.approx(stored.value)
    (created,) = [r for r in records if r["kind"] == "create_run"]
    assert created["trial_id"] == second and created["run_id"] == f"unsent-trial-{second}"
    assert created["tags"]["mlflow.parentRunId"] == run.data.tags["mlflow.parentRunId"]
    assert "method.params.hide_prob" in created["params"]
    assert list(reports(created["run_id"])) == [1, 2]
    # Each trial's close (final objective = its last report) and the sweep's summary.
    closed = {r["trial_id"]: r for r in records if r["kind"] == "close_trial_run"}
    assert set(closed) == {first, second}
    objectives = {first: reports(run.info.run_id, "objective")[2],
                  second: reports(created["run_id"], "objective")[2]}
    for trial_id, objective in objectives.items():
        assert closed[trial_id]["metrics"]["objective"] == pytest.approx(objective)
        assert closed[trial_id]["tags"]["wsss.status"] == "completed"
        assert closed[trial_id]["status"] == "FINISHED"
        pictures = Path(closed[trial_id]["pictures_dir"])
        assert pictures == tmp_path / "runs" / experiment / "samples" / trial_id
        assert (pictures / "cam_overlays.png").is_file()
    (summary,) = [r for r in records if r["kind"] == "close_sweep_run"]
    assert summary["best"]["objective"] == pytest.approx(max(objectives.values()))
    assert summary["metrics"]["trials"] == 2
    assert all(Path(p).is_file() for p in summary["artifacts"])  # trials.csv, plots
    assert f"{summary['best']['objective']:.4f}" in out


def test_worker_metrics_for_a_dead_server_go_to_the_given_file(tmp_path):
    from wsss.tracking import kept_locally, log_metrics

    unsent = tmp_path / "run" / "mlflow_unsent.jsonl"
    log_metrics({"loss": 0.5, "name": "x"}, step=3, run_id="abc", uri=_dead_server(),
                unsent=unsent)
    (record,) = [json.loads(line) for line in unsent.read_text().splitlines()]
    assert record["run_id"] == "abc" and record["step"] == 3
    assert record["values"] == {"loss": 0.5}
    assert kept_locally("abc", unsent) == (1, unsent)


# -- output folders that cannot be written ----------------------------------------------------
@pytest.mark.parametrize("command", COMMANDS)
def test_unwritable_output_folder_fails_at_start(command, tmp_path, synth_root, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")  # as root, only a file in the way stops a write
    out = blocker / "out"
    code = main(_cli_args(command, tmp_path, synth_root, out) + [
        "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"])
    err = capsys.readouterr().err
    assert code == 2
    assert f"--out folder {out} is not writable: {blocker} is a file, not a folder" in err, err
    assert not (tmp_path / "mlflow.db").exists()  # stopped before the stage's MLflow run


def test_full_disk_fails_at_start(tmp_path, synth_root, capsys, monkeypatch):
    import shutil

    import wsss.storage as storage

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(storage.shutil, "disk_usage",
                        lambda path: usage._replace(free=3 * 2**20))
    out, uri = tmp_path / "out", f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert main(_cli_args("cam", tmp_path, synth_root, out) + ["--tracking-uri", uri]) == 2
    err = capsys.readouterr().err
    assert f"--out folder {out} has only 3.0 MB free" in err and "WSSS_MIN_FREE_MB" in err
    assert not out.exists() and list(tmp_path.glob(".wsss-write-probe-*")) == []  # no trace
    monkeypatch.setenv("WSSS_MIN_FREE_MB", "1")
    assert storage.check_writable(out).root == str(out)


def test_sweep_with_unwritable_storage_fails_at_start(tmp_path, capsys):
    import runpy

    from wsss.tune.tuner import main as sweep_main

    sweep = runpy.run_path(str(ROOT / "sweeps/erasing.py"))["SWEEP"]
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code = sweep_main(sweep, ["--smoke-test", "--workdir", str(tmp_path / "runs"),
                              "--storage-path", str(blocker / "ray"),
                              "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"])
    assert code == 2
    assert f"--storage-path folder {blocker / 'ray'} is not writable" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "data").exists()


def test_object_store_output_is_probed_and_left_clean():
    from wsss.storage import check_writable

    loc = check_writable("memory://faults-probe/out")
    assert not loc.is_local and loc.list_files() == []
