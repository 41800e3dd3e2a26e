"""The classifier step (``wsss train-cls``): train a method's classifier with Ray Train."""

from __future__ import annotations

import json
import time
from pathlib import Path

from wsss import tracking
from wsss.config import ExperimentConfig, TrackingConfig
from wsss.methods import get_method
from wsss.pipeline.report import tracked_stage
from wsss.storage import Location
from wsss.train.checkpoint import link_or_copy
from wsss.train.classifier import (ClassifierResult, TrainingData, train_classifier,
                                   training_data_for)


def run_train_classifier(cfg: ExperimentConfig, out_dir: str | Path,
                         run_name: str | None = None, parent_run_id: str | None = None,
                         data: TrainingData | None = None) -> ClassifierResult:
    """Train ``cfg.method`` with Ray Train inside an MLflow run; the final checkpoint is
    ``<out_dir>/<run_name>/model.pt``.

    Multi-round methods (adversarial erasing) run one Ray Train run per round, each logged as a
    child MLflow run of the method's run; each round starts from the previous round's model.
    The splits are scanned once, before the MLflow run opens (``data``: the caller's
    ``wsss.train.classifier.scan_training_data(cfg)``, else scanned here), so a dataset that
    cannot be trained on raises ``DatasetError`` without leaving a run behind.
    """
    data = training_data_for(cfg, data)
    run_name = run_name or f"{cfg.method.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    tracking_cfg = TrackingConfig(tracking.resolve_tracking_uri(cfg.tracking.uri),
                                  cfg.tracking.experiment)
    rounds = get_method(cfg.method.name)(1, cfg.method.params).num_rounds
    out = Path(out_dir) / run_name
    with tracked_stage(run_name, "train-cls", tracking_cfg, cfg.to_dict(), Location.parse(out),
                       parent_run_id) as stage:
        result = _train_rounds(cfg, out, run_name, stage.run.info.run_id, tracking_cfg.uri,
                               rounds, data)
        tracking.log_metrics({"train_seconds": result.seconds, "skipped": len(result.skipped)})
        tracking.log_text(str(result.checkpoint), "checkpoint_path.txt")
        if result.skipped:
            tracking.log_text(json.dumps(result.skipped, indent=2), "skipped.json")
    return result


def _train_rounds(cfg: ExperimentConfig, out_dir: Path, run_name: str, run_id: str, uri: str,
                  rounds: int, data: TrainingData) -> ClassifierResult:
    """One Ray Train run per round, each in a child MLflow run; the last round's model is
    copied to ``<out_dir>/model.pt``."""
    if rounds == 1:
        return train_classifier(cfg, out_dir, run_name, mlflow_run_id=run_id, tracking_uri=uri,
                                data=data)
    previous, seconds, history = None, 0.0, []
    for k in range(rounds):
        name = f"{run_name}-round{k + 1}"
        with tracked_stage(name, "train-round", TrackingConfig(uri, cfg.tracking.experiment),
                           {"round": k + 1}, Location.parse(out_dir / f"round{k + 1}"),
                           run_id) as child:
            result = train_classifier(cfg, out_dir / f"round{k + 1}", name,
                                      mlflow_run_id=child.run.info.run_id, tracking_uri=uri,
                                      round_index=k, init_model=previous, data=data)
        tracking.log_metrics({k2: v for k2, v in result.metrics.items() if k2 != "epoch"},
                             step=k + 1)
        previous, seconds = result.checkpoint, seconds + result.seconds
        history += [{**h, "round": k + 1} for h in result.history]
    final = link_or_copy(previous, out_dir / previous.name)
    result.checkpoint, result.seconds, result.history = final, seconds, history
    return result
