"""Distributed batch pseudo-labelling with Ray Data: a checkpoint + images -> one mask each.

    ids (+ labels.json) -> decode (CPU tasks) -> maps (actor pool, model loaded once per actor,
    a GPU each when the cluster has GPUs) -> CRF + background score + PNG write (CPU tasks)

The stages stream: Ray Data's backpressure keeps only a few batches of images and maps in
flight. The actor pool never takes every CPU: at least ``RESERVED_TASK_CPUS`` stay free for the
decode and CRF tasks (actors on CPU get a fractional share when needed), the known way for an
actor pool to starve its own input.

Outputs go to ``OUT/<id>.png`` (``OUT/maps/<id>.npz`` with ``save_maps``), each written
atomically; a re-run skips ids whose mask exists and removes temporary files a killed run left,
so an interrupted run plus a re-run gives exactly the files of one clean run. Bad images are
listed with their reason in ``OUT/report.json``. ``OUT`` and the data may be local folders or
object-store URIs (``wsss.storage``).
"""

from __future__ import annotations

import io
import json
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from wsss.config import CamConfig, RefineConfig, TrackingConfig
from wsss.data.voc import (IMAGE_DIR, IMAGE_SUFFIXES, MASK_DIR, SPLIT_DIR, DatasetError,
                           decode_text, info_from_text, labels_from_text,
                           split_file as split_file_name, split_from_text)
from wsss.pseudo_label_tasks import (Job, CamExtractor, block_confusion, decode_batch,
                                     refine_and_write)
from wsss.stages import GRID_SAMPLES, REPORT_FILE, StageReport
from wsss.storage import Location

RESERVED_TASK_CPUS = 1.0
DECODERS_PER_WORKER = 2  # concurrent decode tasks per map actor: enough to keep it fed


@dataclass(frozen=True)
class PipelineOptions:
    """How the pipeline runs. ``cam_workers=None``: one per GPU, or half the CPUs."""

    cam_workers: int | None = None
    gpus_per_worker: float = 1.0
    save_maps: bool = False
    evaluate: bool = False
    max_image_side: int = 1024


@dataclass(frozen=True)
class WorkerPlan:
    """Resources of the map actor pool: ``workers`` actors of ``cpus`` / ``gpus`` each,
    ``threads`` torch threads each."""

    workers: int
    cpus: float
    gpus: float
    threads: int

    @property
    def device(self) -> str:
        return "cuda" if self.gpus > 0 else "cpu"


@dataclass
class PseudoLabelReport(StageReport):
    """``StageReport`` plus the merged confusion matrix (``--eval``) and per-node counts."""

    confusion: Any = None
    scores: Any = None
    nodes: dict[str, dict[str, int]] = field(default_factory=dict)


