"""A sweep's MLflow runs as a reader sees them: the parent run's params are the base config
(``base.*``) and the sweep's options (``sweep.*``); trial runs are named by id and knobs."""

from __future__ import annotations

import mlflow

from wsss import names
from wsss.config import load_config
from wsss.tune.compare import best_lines
from wsss.tune.report import BEST_CHECKPOINT_TAG, BEST_TRIAL_TAG
from wsss.tune.tracking import sweep_run, trial_run_name
from wsss.tune.trial import SweepContext


def test_the_parent_run_holds_the_base_config_under_base(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    root = str(tmp_path / "my set")
    cfg = load_config(None, [f"data.root={root}", "train.lr=0.05"])
    parent = sweep_run(uri, "sweep-p", "sweep-p", cfg.to_dict(), resume=False,
                       options={"num_samples": 12, "smoke_test": False})
    params = mlflow.MlflowClient(uri).get_run(parent).data.params
    assert params["base.train.lr"] == "0.05"
    assert params["base.data.root"] == root
    assert params["sweep.num_samples"] == "12" and params["sweep.smoke_test"] == "False"
    assert all(k.startswith(("base.", "sweep.")) for k in params), sorted(params)
    assert "train.lr" not in params  # a trial's key: only child runs hold it


def test_compare_reads_the_dataset_from_the_base_config(tmp_path):
    """``wsss compare``'s next commands name the dataset of the parent's ``base.data.root``."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = load_config(None, [f"data.root={tmp_path / 'my set'}"])
    parent = sweep_run(uri, "sweep-c", "sweep-c", cfg.to_dict(), resume=False)
    client = mlflow.MlflowClient(uri)
    client.set_tag(parent, BEST_TRIAL_TAG, "t1")
    client.set_tag(parent, BEST_CHECKPOINT_TAG, "/ckpt/model.pt")
    rows = [{"trial_id": "t1", "objective": 0.5, "status": "completed"}]
    text = best_lines(client.get_run(parent), rows)
    assert f"--checkpoint /ckpt/model.pt --data '{tmp_path / 'my set'}'" in text


def test_trial_run_names_are_short_distinct_and_readable():
    knobs = {"method.params.hide_prob": 0.3141592, "method.params.grid_size": 8,
             "train.lr": 0.001234567, "_private": 1}
    assert (trial_run_name("1a2b3c4d", knobs)
            == "trial-1a2b3c4d-hide_prob=0.314,grid_size=8,lr=0.00123")
    assert trial_run_name("5e6f7a8b", knobs) != trial_run_name("1a2b3c4d", knobs)
    # method-prefixed keys, rate sets, a last part two knobs share
    assert (trial_run_name("ab", {"mdc:method.params.dilations": "1,3,6", "a.x": 1, "b.x": 2.0})
            == "trial-ab-dilations=1/3/6,a.x=1,b.x=2")
    assert trial_run_name("ab", {}) == "trial-ab"


def test_a_trial_run_name_stays_within_mlflows_limit():
    limit = names.run_name_limit()
    assert limit == 250  # runs.name String(250)
    knobs = {f"refine.knob_{i:02d}_{'w' * 12}": 1.0 / (i + 3) for i in range(20)}
    ids = [f"1a2b3c4{i}" for i in range(5)]  # Tune: 8 hex digits
    found = [trial_run_name(i, knobs) for i in ids]
    assert len(set(found)) == len(ids)
    for trial_id, name in zip(ids, found):
        assert len(name) <= limit and name.startswith(f"trial-{trial_id}-knob_00_")
        assert name.endswith(",...")
        assert "=0.333," in name  # three significant digits


def test_a_trial_run_name_leaves_the_sweeps_constants_out():
    ctx = SweepContext(base_config={}, workdir="w", storage_path="s", experiment="e",
                       tracking_uri="u", parent_run_id="p",
                       fixed_knobs=("method.name", "refine.crf"))
    config = {"method.name": "hide_and_seek", "refine.crf": True,
              "method.params.hide_prob": 0.25}
    assert ctx.run_name("t1", config) == "trial-t1-hide_prob=0.25"
