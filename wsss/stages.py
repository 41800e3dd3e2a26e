"""The pipeline's stages as plain functions: train a classifier, extract maps, score masks.

The CLI, the demo and sweep trials all call these. Each stage records one MLflow run and returns
a small result object; batch stages skip bad inputs, list them in ``report.json`` and resume from
the files already written.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np
import torch
from tqdm import tqdm

from wsss.config import CamConfig, ExperimentConfig, RefineConfig, TrackingConfig
from wsss.data.transforms import normalize
from wsss.data.voc import DatasetError, VOCDataset, read_info

if TYPE_CHECKING:
    from wsss.train.classifier import TrainingData

REPORT_FILE = "report.json"
GRID_SAMPLES = 8


@dataclass
class StageReport:
    """Counts and problems of a batch stage (written to ``report.json``)."""

    done: int = 0
    reused: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The content of ``report.json``."""
        return {"done": self.done, "reused": self.reused, "seconds": round(self.seconds, 3),
                "failed": [{"id": i, "reason": r} for i, r in self.failed], **self.extra}

    def write(self, out_dir: Path) -> Path:
        return write_json_atomic(Path(out_dir) / REPORT_FILE, self.to_dict())

    def summary(self, what: str) -> str:
        rate = self.done / self.seconds if self.seconds > 0 else 0.0
        reused = f", {self.reused} already present" if self.reused else ""
        text = f"{what}: {self.done} done ({rate:.1f}/s){reused}, {len(self.failed)} failed"
        unsent = self.extra.get("mlflow_unsent")
        if unsent:
            text += (f"; MLflow did not answer: {unsent['records']} record(s) kept in "
                     f"{unsent['file']}")
        return text

    def note_unsent(self, run_id: str) -> bool:
        """Record in the report what of MLflow run ``run_id`` was kept locally (True if any)."""
        from wsss.tracking import kept_locally

        kept = kept_locally(run_id)
        if kept is not None:
            self.extra["mlflow_unsent"] = {"records": kept[0], "file": str(kept[1])}
        return kept is not None


def write_json_atomic(path: Path, data: Any) -> Path:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)
    return path


# -- train ------------------------------------------------------------------------------------
def run_train_classifier(cfg: ExperimentConfig, out_dir: str | Path,
                         run_name: str | None = None, parent_run_id: str | None = None,
                         data: TrainingData | None = None) -> Any:
    """Train ``cfg.method`` with Ray Train inside an MLflow run; returns ``ClassifierResult``.

    Multi-round methods (adversarial erasing) run one Ray Train run per round, each logged as a
    child MLflow run of the method's run; each round starts from the previous round's model.
    The splits are scanned once, before the MLflow run opens (``data``: the caller's
    ``wsss.train.classifier.scan_training_data(cfg)``, else scanned here), so a dataset that
    cannot be trained on raises ``DatasetError`` without leaving a run behind.
    """
    from wsss import tracking
    from wsss.train.classifier import training_data_for

    data = training_data_for(cfg, data)
    run_name = run_name or f"{cfg.method.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    uri = tracking.resolve_tracking_uri(cfg.tracking.uri)
    rounds = _num_rounds(cfg)
    with tracking.start_run(run_name, experiment=cfg.tracking.experiment, uri=uri,
                            params=cfg.to_dict(), tags={"stage": "train-cls"},
                            parent_run_id=parent_run_id,
                            local_dir=Path(out_dir) / run_name) as run:
        result = _train_rounds(cfg, Path(out_dir) / run_name, run_name, run.info.run_id, uri,
                               rounds, data)
        tracking.log_metrics({"train_seconds": result.seconds, "skipped": len(result.skipped)})
        tracking.log_text(str(result.checkpoint), "checkpoint_path.txt")
        if result.skipped:
            tracking.log_text(json.dumps(result.skipped, indent=2), "skipped.json")
    return result


def _num_rounds(cfg: ExperimentConfig) -> int:
    from wsss.methods import get_method

    return get_method(cfg.method.name)(1, cfg.method.params).num_rounds


def _train_rounds(cfg: ExperimentConfig, out_dir: Path, run_name: str, run_id: str, uri: str,
                  rounds: int, data: TrainingData) -> Any:
    from wsss import tracking
    from wsss.train.classifier import train_classifier

    if rounds == 1:
        return train_classifier(cfg, out_dir, run_name, mlflow_run_id=run_id, tracking_uri=uri,
                                data=data)
    previous, seconds, history = None, 0.0, []
    for k in range(rounds):
        name = f"{run_name}-round{k + 1}"
        with tracking.start_run(name, experiment=cfg.tracking.experiment, uri=uri,
                                params={"round": k + 1}, tags={"stage": "train-round"},
                                parent_run_id=run_id) as child:
            result = train_classifier(cfg, out_dir / f"round{k + 1}", name,
                                      mlflow_run_id=child.info.run_id, tracking_uri=uri,
                                      round_index=k, init_model=previous, data=data)
        tracking.log_metrics({k2: v for k2, v in result.metrics.items() if k2 != "epoch"},
                             step=k + 1)
        previous, seconds = result.checkpoint, seconds + result.seconds
        history += [{**h, "round": k + 1} for h in result.history]
    final = out_dir / previous.name
    shutil.copyfile(previous, final.with_suffix(".tmp"))
    final.with_suffix(".tmp").replace(final)
    result.checkpoint, result.seconds, result.history = final, seconds, history
    return result