def plan_workers(cluster: dict[str, float], options: PipelineOptions) -> WorkerPlan:
    """Size the actor pool from the cluster's resources (``ray.cluster_resources()``)."""
    cpus, gpus = float(cluster.get("CPU", 0)), float(cluster.get("GPU", 0))
    use_gpu = options.gpus_per_worker > 0 and gpus >= options.gpus_per_worker
    if options.cam_workers is not None:
        workers = options.cam_workers
    elif use_gpu:
        workers = int(gpus // options.gpus_per_worker)
    else:
        workers = max(1, int(cpus // 2))
    if workers < 1:
        raise ValueError(f"--cam-workers must be >= 1, got {workers}")
    spare = cpus - RESERVED_TASK_CPUS
    if spare <= 0:
        raise ValueError(f"the cluster has {cpus:g} CPU(s); pseudo-labelling needs at least "
                         f"{RESERVED_TASK_CPUS + 1:g} (map workers + decode/CRF tasks)")
    share = min(1.0 if use_gpu else max(1.0, math.floor(spare / workers)), spare / workers)
    # Torch threads: a CPU actor's fair share of all cores, the reserved one included. The
    # decode and CRF tasks need far less CPU than the forward pass, so the actor's threads
    # use that core whenever the tasks leave it idle; the reservation still keeps the tasks
    # schedulable (a scheduling guarantee, not a thread limit).
    threads = max(1, int(share if use_gpu else cpus // workers))
    return WorkerPlan(workers, round(share, 3), options.gpus_per_worker if use_gpu else 0.0,
                      threads)


# -- the dataset index ------------------------------------------------------------------------
def read_rows(data: Location, split: str, only: Sequence[str] | None = None
              ) -> tuple[Any, dict[str, list[int]], list[dict]]:
    """(DatasetInfo, labels.json, one row per id: ``id``, ``image_file``, ``mask_file``), for
    every id of ``split`` or, with ``only``, for those ids (each must be in the split).

    Folders are listed once, so no per-image existence checks hit the object store; an id
    without an image gets an empty ``image_file`` and fails in the decode stage.
    """
    if not data.is_dir():
        raise DatasetError(f"dataset folder not found: {data.uri}")
    classes = _read_text(data, "classes.txt") if data.is_file("classes.txt") else None
    info = info_from_text(data.uri, classes, data.name("classes.txt"))
    split_file = (SPLIT_DIR, split_file_name(split))
    if not data.is_file(*split_file):
        available = [n[:-4] for n in data.list_files(SPLIT_DIR) if n.endswith(".txt")]
        raise DatasetError(f"split file not found: {data.name(*split_file)} (available "
                           f"splits: {', '.join(available) or 'none'})")
    ids = split_from_text(_read_text(data, *split_file), data.name(*split_file))
    if only is not None:
        missing = sorted(set(only) - set(ids))
        if missing:
            raise DatasetError(f"{data.name(*split_file)}: {len(missing)} requested id(s) not "
                               f"in the split, e.g. {missing[:3]}")
        ids = list(only)
    labels = {}
    if data.is_file("labels.json"):
        labels = labels_from_text(_read_text(data, "labels.json"), data.name("labels.json"), info)
    images = _by_id(data.list_files(IMAGE_DIR), IMAGE_SUFFIXES)
    masks = _by_id(data.list_files(MASK_DIR), (".png",))
    rows = [{"id": i, "image_file": images.get(i, ""), "mask_file": masks.get(i, "")}
            for i in ids]
    return info, labels, rows


def _read_text(data: Location, *parts: str) -> str:
    return decode_text(data.read_bytes(*parts), data.name(*parts))


def _by_id(names: list[str], suffixes: tuple[str, ...]) -> dict[str, str]:
    """File name per id (stem), preferring the earlier suffix."""
    found: dict[str, str] = {}
    for suffix in reversed(suffixes):
        for name in names:
            if name.endswith(suffix):
                found[name[:-len(suffix)]] = name
    return found


# -- the pipeline -----------------------------------------------------------------------------
def build_dataset(rows: list[dict], job: Job, state: Any, plan: WorkerPlan) -> Any:
    """The lazy Ray Dataset: decode -> maps (actor pool) -> masks written; small rows out."""
    import ray

    batch = job.cam.batch_size
    ds = ray.data.from_items(rows, override_num_blocks=max(1, math.ceil(len(rows) / batch)))
    # A bounded decode pool (its size differs from the actor pool's) also keeps Ray Data from
    # fusing decoding into the map actors: they only compute maps.
    decoders = ray.data.TaskPoolStrategy(size=DECODERS_PER_WORKER * plan.workers)
    ds = ds.map_batches(decode_batch, fn_kwargs={"job": job}, batch_size=batch,
                        compute=decoders, num_cpus=1)
    ds = ds.map_batches(CamExtractor, batch_size=batch,
                        compute=ray.data.ActorPoolStrategy(size=plan.workers),
                        fn_constructor_kwargs={"state": state, "job": job,
                                               "device": plan.device, "threads": plan.threads},
                        num_cpus=plan.cpus, num_gpus=plan.gpus or None)
    return ds.map_batches(refine_and_write, fn_kwargs={"job": job}, batch_size=batch,
                          num_cpus=1)


def consume(ds: Any, job: Job, report: PseudoLabelReport) -> None:
    """Run the pipeline, collecting statuses, node counts and per-block confusion matrices."""
    from wsss.metrics import ConfusionMatrix

    report.confusion = ConfusionMatrix(job.info.num_classes) if job.evaluate else None
    start = time.perf_counter()
    for block in ds.iter_batches(batch_size=None, batch_format="numpy"):
        if "first_block_s" not in report.extra:  # start-up: planning, actors, first batch
            report.extra.update(first_block_s=time.perf_counter() - start,
                                first_block_images=len(block["id"]))
        for sample_id, status, reason, cam_node, refine_node in zip(
                block["id"], block["status"], block["reason"], block["cam_node"],
                block["refine_node"]):
            if status == "done":
                report.done += 1
                _count(report.nodes, "cam", str(cam_node))
                _count(report.nodes, "refine", str(refine_node))
            else:
                report.failed.append((str(sample_id), str(reason)))
        report.extra["cam_seconds"] = report.extra.get("cam_seconds", 0.0) + float(
            np.sum(block["cam_seconds"]))
        if job.evaluate:
            report.confusion.merge(block_confusion(block["confusion"], job.info.num_classes))


def _count(nodes: dict[str, dict[str, int]], stage: str, node: str) -> None:
    per_stage = nodes.setdefault(stage, {})
    per_stage[node] = per_stage.get(node, 0) + 1


def run_pseudo_label(checkpoint: str | Path, data: str | Path, split: str, out: str | Path,
                     cam_cfg: CamConfig = CamConfig(), refine_cfg: RefineConfig = RefineConfig(),
                     tracking_cfg: TrackingConfig = TrackingConfig(),
                     options: PipelineOptions = PipelineOptions(),
                     ids: Sequence[str] | None = None) -> PseudoLabelReport:
    """Write ``OUT/<id>.png`` pseudo-masks for every image of ``split`` (or only ``ids``)
    with Ray Data.

    Ray must be initialised (``wsss.ray_utils.init_ray``). Records one MLflow run. Raises
    ConfigError before any work when ``refine_cfg`` is out of range for
    ``options.max_image_side`` (``RefineConfig.validate_for``).
    """
    import ray

    from wsss import tracking

    refine_cfg.validate_for(options.max_image_side)
    data_loc, out_loc = Location.parse(data), Location.parse(out)
    state = _load_checkpoint(checkpoint)
    info, labels, rows = read_rows(data_loc, split, ids)
    _check_classes(state, info, checkpoint)
    job = Job(data_loc, out_loc, info, state["method"], dict(state["method_params"]), cam_cfg,
              refine_cfg, labels, options.max_image_side, options.save_maps, options.evaluate)
    plan = plan_workers(ray.cluster_resources(), options)
    out_loc.make_dirs()
    out_loc.remove_temp_files()
    written = {n[:-4] for n in out_loc.list_files() if n.endswith(".png")}
    todo = [r for r in rows if r["id"] not in written]
    report = PseudoLabelReport(reused=len(rows) - len(todo))
    params = _params(checkpoint, data_loc, split, out_loc, cam_cfg, refine_cfg, options, plan)
    with tracking.start_run(f"pseudo-label-{split}", experiment=tracking_cfg.experiment,
                            uri=tracking_cfg.uri, params=params, tags={"stage": "pseudo-label"},
                            local_dir=out_loc.root if out_loc.is_local else None) as run:
        start = time.perf_counter()
        if todo:  # Ray Data shows its own progress bars per stage
            consume(build_dataset(todo, job, ray.put(state), plan), job, report)
        report.seconds = time.perf_counter() - start
        _finish(report, job, plan, [r["id"] for r in todo])
    if report.note_unsent(run.info.run_id):
        _write_report(job, report)
    return report


def _load_checkpoint(checkpoint: str | Path) -> dict[str, Any]:
    """The checkpoint dict (local file or URI), loaded safely in the driver."""
    from wsss.train.checkpoint import load_checkpoint_state

    text = str(checkpoint)
    if "://" not in text or text.startswith("file://"):
        return load_checkpoint_state(Location.parse(text).root if "://" in text else text)
    loc = Location.parse(text.rsplit("/", 1)[0])
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / "model.pt"
        local.write_bytes(loc.read_bytes(text.rsplit("/", 1)[1]))
        return load_checkpoint_state(local)


def _check_classes(state: dict[str, Any], info: Any, checkpoint: str | Path) -> None:
    """CheckpointError before any work unless the checkpoint fits the dataset's classes and
    rebuilds into its method's model (the map actors rebuild it the same way)."""
    from wsss.train.checkpoint import check_classes, classifier_from_state

    check_classes(state, info.num_fg, checkpoint)
    classifier_from_state(state, "cpu", source=checkpoint)


def _params(checkpoint: Any, data: Location, split: str, out: Location, cam_cfg: CamConfig,
            refine_cfg: RefineConfig, options: PipelineOptions, plan: WorkerPlan) -> dict:
    from wsss.config import to_dict

    return to_dict({"checkpoint": str(checkpoint), "data": data.uri, "split": split,
                    "out": out.uri, "cams": cam_cfg, "refine": refine_cfg, "options": options,
                    "workers": plan})


# -- the end: report, scores, MLflow ----------------------------------------------------------
def _finish(report: PseudoLabelReport, job: Job, plan: WorkerPlan, todo: list[str]) -> None:
    from wsss import tracking

    rate = report.done / max(report.seconds, 1e-9)
    cam_busy = report.extra.get("cam_seconds", 0.0)
    if report.extra.get("first_block_s") and report.done > report.extra["first_block_images"]:
        after = report.seconds - report.extra["first_block_s"]  # once the pipeline is full
        report.extra["steady_images_per_s"] = round(
            (report.done - report.extra["first_block_images"]) / max(after, 1e-9), 3)
    report.extra.update(images_per_s=round(rate, 3), workers=plan.workers,
                        cam_images_per_busy_s=round(report.done / cam_busy, 3) if cam_busy else 0,
                        nodes=report.nodes)
    metrics = {"images_done": report.done, "images_skipped": report.reused,
               "images_failed": len(report.failed), "images_per_s": rate}
    if report.confusion is not None and report.confusion.total:
        scores = report.confusion.compute(list(job.info.class_names),
                                          background=0 if job.info.has_background else None)
        report.scores = scores
        report.extra.update(miou=scores.miou, pixel_accuracy=scores.pixel_accuracy,
                            scored_pixels=report.confusion.total)
        metrics.update(scores.summary())
        tracking.log_text(scores.table(), "scores.txt")
    _write_report(job, report)
    tracking.log_metrics(metrics)
    tracking.log_text(json.dumps(report.to_dict(), indent=2, default=str), REPORT_FILE)
    failed = {i for i, _ in report.failed}
    _log_sample_grid(job, [i for i in todo if i not in failed][:GRID_SAMPLES])


def _write_report(job: Job, report: PseudoLabelReport) -> None:
    job.out.write_bytes(json.dumps(report.to_dict(), indent=2, default=str).encode(),
                        REPORT_FILE)


def _log_sample_grid(job: Job, ids: list[str]) -> None:
    """A grid of a few images, their masks and ground truth as an MLflow artifact."""
    from wsss import tracking
    from wsss.pseudo_label_tasks import decode_one
    from wsss.viz import overlay_grid

    if not ids:
        return
    images, masks, gts = [], [], []
    for sample_id in ids:
        image_file, mask_file = _find(job, sample_id)
        image, gt, _ = decode_one(job, sample_id, image_file, mask_file)
        images.append(image)
        masks.append(np.asarray(_png(io.BytesIO(job.out.read_bytes(f"{sample_id}.png")))))
        gts.append(gt if gt.size else None)
    maps = [np.zeros((0, *im.shape[:2]), np.float32) for im in images]
    with tempfile.TemporaryDirectory() as tmp:
        path = overlay_grid(images, maps, masks, gts, list(job.info.class_names),
                            Path(tmp) / "samples.png", row_titles=ids)
        tracking.log_artifact(path)


def _find(job: Job, sample_id: str) -> tuple[str, str]:
    image = next((f"{sample_id}{s}" for s in IMAGE_SUFFIXES
                  if job.data.is_file(IMAGE_DIR, f"{sample_id}{s}")), "")
    mask = f"{sample_id}.png" if job.data.is_file(MASK_DIR, f"{sample_id}.png") else ""
    return image, mask


def _png(handle: io.BytesIO) -> Any:
    from PIL import Image

    with Image.open(handle) as im:
        return im.copy()
