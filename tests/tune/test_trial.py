"""A sweep trial's reports reach its MLflow run and Tune once per step."""

from __future__ import annotations

import mlflow
import pytest
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


def test_the_report_leads_with_the_penalised_objective(tmp_path, monkeypatch):
    """Tune ranks ``objective`` = pseudo_miou - penalty x degenerate_share; ``pseudo_miou``
    stays the true mIoU; both lead the report (Tune's status table shows its first metrics),
    and the learning rate is not among the first four."""
    forwarded = []
    monkeypatch.setattr(TuneReportCallback, "__init__", lambda self: None)
    monkeypatch.setattr(TuneReportCallback, "after_report",
                        lambda self, ctx, metrics, ckpt: forwarded.append(metrics[0]))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with tracking.start_run("trial", uri=uri, local_dir=tmp_path) as run:
        run_id = run.info.run_id
    forwarder = TuneForwarder(1, 0, run_id, uri, degenerate_penalty=0.5)
    forwarder.after_report(None, [{"epoch": 1, "loss": 0.3, "lr": 0.0, "pseudo_miou": 0.46,
                                   "degenerate_share": 0.4}], None)
    (report,) = forwarded
    assert list(report)[:4] == ["objective", "pseudo_miou", "degenerate_share", TIME_ATTR]
    assert report["objective"] == pytest.approx(0.46 - 0.5 * 0.4)
    assert report["pseudo_miou"] == 0.46
    logged = mlflow.MlflowClient(uri).get_run(run_id).data.metrics
    assert logged["objective"] == pytest.approx(0.26) and logged["pseudo_miou"] == 0.46
