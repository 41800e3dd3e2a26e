"""Ray Train classifier: a 2-worker run learns the synthetic set, checkpoints load safely,
MLflow holds per-epoch metrics, and re-running a run name resumes instead of starting over."""

import dataclasses

import mlflow
import numpy as np
import pytest
import torch

from wsss.config import load_config
from wsss.core.classification import mean_average_precision
from wsss.data.dataset import VOCDataset
from wsss.data.transforms import eval_transform
from wsss.pipeline.train_cls import run_train_classifier
from wsss.train.checkpoint import load_checkpoint_state, load_classifier

pytestmark = pytest.mark.slow


def _cfg(root, tracking_uri, epochs, **extra):
    overrides = [f"data.root={root}", f"train.epochs={epochs}", "data.crop_size=64",
                 "train.batch_size=8", "train.lr=0.05", "train.optimizer=sgd",
                 "train.schedule=cosine", "train.weight_decay=1e-4", "train.num_workers=2",
                 f"tracking.uri={tracking_uri}", "tracking.experiment=test-train"]
    return load_config(None, overrides + [f"{k}={v}" for k, v in extra.items()])


def _split_map(checkpoint, root, split="train"):
    """mAP of the checkpoint on a split, and the mAP of random scores on the same labels."""
    _, model, _ = load_classifier(checkpoint)
    ds = VOCDataset(root, split, transform=eval_transform())
    with torch.no_grad():
        scores = np.stack([torch.sigmoid(model(ds[i]["image"][None]))[0].numpy()
                           for i in range(len(ds))])
    targets = np.stack([ds[i]["labels"].numpy() for i in range(len(ds))])
    rng = np.random.default_rng(0)
    chance = np.mean([mean_average_precision(rng.random(targets.shape), targets)
                      for _ in range(50)])
    return mean_average_precision(scores, targets), chance


def test_two_workers_learn_above_chance(ray_session, train_set, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = run_train_classifier(_cfg(train_set, uri, epochs=6), tmp_path / "runs",
                                  run_name="learn")
    learned, chance = _split_map(result.checkpoint, train_set)
    assert learned > chance + 0.15, (learned, chance)
    assert [h["epoch"] for h in result.history] == [1, 2, 3, 4, 5, 6]
    run = mlflow.MlflowClient(uri).search_runs(
        [mlflow.get_experiment_by_name("test-train").experiment_id])[0]
    assert run.data.params["train.num_workers"] == "2" and run.data.params["method.name"] == "cam"
    client = mlflow.MlflowClient(uri)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_mAP")] == [1, 2, 3, 4, 5, 6]
    losses = [m.value for m in client.get_metric_history(run.info.run_id, "loss")]
    assert losses[-1] < losses[0]
    # one checkpoint on disk: Ray keeps the last epoch's (what resume needs), and the run's
    # model.pt is that same file, not a second copy
    kept = sorted((tmp_path / "runs" / "learn" / "ray").rglob("model.pt"))
    assert len(kept) == 1 and result.checkpoint.samefile(kept[0])


def test_rerun_with_same_name_resumes_from_checkpoint(ray_session, train_set, tmp_path):
    """Re-running a run name with more epochs resumes from its checkpoint, on the longer run's
    schedule (AdamW, one-cycle, 10x head learning rate; the other tests train with SGD)."""
    from wsss.train.optim import optimizer_and_schedule

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    recipe = {"train.optimizer": "adamw", "train.schedule": "onecycle", "train.head_lr_mult": 10}
    first = run_train_classifier(_cfg(train_set, uri, epochs=1, **recipe), tmp_path / "runs",
                                 "resume")
    assert load_checkpoint_state(first.checkpoint)["epoch"] == 1
    cfg = _cfg(train_set, uri, epochs=2, **recipe)
    second = run_train_classifier(cfg, tmp_path / "runs", "resume")
    assert load_checkpoint_state(second.checkpoint)["epoch"] == 2
    # The learning rate after epoch 2 is the uninterrupted 2-epoch schedule's.
    per_worker = -(-len(VOCDataset(train_set, "train")) // cfg.train.num_workers)
    steps = -(-per_worker // cfg.train.batch_size)
    backbone_only = dataclasses.replace(cfg.train, head_lr_mult=1.0)  # the logged lr's group
    _, scheduler = optimizer_and_schedule(torch.nn.Linear(1, 1), backbone_only, steps, None, 2)
    assert second.history[1]["lr"] == pytest.approx(scheduler.get_last_lr()[0])
    # only epoch 2 ran in the second call: epoch 1 came from the checkpoint
    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("test-train").experiment_id],
                              filter_string="attributes.run_name = 'resume'",
                              order_by=["attributes.start_time ASC"])
    steps = [[m.step for m in client.get_metric_history(r.info.run_id, "loss")] for r in runs]
    assert steps == [[1], [2]]
    assert [h["epoch"] for h in second.history] == [1, 2]  # the history survives the resume


def test_adversarial_erasing_rounds_are_child_runs(ray_session, broken_train_set, tmp_path):
    """Two erasing rounds are child runs of the method's run, and the bad images of the split
    (a truncated JPEG, an id without an image) are left out of both and listed."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = _cfg(broken_train_set, uri, epochs=1, **{"method.name": "adversarial_erasing",
                                                   "method.params.steps": 2})
    result = run_train_classifier(cfg, tmp_path / "runs", "erasing")
    skipped = dict(result.skipped)
    assert set(skipped) == {"broken_jpeg", "missing_image"}
    assert "cannot read image" in skipped["broken_jpeg"]
    assert "image not found" in skipped["missing_image"]
    state = load_checkpoint_state(result.checkpoint)
    assert int(state["state_dict"]["active"]) == 1  # the final model holds both rounds
    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("test-train").experiment_id])
    parent = next(r for r in runs if r.info.run_name == "erasing")
    children = sorted(r.info.run_name for r in runs
                      if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id)
    assert children == ["erasing-round1", "erasing-round2"]
