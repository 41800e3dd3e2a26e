"""End-to-end sweeps (``--smoke-test``): MLflow holds the parent run, one child per trial with
params and metrics, and the best config; a crashed trial is retried from its checkpoint; a
resumed sweep runs no finished trial again."""

from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "sweeps"


def run_script(name: str, tmp_path: Path, data: Path, *extra: str) -> tuple[dict | None, str]:
    """Run ``sweeps/<name>.py --smoke-test`` in this process; returns (best row, tracking URI)."""
    from wsss.tune.runner import parse_options
    from wsss.tune.tuner import run_sweep

    sweep = runpy.run_path(str(SCRIPTS / f"{name}.py"))["SWEEP"]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    argv = ["--smoke-test", "--num-samples", "2", "--max-concurrent", "2", "--data", str(data),
            "--eval-images", "8", "--workdir", str(tmp_path / "runs"), "--tracking-uri", uri,
            "--experiment", f"test-{name}", *extra]
    return run_sweep(sweep, parse_options(sweep, argv)), uri


def stored_sweep(uri: str, experiment: str) -> tuple[object, list]:
    """The single parent run of ``experiment`` and its child runs."""
    import mlflow

    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("wsss.role") == "sweep"]
    assert len(parents) == 1
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    return parents[0], children


def check_store(uri: str, experiment: str, trials: int, best: dict, knob: str,
                pictures: bool = True) -> list:
    """Assert what a finished sweep must leave in MLflow; returns the child runs."""
    import mlflow

    client = mlflow.MlflowClient(uri)
    parent, children = stored_sweep(uri, experiment)
    assert parent.info.status == "FINISHED"
    assert len(children) == trials
    assert {c.data.tags["wsss.trial_id"] for c in children} >= {best["trial_id"]}
    assert parent.data.params["base.data.crop_size"] == "64"  # the base config, as base.*
    assert "data.crop_size" not in parent.data.params
    for child in children:
        assert child.data.params["data.crop_size"] == "64"  # the flattened config
        assert child.info.run_name.startswith(f"trial-{child.data.tags['wsss.trial_id']}-")
        assert knob in child.data.params
        assert 0.0 <= child.data.metrics["pseudo_miou"] <= 1.0
        assert len(client.get_metric_history(child.info.run_id, "pseudo_miou")) >= 1
        assert child.data.metrics["objective"] == pytest.approx(  # the default penalty, 0.5
            child.data.metrics["pseudo_miou"] - 0.5 * child.data.metrics["degenerate_share"])
        if pictures:
            names = [a.path for a in client.list_artifacts(child.info.run_id, "samples")]
            assert "samples/cam_overlays.png" in names
    objectives = {c.data.tags["wsss.trial_id"]: c.data.metrics["objective"] for c in children}
    full = {c.data.tags["wsss.trial_id"] for c in children
            if c.data.tags["wsss.status"] == "completed"}  # best: among full-budget trials
    assert best["objective"] == pytest.approx(
        max(v for t, v in objectives.items() if t in full or not full))
    assert parent.data.metrics["best_objective"] == pytest.approx(best["objective"])
    best_knobs = json.loads(next(c for c in children if c.data.tags["wsss.trial_id"]
                                 == best["trial_id"]).data.tags["wsss.knobs"])
    for key, value in best_knobs.items():
        assert parent.data.params[f"best.{key}"] == str(value)
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"trials.csv", "history.png", "objective_vs_knobs.png"} <= artifacts
    return children


def test_erasing_crash_is_retried_and_resume_runs_nothing_twice(tmp_path, synth_root,
                                                                 ray_session, monkeypatch):
    import mlflow

    from wsss.tune.runner import CRASH_ENV

    marker = tmp_path / "crashed"
    monkeypatch.setenv(CRASH_ENV, str(marker))
    best, uri = run_script("erasing", tmp_path, synth_root, "--epochs", "2")
    assert marker.is_file()  # the first report of the sweep crashed its trial once
    children = check_store(uri, "test-erasing", 2, best, "method.params.steps")
    retried = [c for c in children if c.data.tags.get("wsss.retried") == "true"]
    assert len(retried) == 1
    # Resumed from the epoch-1 checkpoint: epoch 1 was reported once, epoch 2 after the retry.
    history = mlflow.MlflowClient(uri).get_metric_history(retried[0].info.run_id, "epoch_total")
    assert sorted(m.step for m in history)[:2] == [1, 2]
    assert [m.step for m in history].count(1) == 1

    train_runs = tmp_path / "runs/ray/test-erasing-train"
    checkpoints = sorted(p.name for p in train_runs.glob("*/checkpoint_*"))
    monkeypatch.delenv(CRASH_ENV)
    again, _ = run_script("erasing", tmp_path, synth_root, "--epochs", "2", "--resume")
    parent, children_after = stored_sweep(uri, "test-erasing")
    assert len(children_after) == 2
    assert again["trial_id"] == best["trial_id"]
    assert sorted(p.name for p in train_runs.glob("*/checkpoint_*")) == checkpoints