# -- maps -------------------------------------------------------------------------------------
def run_cams(checkpoint: str | Path, data_root: str | Path, split: str, out_dir: str | Path,
             cam_cfg: CamConfig = CamConfig(), tracking_cfg: TrackingConfig = TrackingConfig(),
             device: str | None = None, max_image_side: int = 1024) -> StageReport:
    """Write ``<out_dir>/<id>.npz`` maps for every image of ``split`` (see ``wsss.cams``)."""
    from wsss import tracking
    from wsss.train.checkpoint import load_classifier, trained_image_scale

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    info = read_info(data_root)
    method, model, state = load_classifier(checkpoint, device, expect_classes=info.num_fg)
    dataset = VOCDataset(data_root, split, max_image_side=max_image_side)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    params = {"checkpoint": str(checkpoint), "data": str(data_root), "split": split,
              "method": state["method"], "cams": cam_cfg}
    with tracking.start_run(f"cam-{split}", experiment=tracking_cfg.experiment,
                            uri=tracking_cfg.uri, params=_plain(params), tags={"stage": "cam"},
                            local_dir=out_dir) as run:
        report = _extract_all(method, model, dataset, out_dir, cam_cfg, device,
                              trained_image_scale(state))
        report.extra.update(method=state["method"], method_params=state["method_params"])
        report.write(out_dir)
        tracking.log_metrics({"maps_done": report.done, "maps_failed": len(report.failed),
                              "images_per_s": report.done / max(report.seconds, 1e-9)})
        tracking.log_artifact(out_dir / REPORT_FILE)
        grid = _sample_grid(dataset, out_dir, out_dir / "samples.png")
        if grid is not None:
            tracking.log_artifact(grid)
    if report.note_unsent(run.info.run_id):
        report.write(out_dir)
    return report


def _extract_all(method, model, dataset: VOCDataset, out_dir: Path, cam_cfg: CamConfig,
                 device: str, image_scale: float) -> StageReport:
    from wsss.cams import localization_maps, save_maps

    report, start = StageReport(), time.perf_counter()
    todo = [i for i in dataset.ids if not (out_dir / f"{i}.npz").is_file()]
    report.reused = len(dataset.ids) - len(todo)
    fg = torch.tensor(dataset.info.fg_classes)
    for batch in tqdm(_same_size_batches(dataset, todo, cam_cfg.batch_size, report),
                      total=len(todo), unit="img", desc="maps", unit_scale=cam_cfg.batch_size,
                      disable=None):
        images = normalize(batch["images"].to(device))
        labels = batch["labels"].to(device)
        maps = localization_maps(method, model, images, labels, kind=_kind(cam_cfg),
                                 layer=cam_cfg.layer, scales=cam_cfg.scales, flip=cam_cfg.flip,
                                 image_scale=image_scale)
        for sample_id, sample_maps, present in zip(batch["ids"], maps.cpu(), labels.cpu() > 0):
            save_maps(out_dir / f"{sample_id}.npz", sample_maps[present].numpy(),
                      fg[present].tolist())
        report.done += len(batch["ids"])
    report.seconds = time.perf_counter() - start
    return report


def _kind(cam_cfg: CamConfig) -> str | None:
    return None if cam_cfg.kind == "auto" else cam_cfg.kind


def _same_size_batches(dataset: VOCDataset, ids: list[str], batch_size: int,
                       report: StageReport) -> Iterator[dict[str, Any]]:
    """Group images of equal size into batches (uint8 [B,3,H,W], labels [B,C], ids)."""
    buckets: dict[tuple[int, int], list[tuple[str, np.ndarray, torch.Tensor]]] = defaultdict(list)
    for sample_id in ids:
        try:
            image = dataset.load_image(sample_id)
            class_ids = dataset.class_ids(sample_id, dataset.load_mask(sample_id, image.shape[:2]))
        except DatasetError as err:
            report.failed.append((sample_id, str(err)))
            continue
        bucket = buckets[image.shape[:2]]
        bucket.append((sample_id, image, dataset.info.multi_hot(class_ids)))
        if len(bucket) == batch_size:
            yield _stack(buckets.pop(image.shape[:2]))
    for bucket in buckets.values():
        yield _stack(bucket)


def _stack(items: list[tuple[str, np.ndarray, torch.Tensor]]) -> dict[str, Any]:
    return {"ids": [i for i, _, _ in items],
            "images": torch.from_numpy(np.stack([im for _, im, _ in items])).permute(0, 3, 1, 2),
            "labels": torch.stack([lab for _, _, lab in items])}


