"""The affinity step (``wsss train-affinity``): seeds from saved maps, then the affinity network
trained on them with Ray Train (AffinityNet, Ahn & Kwak, CVPR 2018).

    maps folder (``wsss cam`` of the train split) --seed_mask--> OUT/seeds/<id>.png
        --Ray Train--> OUT/model.pt (the checkpoint ``refine.affinity`` takes)

Seeds already written are kept (a re-run resumes), and the training run resumes from its last
Ray Train checkpoint.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from wsss import tracking
from wsss.config import AffinityConfig, ExperimentConfig, RefineConfig, TrackingConfig
from wsss.core.affinity import crf_seed_mask, seed_mask
from wsss.data.reader import DatasetReader
from wsss.pipeline.columns import objects
from wsss.pipeline.executors import LocalExecutor
from wsss.pipeline.masks import maps_job
from wsss.pipeline.report import StageReport, collect, pending, publish, tracked_stage
from wsss.pipeline.samples import step_picture
from wsss.pipeline.steps import INPUT_ERRORS, Job, Step, decode, load_saved_maps, write_outputs
from wsss.storage import Location
from wsss.train.affinity import TrainResult, scan_affinity_data, train_affinity

SEEDS_DIR = "seeds"


def make_seeds(batch: dict[str, np.ndarray], job: Job, affinity: AffinityConfig,
               crf: RefineConfig) -> dict[str, np.ndarray]:
    """Adds ``mask``: each row's seed mask uint8 [H, W] (255 = no seed) from ``affinity``'s
    thresholds: ``wsss.core.affinity.crf_seed_mask`` with ``crf``'s kernels when
    ``affinity.seed_crf``, else ``seed_mask``; a row whose maps cannot be seeded fails."""
    masks, errors = [], list(batch["error"])
    for row, error in enumerate(errors):
        mask = np.zeros((0, 0), np.uint8)
        if not error:
            maps = np.asarray(batch["maps"][row], dtype=np.float32)
            class_ids = [int(c) for c in batch["class_ids"][row]]
            thresholds = (affinity.fg_threshold, affinity.bg_threshold, affinity.margin)
            has_background = job.reader.info.has_background
            try:
                mask = (crf_seed_mask(batch["image"][row], maps, class_ids, has_background,
                                      *thresholds, crf) if affinity.seed_crf
                        else seed_mask(maps, class_ids, has_background, *thresholds))
            except INPUT_ERRORS as err:
                errors[row] = str(err)
        masks.append(mask)
    return {**batch, "error": np.asarray(errors, dtype=object), "mask": objects(masks)}


def seed_steps(job: Job, affinity: AffinityConfig, crf: RefineConfig) -> list[Step]:
    """decode -> saved maps -> seed masks -> written (``job.out``)."""
    return [Step(decode, {"job": job}), Step(load_saved_maps, {"job": job}),
            Step(make_seeds, {"job": job, "affinity": affinity, "crf": crf}),
            Step(write_outputs, {"job": job})]


def write_seeds(cfg: ExperimentConfig, cams_dir: str | Path, seeds: Location,
                picture: Location | None, ids: Sequence[str] | None = None) -> StageReport:
    """Write ``seeds/<id>.png`` for the ids of ``cfg.data.train_split`` (or only ``ids``)
    without one yet and its ``report.json``; with ``picture``, also ``picture/samples.png``
    (images, maps, seeds) and the report logged to the active MLflow run."""
    reader = DatasetReader.open(cfg.data.root, cfg.data.max_image_side)
    job = maps_job(cams_dir, reader, RefineConfig(crf=False), seeds, evaluate=False)
    refs = reader.index(cfg.data.train_split, ids)
    report = StageReport()
    todo = pending(refs, seeds, ".png", report)
    steps = seed_steps(job, cfg.affinity, cfg.refine)
    collect(LocalExecutor(cfg.cams.batch_size, "seeds").run(todo, steps), report)
    if picture is None:
        report.write(seeds)
        return report
    grid = step_picture(refs, steps[:-1], reader.info.class_names, picture)
    publish(report, seeds, "seeds", grid)
    return report


def run_train_affinity(cfg: ExperimentConfig, cams_dir: str | Path, checkpoint: str | Path,
                       out_dir: str | Path, run_name: str | None = None,
                       parent_run_id: str | None = None,
                       ids: Sequence[str] | None = None) -> TrainResult:
    """Seeds from the maps in ``cams_dir``, then the affinity network trained on them from the
    classifier ``checkpoint``'s backbone, inside one MLflow run; returns the ``TrainResult``
    (final checkpoint ``<out_dir>/<run_name>/model.pt``). ``ids``: train on these ids of
    the training split only (a sweep's scored images).

    Raises:
        FileNotFoundError: the maps folder does not exist.
        DatasetError: no training image has a readable image and seed mask.
        CheckpointError: ``checkpoint`` is not a classifier checkpoint.
    """
    run_name = run_name or f"affinity-{time.strftime('%Y%m%d-%H%M%S')}"
    tracking_cfg = TrackingConfig(tracking.resolve_tracking_uri(cfg.tracking.uri),
                                  cfg.tracking.experiment)
    out = Path(out_dir) / run_name
    seeds = Location.parse(out / SEEDS_DIR)
    params = {**cfg.to_dict(), "cams": str(cams_dir), "checkpoint": str(checkpoint)}
    with tracked_stage(run_name, "train-affinity", tracking_cfg, params, Location.parse(out),
                       parent_run_id) as stage:
        seeded = write_seeds(cfg, cams_dir, seeds, Location.parse(out), ids)
        data = scan_affinity_data(cfg, out / SEEDS_DIR, ids)
        result = train_affinity(cfg, out / SEEDS_DIR, checkpoint, out, run_name,
                                mlflow_run_id=stage.run.info.run_id,
                                tracking_uri=tracking_cfg.uri, data=data)
        tracking.log_metrics({"train_seconds": result.seconds, "skipped": len(result.skipped),
                              "seed_images": seeded.done})
        tracking.log_text(str(result.checkpoint), "checkpoint_path.txt")
        if result.skipped or seeded.failed:
            tracking.log_text(json.dumps({"seeds": seeded.failed, "training": result.skipped},
                                         indent=2), "skipped.json")
    return result
