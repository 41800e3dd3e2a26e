"""Segmentation stages: maps -> refined pseudo-masks, segmenter training, prediction, scoring.

Like ``wsss.stages``, each stage is a plain function that records one MLflow run; batch stages
write one palette PNG per image atomically, skip ids whose file already exists (resume), list
bad inputs in ``report.json`` and score what they wrote against ground truth when it exists.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from wsss.config import ExperimentConfig, RefineConfig, TrackingConfig
from wsss.data.decode import upright_size
from wsss.data.voc import DatasetError, VOCDataset, load_mask
from wsss.metrics import ConfusionMatrix, SegmentationScores
from wsss.native_crf import NativeCrash
from wsss.stages import GRID_SAMPLES, REPORT_FILE, StageReport, _plain
from wsss.viz import save_mask_png

if TYPE_CHECKING:
    from wsss.train.classifier import TrainingData

# one image's failure: a bad input, or its dense CRF crashed in the worker process
_INPUT_ERRORS = (DatasetError, FileNotFoundError, ValueError, NativeCrash)


# -- refine -----------------------------------------------------------------------------------
def run_refine(cams_dir: str | Path, data_root: str | Path, split: str, out_dir: str | Path,
               refine_cfg: RefineConfig = RefineConfig(),
               tracking_cfg: TrackingConfig = TrackingConfig(),
               max_image_side: int = 1024) -> StageReport:
    """Write ``<out_dir>/<id>.png`` pseudo-masks from ``<cams_dir>/<id>.npz`` maps.

    Each mask is ``wsss.refine.pseudo_mask`` of the image's maps (background score, dense CRF
    over the present classes, confidence marking with 255). The report's ``scores`` hold the
    masks' mIoU against ground truth (ids with a ground-truth mask only). Raises ConfigError
    before any work when ``refine_cfg`` is out of range (``RefineConfig.validate_for``).
    """
    from wsss import tracking
    from wsss.cams import load_maps
    from wsss.stages import make_pseudo_mask, maps_method

    refine_cfg.validate_for(max_image_side)
    dataset = VOCDataset(data_root, split, max_image_side=max_image_side)
    cams_dir, out_dir = Path(cams_dir), Path(out_dir)
    method = maps_method(cams_dir)

    def make(sample_id: str) -> np.ndarray:
        maps, class_ids = load_maps(cams_dir / f"{sample_id}.npz")
        return make_pseudo_mask(method, dataset, sample_id, maps, class_ids, refine_cfg)

    params = {"cams": str(cams_dir), "data": str(data_root), "split": split,
              "refine": refine_cfg}
    with tracking.start_run(f"refine-{split}", experiment=tracking_cfg.experiment,
                            uri=tracking_cfg.uri, params=_plain(params),
                            tags={"stage": "refine"}, local_dir=out_dir) as run:
        report = write_masks(dataset, out_dir, make, "refine")
        _finish(report, dataset, out_dir, "masks")
        grid = _mask_grid(dataset, cams_dir, out_dir)
        if grid is not None:
            tracking.log_artifact(grid)
    if report.note_unsent(run.info.run_id):
        report.write(out_dir)
    return report


# -- segmenter --------------------------------------------------------------------------------
def run_train_segmenter(cfg: ExperimentConfig, pseudo_dir: str | Path, out_dir: str | Path,
                        run_name: str | None = None, parent_run_id: str | None = None,
                        data: TrainingData | None = None) -> Any:
    """Train ``cfg.segmenter`` on ``pseudo_dir`` inside an MLflow run; returns the
    ``TrainResult`` (final checkpoint ``<out_dir>/<run_name>/model.pt`` and per-epoch history).

    The splits are scanned once, before the MLflow run opens (``data``: the caller's
    ``wsss.train.segmenter.scan_segmenter_data``, else scanned here), so a dataset that cannot
    be trained on raises ``DatasetError`` without leaving a run behind.
    """
    import json

    from wsss import tracking
    from wsss.train.segmenter import segmenter_data_for, train_segmenter

    data = segmenter_data_for(cfg, pseudo_dir, data)

    run_name = run_name or f"seg-{cfg.segmenter.arch}-{time.strftime('%Y%m%d-%H%M%S')}"
    uri = tracking.resolve_tracking_uri(cfg.tracking.uri)
    params = {**cfg.to_dict(), "pseudo_dir": str(pseudo_dir)}
    with tracking.start_run(run_name, experiment=cfg.tracking.experiment, uri=uri,
                            params=params, tags={"stage": "train-seg"},
                            parent_run_id=parent_run_id,
                            local_dir=Path(out_dir) / run_name) as run:
        result = train_segmenter(cfg, pseudo_dir, Path(out_dir) / run_name, run_name,
                                 mlflow_run_id=run.info.run_id, tracking_uri=uri, data=data)
        tracking.log_metrics({"train_seconds": result.seconds, "skipped": len(result.skipped)})
        tracking.log_text(str(result.checkpoint), "checkpoint_path.txt")
        if result.skipped:
            tracking.log_text(json.dumps(result.skipped, indent=2), "skipped.json")
    return result


def run_predict(checkpoint: str | Path, data_root: str | Path, split: str,
                out_dir: str | Path, tracking_cfg: TrackingConfig = TrackingConfig(),
                device: str | None = None, max_image_side: int = 1024,
                crf: RefineConfig | None = None) -> StageReport:
    """Write the segmenter's predicted masks ``<out_dir>/<id>.png`` for every image of
    ``split`` (full image size, predicted at the segmenter's training ``data.image_scale``);
    scored against ground truth where it exists.

    ``crf``: refine each prediction with the dense CRF of these ``crf_*`` settings
    (``wsss.train.segmenter.predict_mask``); an image whose CRF fails is skipped and listed in
    the report. Raises ConfigError before any work when ``crf`` is out of range for
    ``max_image_side``.
    """
    from wsss import tracking
    from wsss.train.checkpoint import CheckpointError, trained_image_scale
    from wsss.train.segmenter import load_segmenter, predict_mask

    if crf is not None:
        crf.validate_for(max_image_side)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, state = load_segmenter(checkpoint, device)
    dataset = VOCDataset(data_root, split, max_image_side=max_image_side)
    if state["num_classes"] != dataset.info.num_classes:
        raise CheckpointError(f"{checkpoint} predicts {state['num_classes']} classes but "
                              f"{data_root} has {dataset.info.num_classes}")

    image_scale = trained_image_scale(state)

    def make(sample_id: str) -> np.ndarray:
        return predict_mask(model, dataset.load_image(sample_id), image_scale, crf, device)

    params = {"checkpoint": str(checkpoint), "data": str(data_root), "split": split,
              "arch": state["arch"], "crf": crf is not None}
    if crf is not None:
        params["refine"] = crf
    with tracking.start_run(f"predict-{split}", experiment=tracking_cfg.experiment,
                            uri=tracking_cfg.uri, params=_plain(params),
                            tags={"stage": "predict"}, local_dir=out_dir) as run:
        report = write_masks(dataset, Path(out_dir), make, "predict")
        _finish(report, dataset, Path(out_dir), "predicted")
    if report.note_unsent(run.info.run_id):
        report.write(Path(out_dir))
    return report


# -- scoring ----------------------------------------------------------------------------------
def run_eval_masks(masks_dir: str | Path, data_root: str | Path, split: str,
                   tracking_cfg: TrackingConfig = TrackingConfig(),
                   max_image_side: int = 1024) -> tuple[SegmentationScores, StageReport]:
    """Score ``<masks_dir>/<id>.png`` masks (refined or predicted) against ground truth."""
    from wsss import tracking

    dataset = VOCDataset(data_root, split, max_image_side=max_image_side)
    if not Path(masks_dir).is_dir():
        raise FileNotFoundError(f"masks folder not found: {masks_dir}")
    start = time.perf_counter()
    scores, report = score_masks(dataset, Path(masks_dir))
    report.seconds = time.perf_counter() - start
    params = {"masks": str(masks_dir), "data": str(data_root), "split": split}
    with tracking.start_run(f"eval-masks-{split}", experiment=tracking_cfg.experiment,
                            uri=tracking_cfg.uri, params=params, tags={"stage": "eval"}):
        tracking.log_metrics({**scores.summary(), "images_scored": report.done,
                              "images_failed": len(report.failed)})
        tracking.log_text(scores.table(), "scores.txt")
    return scores, report


def score_masks(dataset: VOCDataset, masks_dir: Path,
                ids: Sequence[str] | None = None) -> tuple[SegmentationScores, StageReport]:
    """Confusion of ``<masks_dir>/<id>.png`` vs ground truth over ``ids`` (default: all).

    Ids without a ground-truth mask are passed over; unreadable or missing masks are listed
    in the report's ``failed``. ``report.done`` counts the scored images.
    """
    info = dataset.info
    confusion = ConfusionMatrix(info.num_classes)
    report = StageReport()
    for sample_id in dataset.ids if ids is None else ids:
        if dataset.mask_path(sample_id) is None:
            continue
        try:
            path = masks_dir / f"{sample_id}.png"
            if not path.is_file():
                raise FileNotFoundError(f"mask not found: {path}")
            with Image.open(path) as im:
                width, height = upright_size(im)
            size = (height, width)
            pred = load_mask(path, size, info.num_classes, dataset.max_image_side)
            gt = dataset.load_mask(sample_id, pred.shape)
        except _INPUT_ERRORS as err:
            report.failed.append((sample_id, str(err)))
            continue
        confusion.update(pred, gt)
        report.done += 1
    scores = confusion.compute(list(info.class_names),
                               background=0 if info.has_background else None)
    return scores, report


# -- shared steps -----------------------------------------------------------------------------
def write_masks(dataset: VOCDataset, out_dir: Path, make: Callable[[str], np.ndarray],
                what: str) -> StageReport:
    """Write ``make(id)`` (uint8 [H, W]) as ``<out_dir>/<id>.png`` for ids not yet written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    report, start = StageReport(), time.perf_counter()
    todo = [i for i in dataset.ids if not (out_dir / f"{i}.png").is_file()]
    report.reused = len(dataset.ids) - len(todo)
    for sample_id in tqdm(todo, unit="img", desc=what, disable=None):
        try:
            mask = make(sample_id)
        except _INPUT_ERRORS as err:
            report.failed.append((sample_id, str(err)))
            continue
        save_mask_png(out_dir / f"{sample_id}.png", mask)
        report.done += 1
    report.seconds = time.perf_counter() - start
    return report


def _finish(report: StageReport, dataset: VOCDataset, out_dir: Path, what: str) -> None:
    """Score the written masks, write ``report.json`` and log both to the active run."""
    from wsss import tracking

    written = [i for i in dataset.ids if (out_dir / f"{i}.png").is_file()]
    scores, scored = score_masks(dataset, out_dir, written)
    report.extra["scored"] = scored.done
    if scored.failed:  # masks written, but their ground truth could not be read
        report.extra["not_scored"] = [{"id": i, "reason": r} for i, r in scored.failed]
    if scored.done:
        report.extra["miou"] = scores.miou
        report.extra["pixel_accuracy"] = scores.pixel_accuracy
        tracking.log_metrics(scores.summary())
        tracking.log_text(scores.table(), "scores.txt")
    report.write(out_dir)
    tracking.log_metrics({f"{what}_done": report.done, f"{what}_failed": len(report.failed),
                          "images_per_s": report.done / max(report.seconds, 1e-9)})
    tracking.log_artifact(out_dir / REPORT_FILE)


def _mask_grid(dataset: VOCDataset, cams_dir: Path, masks_dir: Path) -> Path | None:
    """A PNG of a few images with their maps, refined masks and ground truth (for MLflow)."""
    from wsss.cams import load_maps
    from wsss.viz import overlay_grid

    ids = [i for i in dataset.ids if (masks_dir / f"{i}.png").is_file()
           and (cams_dir / f"{i}.npz").is_file()][:GRID_SAMPLES]
    if not ids:
        return None
    images = [dataset.load_image(i) for i in ids]
    maps = [load_maps(cams_dir / f"{i}.npz")[0] for i in ids]
    masks = [np.asarray(Image.open(masks_dir / f"{i}.png")) for i in ids]
    gt = [_ground_truth(dataset, i, im.shape[:2]) for i, im in zip(ids, images)]
    return overlay_grid(images, maps, masks, gt, list(dataset.info.class_names),
                        masks_dir / "samples.png", row_titles=ids)


def _ground_truth(dataset: VOCDataset, sample_id: str, size: tuple[int, int]) -> np.ndarray | None:
    """The ground truth uint8 [H, W] of ``sample_id`` for a picture; None when it has none or
    it is bad (the report already lists it)."""
    try:
        return dataset.load_mask(sample_id, size)
    except DatasetError:
        return None
