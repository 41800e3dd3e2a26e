"""A sweep trial's reports reach its MLflow run and Tune once per step."""

from __future__ import annotations

import mlflow
from ray.tune.integration.ray_train import TuneReportCallback

from wsss import tracking
from wsss.tune.trial import TIME_ATTR, TuneForwarder


def test_a_step_reported_again_is_neither_logged_nor_forwarded(tmp_path, monkeypatch):
    """Epoch 2 of round 1 is reported twice (a worker group restarted before Ray Train
    registered its checkpoint), then again by a retried trial's new forwarder: the trial's run
    holds each ``epoch_total`` once and Tune hears each once."""
    forwarded = []  # what Tune hears (outside a Tune session: recorded here)
    monkeypatch.setattr(TuneReportCallback, "__init__", lambda self: None)
    monkeypatch.setattr(TuneReportCallback, "after_report",
                        lambda self, ctx, metrics, ckpt: forwarded.append(metrics[0][TIME_ATTR]))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with tracking.start_run("trial", uri=uri, local_dir=tmp_path) as run:
        run_id = run.info.run_id

    def report(forwarder: TuneForwarder, epoch: int) -> None:
        forwarder.after_report(None, [{"epoch": epoch, "pseudo_miou": epoch / 10}], None)

    first = TuneForwarder(round_number=1, epoch_offset=0, run_id=run_id, tracking_uri=uri)
    for epoch in (1, 2, 2):
        report(first, epoch)
    retried = TuneForwarder(round_number=1, epoch_offset=0, run_id=run_id, tracking_uri=uri)
    for epoch in (2, 3):
        report(retried, epoch)
    second_round = TuneForwarder(round_number=2, epoch_offset=3, run_id=run_id, tracking_uri=uri)
    report(second_round, 1)
    assert forwarded == [1, 2, 3, 4]
    history = mlflow.MlflowClient(uri).get_metric_history(run_id, TIME_ATTR)
    assert sorted(m.step for m in history) == [1, 2, 3, 4]
