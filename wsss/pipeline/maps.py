"""The maps step (``wsss cam``): a classifier checkpoint + a split -> ``<out>/<id>.npz``.

Each map file holds the multi-scale (+ flip) localization maps of the classes present in the
image (``wsss.core.maps``), float16 [K, H, W] at the image's size, and their class ids.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from wsss.config import CamConfig, RefineConfig, TrackingConfig
from wsss.core.precision import check_precision
from wsss.data.reader import DatasetReader
from wsss.pipeline.executors import LocalExecutor
from wsss.pipeline.manifest import maps_manifest
from wsss.pipeline.report import StageReport, collect, pending, publish, tracked_stage
from wsss.pipeline.samples import step_picture
from wsss.pipeline.steps import Job, Step, map_steps, mask_steps, write_outputs
from wsss.storage import Location
from wsss.train.checkpoint import open_checkpoint


def run_cams(checkpoint: str | Path, data_root: str | Path, split: str, out_dir: str | Path,
             cam_cfg: CamConfig = CamConfig(), tracking_cfg: TrackingConfig = TrackingConfig(),
             device: str | None = None, max_image_side: int = 1024,
             overwrite: bool = False) -> StageReport:
    """Write ``<out_dir>/<id>.npz`` maps for every image of ``split`` whose file is not there
    yet (resume), in batches of ``cam_cfg.batch_size`` in this process; records one MLflow run.

    ``checkpoint``: a path or URI (``wsss.train.checkpoint.open_checkpoint``). The folder's
    ``manifest.json`` records the job (the checkpoint's content hash, the data, the map
    settings); ``overwrite`` removes another job's maps and recomputes them all.

    Raises:
        DatasetError: the dataset folder or split is bad.
        CheckpointError: the checkpoint is unreadable or made for other classes.
        ConfigError: ``cams.precision`` that ``device`` cannot do (fp16 on CPU).
        JobConflict: ``out_dir`` holds maps of another job (and no ``overwrite``).
    Bad images are skipped and listed in ``<out_dir>/report.json``.
    """
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    check_precision(device, cam_cfg.precision, "cams.precision")
    reader = DatasetReader.open(data_root, max_image_side)
    ckpt = open_checkpoint(checkpoint, "classifier")
    state = ckpt.state
    out = Location.parse(out_dir)
    job = Job(reader, state["method"], dict(state["method_params"]), cam=cam_cfg, maps=out)
    steps = [*map_steps(job, ckpt), Step(write_outputs, {"job": job})]
    refs = reader.index(split)
    report = StageReport()
    todo = pending(refs, out, ".npz", report, maps_manifest(ckpt.sha256, reader, cam_cfg),
                   overwrite)
    params = {"checkpoint": str(checkpoint), "checkpoint_sha256": ckpt.sha256,
              "data": str(data_root), "split": split, "method": state["method"],
              "cams": cam_cfg}
    with tracked_stage(f"cam-{split}", "cam", tracking_cfg, params, out) as stage:
        executor = LocalExecutor(cam_cfg.batch_size, "maps", device)
        collect(executor.run(todo, steps), report)
        report.extra.update(method=state["method"], method_params=state["method_params"])
        masks_job = dataclasses.replace(job, refine=RefineConfig(crf=False))
        grid = step_picture(refs, mask_steps(masks_job)[:-1], reader.info.class_names, out)
        publish(report, out, "maps", grid)
        stage.report = report
    return report
