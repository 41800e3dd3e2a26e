"""Distributed batch pseudo-labelling on Ray Data: the map and mask steps as one stream.

    refs -> decode (CPU tasks) -> maps (actor pool, model loaded once per actor, a GPU each
    when the cluster has GPUs) -> masks (background score, saliency, CRF) -> PNG written and
    scored (CPU tasks)

``wsss pseudo-label`` runs them on a checkpoint; the CRF sweep's rescoring runs the mask steps
on saved maps (``rescore_maps``). The steps are those of ``wsss cam`` + ``wsss refine``
(``wsss.pipeline.steps``), so both executors write the same masks.

Outputs go to ``OUT/<id>.png`` (``OUT/maps/<id>.npz`` with ``save_maps``), each written
atomically; a re-run skips ids whose mask exists and removes temporary files a killed run left,
so an interrupted run plus a re-run gives exactly the files of one clean run. Bad images are
listed with their reason in ``OUT/report.json``. ``OUT`` and the data may be local folders or
object-store URIs (``wsss.storage``).
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import ray

from wsss.config import CamConfig, RefineConfig, TrackingConfig
from wsss.core.precision import check_precision
from wsss.core.scoring import Scorer, SegmentationScores
from wsss.data.reader import DatasetReader
from wsss.pipeline.executors import RayDataExecutor, WorkerPlan, plan_workers
from wsss.pipeline.manifest import Manifest, claim, maps_manifest, refine_job
from wsss.pipeline.report import StageReport, collect, pending, publish, tracked_stage
from wsss.pipeline.samples import sample_grid
from wsss.pipeline.steps import (Job, Step, decode, make_masks, map_steps, mask_steps,
                                 read_written_masks, write_outputs)
from wsss.storage import Location
from wsss.train.checkpoint import open_checkpoint

MAPS_DIR = "maps"


@dataclass(frozen=True)
class PipelineOptions:
    """How the pipeline runs. ``cam_workers=None``: one per GPU, or half the CPUs."""

    cam_workers: int | None = None
    gpus_per_worker: float = 1.0
    save_maps: bool = False
    evaluate: bool = False
    max_image_side: int = 1024
    overwrite: bool = False  # remove another job's outputs in OUT and recompute them


def run_pseudo_label(checkpoint: str | Path, data: str | Path, split: str, out: str | Path,
                     cam_cfg: CamConfig = CamConfig(), refine_cfg: RefineConfig = RefineConfig(),
                     tracking_cfg: TrackingConfig = TrackingConfig(),
                     options: PipelineOptions = PipelineOptions(),
                     ids: Sequence[str] | None = None) -> StageReport:
    """Write ``OUT/<id>.png`` pseudo-masks for every image of ``split`` (or only ``ids``)
    with Ray Data; with ``options.evaluate`` the report's ``scores`` hold this run's masks'
    scores against ground truth.

    Ray must be initialised (``wsss.ray_utils.init_ray``). Records one MLflow run. Raises
    ConfigError before any work when ``refine_cfg`` is out of range for
    ``options.max_image_side`` (``RefineConfig.validate_for``) or ``cam_cfg.precision`` is
    one the map actors' device cannot do (fp16 without GPUs), CheckpointError when the
    checkpoint (a path or URI) does not fit the dataset, JobConflict when ``out`` (or
    ``out/maps``) holds the outputs of another job (``manifest.json``; ``options.overwrite``
    removes them and recomputes).
    """
    refine_cfg.validate_for(options.max_image_side)
    reader = DatasetReader.open(data, options.max_image_side)
    out_loc = Location.parse(out)
    ckpt = open_checkpoint(checkpoint, "classifier")
    state = ckpt.state
    refs = reader.index(split, ids)
    job = Job(reader, state["method"], dict(state["method_params"]), cam_cfg, refine_cfg,
              out=out_loc, maps=out_loc.child(MAPS_DIR) if options.save_maps else None,
              evaluate=options.evaluate)
    steps = map_steps(job, ckpt, shipped=ray.put(state))  # checks it before any work
    plan = plan_workers(ray.cluster_resources(), options.cam_workers, options.gpus_per_worker)
    check_precision(plan.device, cam_cfg.precision, "cams.precision")
    steps += [Step(make_masks, {"job": job}), Step(write_outputs, {"job": job})]
    params = {"checkpoint": str(checkpoint), "checkpoint_sha256": ckpt.sha256,
              "data": reader.data.uri, "split": split, "out": out_loc.uri, "cams": cam_cfg,
              "refine": refine_cfg, "options": options, "workers": plan}
    report, scorer = StageReport(), Scorer(reader.info)
    maps = maps_manifest(ckpt.sha256, reader, cam_cfg)
    manifest = Manifest.of("pseudo-label", {**maps.job, "refine": refine_job(refine_cfg)})
    todo = pending(refs, out_loc, ".png", report, manifest, options.overwrite)
    if job.maps is not None:  # OUT/maps: the maps of `wsss cam` with the same job
        claim(job.maps, maps, ".npz", options.overwrite)
    with tracked_stage(f"pseudo-label-{split}", "pseudo-label", tracking_cfg, params,
                       out_loc) as stage:
        if todo:  # Ray Data shows its own progress bars per stage
            collect(RayDataExecutor(cam_cfg.batch_size, plan).run(todo, steps), report,
                    scorer if options.evaluate else None)
        report.add_scores(scorer)
        _throughput(report, plan)
        failed = {i for i, _ in report.failed}
        drawn = [r for r in todo if r.id not in failed]
        with tempfile.TemporaryDirectory() as tmp:  # OUT holds masks only: it is a dataset
            grid = sample_grid(drawn, [Step(decode, {"job": job}),
                                       Step(read_written_masks, {"job": job})],
                               reader.info.class_names, Path(tmp) / "samples.png")
            publish(report, out_loc, "images", grid)
        stage.report = report
    return report


def _throughput(report: StageReport, plan: WorkerPlan) -> None:
    """Rates of a finished run: overall, once the pipeline is full, and per busy map second."""
    extra = report.extra
    if extra.get("first_block_s") and report.done > extra["first_block_images"]:
        after = report.seconds - extra["first_block_s"]  # once the pipeline is full
        extra["steady_images_per_s"] = round(
            (report.done - extra["first_block_images"]) / max(after, 1e-9), 3)
    cam_busy = extra.get("cam_seconds", 0.0)
    extra.update(images_per_s=round(report.done / max(report.seconds, 1e-9), 3),
                 workers=plan.workers, nodes=report.nodes,
                 cam_images_per_busy_s=round(report.done / cam_busy, 3) if cam_busy else 0)


# -- rescoring saved maps (the CRF sweep) ------------------------------------------------------
@dataclass
class ChunkScores:
    """Scores of every id handed out so far and the failures."""

    images: int
    scores: SegmentationScores
    degenerate_share: float
    failed: list[tuple[str, str]] = field(default_factory=list)


def rescore_maps(maps: str | Path, data: str | Path, split: str, ids: Sequence[str],
                 refine_cfg: RefineConfig, method_name: str,
                 method_params: dict[str, Any] | None = None, chunks: int = 1,
                 batch_size: int = 8, max_image_side: int = 1024) -> Iterator[ChunkScores]:
    """Refine the saved maps of ``ids`` (in ``split``) with ``refine_cfg`` as ``method_name``
    turns maps into masks and score them; yield the running scores after each of ``chunks``
    equal chunks (in id order), so a sweep can report them and ASHA stop poor settings early.

    Ray must be initialised; inside a Tune trial the tasks stay in the trial's placement
    group. Ids whose image or maps cannot be read are listed in ``failed``. Raises ConfigError
    before any work when ``refine_cfg`` is out of range for ``max_image_side``.
    """
    refine_cfg.validate_for(max_image_side)
    reader = DatasetReader.open(data, max_image_side)
    refs = reader.index(split, ids)
    job = Job(reader, method_name, dict(method_params or {}), refine=refine_cfg,
              maps=Location.parse(maps), evaluate=True)
    steps = mask_steps(job)
    executor = RayDataExecutor(batch_size, placement_group=ray.util.get_current_placement_group(),
                               preserve_order=True)
    scorer, report = Scorer(reader.info), StageReport()
    bounds = [math.ceil(len(refs) * (k + 1) / chunks) for k in range(chunks)]
    for block in executor.run(refs, steps):
        collect([block], report, scorer)
        while bounds and report.done + len(report.failed) >= bounds[0]:
            bounds.pop(0)
            yield ChunkScores(report.done + len(report.failed), scorer.scores(),
                              scorer.degenerate_share, list(report.failed))