def test_crf_sweep_scores_refined_masks_of_one_checkpoint(tmp_path, synth_root, ray_session):
    best, uri = run_script("crf", tmp_path, synth_root)
    children = check_store(uri, "test-crf", 2, best, "refine.crf_bilateral_srgb")
    for child in children:
        assert child.data.params["refine.crf"] == "True"
        assert child.data.metrics["images"] == 8 and child.data.metrics["images_failed"] == 0
    # One classifier was trained for the whole sweep (no retraining per trial), and the Ray Data
    # pipeline extracted the maps of the 8 scored images once.
    assert len(list((tmp_path / "runs/test-crf/classifier").glob("*/model.pt"))) == 1
    assert len(list((tmp_path / "runs/test-crf/pseudo-labels/maps").glob("*.npz"))) == 8


def test_affinity_sweep_walks_the_maps_of_one_checkpoint(tmp_path, synth_root, ray_session,
                                                          untrained_checkpoint):
    """The random-walk sweep: the affinity network is trained once on seeds of the scored
    images' maps, and every trial walks those maps with its own beta and t."""
    best, uri = run_script("affinity", tmp_path, synth_root, "--checkpoint",
                           untrained_checkpoint.as_uri(), "--set", "affinity.epochs=1",
                           "--set", "affinity.crop_size=48")
    children = check_store(uri, "test-affinity", 2, best, "refine.rw_beta")
    networks = list((tmp_path / "runs/test-affinity/affinity").glob("*/model.pt"))
    assert len(networks) == 1
    assert len(list((tmp_path / "runs/test-affinity/affinity").glob("*/seeds/*.png"))) == 8
    for child in children:
        assert child.data.metrics["images"] == 8 and child.data.metrics["images_failed"] == 0
        assert 1 <= int(child.data.params["refine.rw_iterations"]) <= 8  # the smoke range


def test_seed_sweep_trains_one_affinity_network_per_trial(tmp_path, synth_root, ray_session,
                                                         untrained_checkpoint):
    """The seed sweep: every trial writes its own seeds (its thresholds), trains its own
    affinity network (its radius) and reports the walked pseudo-mask mIoU of every epoch."""
    import mlflow

    best, uri = run_script("affinity_seeds", tmp_path, synth_root, "--checkpoint",
                           untrained_checkpoint.as_uri(), "--epochs", "2",
                           "--set", "affinity.crop_size=48")
    children = check_store(uri, "test-affinity_seeds", 2, best, "affinity.radius")
    client = mlflow.MlflowClient(uri)
    trials = tmp_path / "runs/test-affinity_seeds/trials"
    for child in children:
        trial = trials / child.data.tags["wsss.trial_id"]
        assert len(list((trial / "seeds").glob("*.png"))) == 8  # the scored images' seeds
        history = client.get_metric_history(child.info.run_id, "pseudo_miou")
        stopped = child.data.tags["wsss.status"] != "completed"
        assert len(history) == (1 if stopped else 2)  # one walked score per epoch
        assert 3 <= int(child.data.params["affinity.radius"]) <= 8
        assert child.data.params["affinity.seed_crf"] in ("True", "False")
        assert child.data.params["affinity.head"] in ("feature", "boundary")
    radii = {c.data.params["affinity.radius"] for c in children}
    thresholds = {c.data.params["affinity.fg_threshold"] for c in children}
    assert len(thresholds) == 2 or len(radii) == 2  # two different networks' settings
    assert not (tmp_path / "runs/test-affinity_seeds/affinity").exists()  # none shared


