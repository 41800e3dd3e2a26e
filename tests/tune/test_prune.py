"""A finished sweep keeps one model on disk: the best trial's last checkpoint, without its
optimizer state; the other trials' checkpoints (and the best's earlier rounds) are deleted,
except those of a trial that failed, which ``--resume`` retries from them."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from wsss.train.checkpoint import FORMAT, load_checkpoint_state, write_state
from wsss.tune.prune import keep_best_model


def _round(storage: Path, workdir: Path, trial: str, k: int) -> Path:
    """A Ray Train run's checkpoint ``model.pt`` of round ``k``, hard-linked into the trial's
    folder, as ``wsss.tune.trial.train_trial`` leaves them."""
    ckpt = storage / "sw-train" / f"{trial}-round{k}" / f"checkpoint_2026-01-01_00-00-0{k}"
    ckpt.mkdir(parents=True)
    weights = {"w": torch.ones(1000)}
    write_state(ckpt / "model.pt", {"format": FORMAT, "state_dict": weights,
                                    "optimizer": {"state": {"m": torch.ones(1000)}}})
    linked = workdir / "trials" / trial / f"round{k}" / "model.pt"
    linked.parent.mkdir(parents=True)
    os.link(ckpt / "model.pt", linked)
    return ckpt / "model.pt"


def test_a_finished_sweep_keeps_only_the_best_trials_last_model(tmp_path):
    storage, workdir = tmp_path / "ray", tmp_path / "sw"
    best_ckpt = [_round(storage, workdir, "best1", k) for k in (1, 2)][-1]
    for trial in ("stop2", "done3", "fail4"):
        _round(storage, workdir, trial, 1)
    rows = [{"trial_id": "best1", "status": "completed", "checkpoint": str(best_ckpt)},
            {"trial_id": "stop2", "status": "stopped early"},
            {"trial_id": "done3", "status": "completed"},
            {"trial_id": "fail4", "status": "error"}]
    before = load_checkpoint_state(best_ckpt)

    pruned = keep_best_model(rows, rows[0], workdir, str(storage), "sw")

    models = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("model.pt"))
    assert models == [
        "ray/sw-train/best1-round2/checkpoint_2026-01-01_00-00-02/model.pt",
        "ray/sw-train/fail4-round1/checkpoint_2026-01-01_00-00-01/model.pt",
        "sw/trials/best1/round2/model.pt", "sw/trials/fail4/round1/model.pt"]
    kept = load_checkpoint_state(best_ckpt)  # the checkpoint the summary names still loads
    assert kept["optimizer"] is None
    assert torch.equal(kept["state_dict"]["w"], before["state_dict"]["w"])
    # one copy: the trial's model.pt is the same file as Ray's checkpoint
    assert os.path.samefile(best_ckpt, workdir / "trials/best1/round2/model.pt")
    assert pruned.trials == 2 and pruned.freed > 0 and pruned.kept == best_ckpt
    assert "2 other trial(s)" in pruned.line()
    # a second pass (a resumed sweep that ended again) changes nothing
    again = keep_best_model(rows, rows[0], workdir, str(storage), "sw")
    assert again.freed == 0 and best_ckpt.is_file()


def test_checkpoints_on_a_uri_are_left_alone(tmp_path):
    rows = [{"trial_id": "a", "status": "completed", "checkpoint": "bucket/x/model.pt"}]
    pruned = keep_best_model(rows, rows[0], tmp_path, "s3://bucket/sweeps", "sw")
    assert pruned.freed == 0 and pruned.line() == ""