# -- masks and scores -------------------------------------------------------------------------
def maps_method(cams_dir: str | Path) -> Any:
    """The method that made the maps in ``cams_dir`` (from its report.json; default ``cam``):
    it decides how maps become masks (e.g. saliency guidance)."""
    from wsss.methods import get_method

    if not Path(cams_dir).is_dir():
        raise FileNotFoundError(f"maps folder not found: {cams_dir} (`wsss cam` writes one)")
    report = Path(cams_dir) / REPORT_FILE
    info = json.loads(report.read_text()) if report.is_file() else {}
    return get_method(info.get("method", "cam"))(0, info.get("method_params"))


def make_pseudo_mask(method: Any, dataset: VOCDataset, sample_id: str, maps: np.ndarray,
                     class_ids: list[int], cfg: RefineConfig) -> np.ndarray:
    """``method``'s pseudo-mask of one image; the image is read only when the CRF or saliency
    needs it."""
    from wsss.saliency import saliency_for

    image = dataset.load_image(sample_id) if (cfg.crf or method.masks_need_image) else None
    if image is not None and image.shape[:2] != maps.shape[1:]:
        raise ValueError(f"maps of '{sample_id}' are {maps.shape[2]}x{maps.shape[1]} but the "
                         f"image is {image.shape[1]}x{image.shape[0]}")
    return method.pseudo_mask(image, maps, class_ids, dataset.info.has_background, cfg,
                              lambda source: saliency_for(dataset.root, sample_id, image, source))


def run_eval(cams_dir: str | Path, data_root: str | Path, split: str,
             refine_cfg: RefineConfig = RefineConfig(), masks_out: str | Path | None = None,
             tracking_cfg: TrackingConfig = TrackingConfig()) -> tuple[Any, StageReport]:
    """Turn maps into pseudo-masks and score them against ground truth (mIoU table).

    Masks use ``refine_cfg``'s background score and confidence marking without the CRF
    (``wsss refine`` adds the CRF and writes the masks for the segmenter).
    """
    from wsss import tracking
    from wsss.metrics import ConfusionMatrix

    dataset = VOCDataset(data_root, split)
    info = dataset.info
    method = maps_method(cams_dir)
    refine_cfg = dataclasses.replace(refine_cfg, crf=False)
    confusion = ConfusionMatrix(info.num_classes)
    report, start = StageReport(), time.perf_counter()
    for sample_id in tqdm(dataset.ids, unit="img", desc="eval", disable=None):
        try:
            gt, pred = mask_pair(method, dataset, Path(cams_dir), sample_id, refine_cfg,
                                  masks_out)
        except (DatasetError, FileNotFoundError, ValueError) as err:
            report.failed.append((sample_id, str(err)))
            continue
        confusion.update(pred, gt)
        report.done += 1
    report.seconds = time.perf_counter() - start
    scores = confusion.compute(list(info.class_names), background=0 if info.has_background else None)
    params = {"cams": str(cams_dir), "data": str(data_root), "split": split, "refine": refine_cfg}
    with tracking.start_run(f"eval-{split}", experiment=tracking_cfg.experiment,
                            uri=tracking_cfg.uri, params=_plain(params), tags={"stage": "eval"}):
        tracking.log_metrics({**scores.summary(), "images_scored": report.done,
                              "images_failed": len(report.failed)})
        tracking.log_text(scores.table(), "scores.txt")
    return scores, report


def mask_pair(method: Any, dataset: VOCDataset, cams_dir: Path, sample_id: str,
              refine_cfg: RefineConfig,
              masks_out: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Ground truth and ``method``'s pseudo-mask (uint8 [H, W] each) of ``sample_id`` from its
    map file in ``cams_dir``; the mask is also written to ``masks_out`` when given."""
    from wsss.cams import load_maps

    gt_path = dataset.mask_path(sample_id)
    if gt_path is None:
        raise DatasetError(f"no ground-truth mask for id '{sample_id}'")
    maps, class_ids = load_maps(cams_dir / f"{sample_id}.npz")
    gt = dataset.load_mask(sample_id, maps.shape[1:])
    pred = make_pseudo_mask(method, dataset, sample_id, maps, class_ids, refine_cfg)
    if masks_out is not None:
        from wsss.viz import save_mask_png

        save_mask_png(Path(masks_out) / f"{sample_id}.png", pred)
    return gt, pred


def _sample_grid(dataset: VOCDataset, cams_dir: Path, path: Path) -> Path | None:
    """A PNG of a few images with their maps and pseudo-masks (for MLflow)."""
    from wsss.cams import load_maps
    from wsss.refine import masks_from_maps
    from wsss.viz import overlay_grid

    ids = [i for i in dataset.ids if (cams_dir / f"{i}.npz").is_file()][:GRID_SAMPLES]
    if not ids:
        return None
    images, maps, masks = [], [], []
    for sample_id in ids:
        sample_maps, class_ids = load_maps(cams_dir / f"{sample_id}.npz")
        images.append(dataset.load_image(sample_id))
        maps.append(sample_maps)
        masks.append(masks_from_maps(sample_maps, class_ids, dataset.info.has_background))
    return overlay_grid(images, maps, masks, None, list(dataset.info.class_names), path)


def _plain(params: dict[str, Any]) -> dict[str, Any]:
    from wsss.config import to_dict

    return to_dict(params)