def run_command(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """A sweep script run as a user runs it, from folder ``cwd`` (its own local Ray)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "WSSS_STORAGE_PATH")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, *argv], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=900)


def test_relative_paths_run_and_resume_from_the_same_folder(tmp_path, synth_root):
    """Relative --storage-path, --workdir, --data and sqlite store: the sweep runs (the
    ``dilation`` sweep's end-to-end check), resumes from the same folder, and a --resume from
    another folder says where the sweep's state is. The ``hide_and_seek`` and ``methods`` sweeps
    are run end to end by tests/test_faults.py."""
    import mlflow

    from wsss.tune.tuner import STORAGE_TAG

    here = tmp_path.resolve()
    argv = [str(SCRIPTS / "dilation.py"), "--smoke-test", "--num-samples", "1",
            "--data", os.path.relpath(synth_root, here), "--eval-images", "8",
            "--storage-path", "rel_storage/ray", "--workdir", "runs",
            "--tracking-uri", "sqlite:///mlflow.db", "--experiment", "rel"]
    first = run_command(argv, here)
    assert first.returncode == 0, first.stderr[-3000:]
    tune_dir = here / "rel_storage/ray/rel"
    assert (tune_dir / "tuner.pkl").is_file()
    assert list((here / "rel_storage/ray/rel-train").glob("*/checkpoint_*"))  # Ray Train's too
    uri = f"sqlite:///{here / 'mlflow.db'}"
    parent, children = stored_sweep(uri, "rel")
    assert len(children) == 1
    only = {"trial_id": children[0].data.tags["wsss.trial_id"],
            "objective": children[0].data.metrics["objective"]}
    check_store(uri, "rel", 1, only, "method.params.dilations")
    assert parent.data.tags[STORAGE_TAG] == str(tune_dir)
    # The summary names the best trial's checkpoint (it exists) and the commands to run on it;
    # wsss compare says the same from the store.
    checkpoint = parent.data.tags["wsss.best_checkpoint"]
    assert Path(checkpoint).is_file() and checkpoint.startswith(str(tune_dir) + "-train")
    assert f"best checkpoint: {checkpoint}" in first.stdout
    assert (f"bin/wsss cam --checkpoint {checkpoint} --data {synth_root.resolve()} --split "
            f"train --out runs/rel/cams") in first.stdout
    compared = run_command(["-m", "wsss.cli", "compare", "--experiment", "rel", "--tracking-uri",
                            uri, "--out", str(here / "compare")], here)
    assert compared.returncode == 0, compared.stderr[-3000:]
    assert f"best checkpoint: {checkpoint}" in compared.stdout
    runs_page = (f"#/experiments/{parent.info.experiment_id}/runs?viewStateShareKey=wsss-"
                 f"{parent.info.run_id}&workflowType=machine_learning")  # the trials view
    assert runs_page in first.stdout and runs_page in compared.stdout
    assert parent.data.metrics["objective"] == pytest.approx(only["objective"])

    again = run_command([*argv, "--resume"], here)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resuming sweep from {tune_dir}" in again.stdout
    parent_after, children_after = stored_sweep(uri, "rel")
    assert parent_after.info.run_id == parent.info.run_id
    assert parent_after.info.status == "FINISHED"
    assert [c.info.run_id for c in children_after] == [children[0].info.run_id]
    client = mlflow.MlflowClient(uri)
    assert client.get_run(parent.info.run_id).data.metrics["trials"] == 1

    elsewhere = here / "elsewhere"
    elsewhere.mkdir()
    other = [a if a != "sqlite:///mlflow.db" else uri for a in argv]
    moved = run_command([*other, "--resume"], elsewhere)
    assert moved.returncode == 2
    assert (f"dilation sweep: error: --resume: sweep 'rel' keeps its state in {tune_dir}, "
            f"not in {elsewhere / 'rel_storage/ray/rel'}") in moved.stderr
    assert f"--storage-path {here / 'rel_storage/ray'}" in moved.stderr
    assert list(elsewhere.iterdir()) == []  # stopped before any compute


def test_the_affinity_option_is_read_by_the_checkpoint_loader(tmp_path, synth_root,
                                                              untrained_checkpoint):
    """``--affinity`` takes any URI and is checked before the maps are made: a classifier
    (here in fsspec's memory://) is refused by name."""
    import fsspec

    from wsss.train.checkpoint import CheckpointError
    from wsss.tune.runner import base_config, parse_options

    sweep = runpy.run_path(str(SCRIPTS / "affinity.py"))["SWEEP"]
    uri = "memory:///sweep-test/classifier.pt"
    fsspec.filesystem("memory").pipe(uri[len("memory://"):], untrained_checkpoint.read_bytes())
    args = parse_options(sweep, ["--affinity", uri, "--checkpoint",
                                 untrained_checkpoint.as_uri(), "--workdir", str(tmp_path)])
    assert args.affinity == uri  # URIs stay as given
    with pytest.raises(CheckpointError, match=f"{uri} is not a wsss affinity network "
                                              f"checkpoint: it holds a classifier"):
        sweep.prepare(args, base_config(args, synth_root), tmp_path)
    assert not (tmp_path / "pseudo-labels").exists()  # stopped before any work
