"""The segmenter step (``wsss train-seg``): train DeepLab on pseudo-masks with Ray Train."""

from __future__ import annotations

import json
import time
from pathlib import Path

from wsss import tracking
from wsss.config import ExperimentConfig, TrackingConfig
from wsss.pipeline.report import tracked_stage
from wsss.storage import Location
from wsss.train.classifier import TrainingData
from wsss.train.segmenter import TrainResult, segmenter_data_for, train_segmenter


def run_train_segmenter(cfg: ExperimentConfig, pseudo_dir: str | Path, out_dir: str | Path,
                        run_name: str | None = None, parent_run_id: str | None = None,
                        data: TrainingData | None = None) -> TrainResult:
    """Train ``cfg.segmenter`` on ``pseudo_dir`` inside an MLflow run; returns the
    ``TrainResult`` (final checkpoint ``<out_dir>/<run_name>/model.pt`` and per-epoch history).

    The splits are scanned once, before the MLflow run opens (``data``: the caller's
    ``wsss.train.segmenter.scan_segmenter_data``, else scanned here), so a dataset that cannot
    be trained on raises ``DatasetError`` without leaving a run behind.
    """
    data = segmenter_data_for(cfg, pseudo_dir, data)
    run_name = run_name or f"seg-{cfg.segmenter.arch}-{time.strftime('%Y%m%d-%H%M%S')}"
    tracking_cfg = TrackingConfig(tracking.resolve_tracking_uri(cfg.tracking.uri),
                                  cfg.tracking.experiment)
    out = Path(out_dir) / run_name
    params = {**cfg.to_dict(), "pseudo_dir": str(pseudo_dir)}
    with tracked_stage(run_name, "train-seg", tracking_cfg, params, Location.parse(out),
                       parent_run_id) as stage:
        result = train_segmenter(cfg, pseudo_dir, out, run_name,
                                 mlflow_run_id=stage.run.info.run_id,
                                 tracking_uri=tracking_cfg.uri, data=data)
        tracking.log_metrics({"train_seconds": result.seconds, "skipped": len(result.skipped)})
        tracking.log_text(str(result.checkpoint), "checkpoint_path.txt")
        if result.skipped:
            tracking.log_text(json.dumps(result.skipped, indent=2), "skipped.json")
    return result
