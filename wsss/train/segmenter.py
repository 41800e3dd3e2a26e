"""Segmenter (DeepLabV3) training on pseudo-masks with Ray Train (``TorchTrainer``).

The training split's images are paired with ``<pseudo_dir>/<id>.png`` (palette PNGs written by
the refine stage; 255 = ignore); ids without a pseudo-mask are listed, not trained on. Random
rescales around ``data.image_scale``, crops and flips move image and mask together
(``tv_tensors.Mask``); validation and prediction run on whole images at ``data.image_scale``.
Two modes:

* ``ce``: pixel-wise cross-entropy on the pseudo-masks, 255 ignored;
* ``sec``: SEC's seed / expand / constrain losses (``wsss.core.sec``). The seeds are the same
  pseudo-masks: their labelled pixels are the seeds and the 255 band is unseeded, so write them
  with a confidence band (``refine.fg_confidence`` / ``refine.bg_confidence``) for SEC.

Every epoch each worker scores its share of the validation split against ground truth; the
confusion matrices are merged for the val mIoU. Rank 0 writes the checkpoint and logs MLflow
metrics; a restarted worker group resumes from the last checkpoint.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import ray.train
import ray.train.torch
import torch
from ray.train.torch import TorchTrainer
from torch import nn
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from wsss.config import DataConfig, ExperimentConfig, RefineConfig, from_dict
from wsss.core.masks import crf_probs, dense_crf
from wsss.core.precision import check_precision, grad_scaler, to_memory_format
from wsss.core.scoring import ConfusionMatrix
from wsss.data import errors
from wsss.data.dataset import VOCDataset
from wsss.data.decode import load_mask
from wsss.data.errors import DatasetError
from wsss.data.palette import IGNORE_INDEX
from wsss.data.reader import Sample, read_info
from wsss.data.transforms import scale_crop_flip
from wsss.models.segmenter import TRUNK_BACKBONES, Segmenter, build_segmenter, trunk_state
from wsss.ray_utils import gpus_available, init_ray, train_logging
from wsss.train.checkpoint import (SEGMENTER_FORMAT, CheckpointError, classifier_backbone,
                                   link_from_ray_checkpoint, load_weights, open_checkpoint,
                                   read_state, register_builder, restore_training_state,
                                   write_state)
from wsss.train.classifier import ClassifierResult as TrainResult
from wsss.train.classifier import (TrainingData, all_gather, all_reduce_mean, all_reduce_sum,
                                   broadcast_buffers, data_key, scan_split)
from wsss.train.optim import optimizer_and_schedule
from wsss.train.reporting import MODEL_FILE, check_optimizer_steps, epoch_callbacks, report_epoch
from wsss.train.steps import predict_labels, predict_probs, segmenter_step

FORMAT = SEGMENTER_FORMAT


@dataclass
class PseudoMaskDataset(VOCDataset):
    """A split whose ``mask`` is the pseudo-mask ``<pseudo_dir>/<id>.png``.

    ``labels`` / ``class_ids`` stay the image-level labels (the dataset's own mask or
    labels.json; the pseudo-mask's classes only when neither exists).
    """

    pseudo_dir: str | Path = ""

    def sample(self, sample_id: str) -> Sample:
        """The image of ``sample_id`` with its pseudo-mask as ``gt`` (uint8 [H, W]) and its
        image-level labels as ``class_ids``."""
        ref = self.refs[sample_id]
        image = self.reader.read_image(ref)
        path = Path(self.pseudo_dir) / f"{sample_id}.png"
        if not path.is_file():
            raise DatasetError(f"no pseudo-mask for id '{sample_id}' in {self.pseudo_dir}",
                               errors.NO_PSEUDO_MASK, str(path))
        mask = load_mask(path, image.shape[:2], self.info.num_classes, self.max_image_side)
        gt = self.reader.read_gt(ref, mask.shape)
        if gt is None and sample_id not in self.reader.labels:
            gt = mask
        return Sample(sample_id, image, mask, self.reader.class_ids(sample_id, gt))


def joint_train_transform(crop_size: int, image_scale: float = 1.0,
                          scale_range: tuple[float, ...] = DataConfig.scale_range) -> v2.Compose:
    """Random rescale around ``image_scale``, crop (padded) and flip of (uint8 image [3, H, W],
    mask [H, W]) together (``wsss.data.transforms.scale_crop_flip``)."""
    return v2.Compose(scale_crop_flip(crop_size, image_scale, scale_range))


def collate(samples: list[dict[str, Any]], num_classes: int,
            has_background: bool) -> dict[str, Any]:
    """Stack samples: image uint8 [B, 3, H, W], mask long [B, H, W], present bool [B, K]."""
    present = torch.zeros(len(samples), num_classes, dtype=torch.bool)
    for row, sample in enumerate(samples):
        present[row, sample["class_ids"]] = True
    if has_background:
        present[:, 0] = True
    return {"image": torch.stack([torch.as_tensor(s["image"]) for s in samples]),
            "mask": torch.stack([torch.as_tensor(s["mask"]) for s in samples]).long(),
            "present": present, "id": [s["id"] for s in samples]}


def predict_mask(model: nn.Module, image: np.ndarray, image_scale: float = 1.0,
                 crf: RefineConfig | None = None, device: str | torch.device = "cpu",
                 precision: str = "fp32", channels_last: bool = False) -> np.ndarray:
    """The predicted mask uint8 [H, W] of one RGB uint8 image [H, W, 3]: the arg-max of
    :func:`wsss.train.steps.predict_probs` (at ``precision``, channels-last when
    ``channels_last``), or with ``crf`` of the dense CRF (``wsss.core.masks.dense_crf`` with
    these ``crf_*`` settings, its input made by ``crf_unary``) over all C classes, DeepLab's
    post-processing (Chen et al., TPAMI 2018, Sec. 3.3).

    Raises ValueError / ``wsss.core.native_crf.NativeCrash`` from the CRF (``dense_crf``).
    """
    pixels = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].to(device)
    probs = predict_probs(model, pixels, image_scale, precision, channels_last)[0]
    if crf is None:
        return probs.argmax(dim=0).cpu().numpy().astype(np.uint8)
    refined = dense_crf(image, crf_probs(probs.cpu().numpy(), crf), crf)
    return refined.argmax(axis=0).astype(np.uint8)


def save_segmenter(path: str | Path, *, model: nn.Module, cfg: ExperimentConfig,
                   class_names: list[str], has_background: bool,
                   history: list[dict[str, Any]],
                   optimizer: torch.optim.Optimizer | None = None) -> Path:
    """Write a segmenter checkpoint (loads with ``weights_only=True``) atomically.

    ``history`` holds one dict of plain numbers per epoch done; its length is the epoch.
    """
    history = [{k: v if isinstance(v, int) else float(v) for k, v in h.items()} for h in history]
    return write_state(path, {
        "format": FORMAT, "arch": cfg.segmenter.arch, "num_classes": len(class_names),
        "class_names": list(class_names), "has_background": bool(has_background),
        "config": cfg.to_dict(), "epoch": len(history), "history": history,
        "state_dict": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None})


def load_segmenter(path: str | Path,
                   device: str | torch.device = "cpu") -> tuple[Segmenter, dict[str, Any]]:
    """``(model in eval mode, checkpoint state)`` of a segmenter checkpoint (path or URI;
    ``wsss.train.checkpoint.open_checkpoint``, the model built once per process)."""
    ckpt = open_checkpoint(path, "segmenter")
    return ckpt.model(device), ckpt.state


@register_builder("segmenter")
def _build_segmenter(state: dict[str, Any], source: str) -> Segmenter:
    try:
        model = build_segmenter(state["arch"], state["num_classes"])
    except (KeyError, ValueError) as err:
        raise CheckpointError(f"{source}: cannot rebuild its segmenter: {err}") from err
    load_weights(model, state["state_dict"], source)
    return model


def train_segmenter(cfg: ExperimentConfig, pseudo_dir: str | Path, out_dir: str | Path,
                    run_name: str, mlflow_run_id: str | None = None,
                    tracking_uri: str | None = None,
                    storage_path: str | None = None,
                    data: TrainingData | None = None) -> TrainResult:
    """Train ``cfg.segmenter`` on the pseudo-masks with Ray Train; copy the final model.

    Args:
        cfg: the experiment config (data, segmenter and, for SEC, refine sections are used).
        pseudo_dir: folder of ``<id>.png`` pseudo-masks for ``cfg.data.train_split``.
        out_dir: where ``model.pt`` of the final epoch is written.
        run_name: Ray Train run name (re-using a name resumes that run).
        mlflow_run_id / tracking_uri: the MLflow run that records each epoch (optional;
            see ``wsss.train.reporting.EpochRecorder``).
        storage_path: Ray Train storage (local folder or s3://...); default ``out_dir/ray``.
        data: ``scan_segmenter_data(cfg, pseudo_dir)`` when the caller scanned already; scanned
            here, before Ray starts, when None or scanned for other data (``data_key``).

    Raises:
        DatasetError: see ``scan_segmenter_data``.
        ConfigError: ``segmenter.precision`` the workers' device cannot do (fp16 without GPUs).
    """
    data = segmenter_data_for(cfg, pseudo_dir, data)
    cfg = data.config(cfg)
    init_ray()
    use_gpu = gpus_available() if cfg.segmenter.use_gpu is None else cfg.segmenter.use_gpu
    check_precision("cuda" if use_gpu else "cpu", cfg.segmenter.precision,
                    "segmenter.precision")
    return fit_on_workers(_train_loop_per_worker, _loop_config(cfg, data), cfg.segmenter,
                          (FORMAT, "segmenter"), run_name, out_dir, data.skipped,
                          storage_path, mlflow_run_id, tracking_uri)


def fit_on_workers(loop: Callable[[dict[str, Any]], None], loop_config: dict[str, Any],
                   section: Any, checkpoint_format: tuple[str, str], run_name: str,
                   out_dir: str | Path, skipped: list[tuple[str, str]],
                   storage_path: str | None = None, mlflow_run_id: str | None = None,
                   tracking_uri: str | None = None, callbacks: Sequence[Any] = (),
                   resources_per_worker: dict[str, float] | None = None) -> TrainResult:
    """Run ``loop`` on ``section.num_workers`` Ray Train workers (GPUs per ``section.use_gpu``,
    None: when the cluster has them; ``section.max_failures`` restarts; the last checkpoint
    kept) and link its final ``model.pt`` to ``out_dir``: the driver side of the segmenter and
    affinity runs.

    Args:
        checkpoint_format: (format, kind) the final checkpoint is read back with
            (``wsss.train.checkpoint.read_state``) for its ``history``.
        skipped: the ids the scan left out, passed on to the result.
        storage_path / mlflow_run_id / tracking_uri: see :func:`train_segmenter`.
        callbacks: more Ray Train ``UserCallback``s (a sweep trial forwards reports to Tune).
        resources_per_worker: Ray resources of each worker (default: Ray Train's).

    Raises:
        TrainingError: no worker took an optimizer step.
    """
    use_gpu = gpus_available() if section.use_gpu is None else section.use_gpu
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    trainer = TorchTrainer(
        loop, train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(num_workers=section.num_workers, use_gpu=use_gpu,
                                               resources_per_worker=resources_per_worker),
        run_config=ray.train.RunConfig(
            name=run_name, storage_path=storage_path or str(out_dir / "ray"),
            failure_config=ray.train.FailureConfig(max_failures=section.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),
            callbacks=[*epoch_callbacks(mlflow_run_id, tracking_uri), *callbacks],
            logging_config=train_logging()))
    start = time.perf_counter()
    result = trainer.fit()
    seconds = time.perf_counter() - start
    check_optimizer_steps(result.metrics, f"{checkpoint_format[1]} run '{run_name}'")
    final = link_from_ray_checkpoint(result.checkpoint, MODEL_FILE, out_dir / MODEL_FILE)
    history = read_state(final, *checkpoint_format)["history"]
    return TrainResult(final, dict(history[-1]), history, skipped, seconds)


def classifier_trunk_weights(path: str | Path, arch: str) -> dict[str, torch.Tensor]:
    """The backbone weights of the classifier checkpoint at ``path`` under the names of
    ``arch``'s trunk (``segmenter.init_from``: a trained classifier as the segmenter's start, the
    usual substitute for ImageNet weights). A method with several backbones (adversarial erasing:
    one per round) gives its first, trained on whole images.

    Raises:
        CheckpointError: not a readable classifier checkpoint, or its backbone is not the one
            ``arch`` is built on (the message names both).
    """
    backbone, weights = classifier_backbone(path)
    wanted = TRUNK_BACKBONES[arch]
    if backbone != wanted:
        raise CheckpointError(f"{path}: its classifier has a {backbone} backbone but "
                              f"segmenter.arch={arch} is built on {wanted}; train the classifier "
                              f"with --backbone {wanted} or choose the matching --arch")
    return trunk_state(weights, arch)


def scan_segmenter_data(cfg: ExperimentConfig, pseudo_dir: str | Path) -> TrainingData:
    """Read the training split (images, labels, ``<pseudo_dir>/<id>.png``) and the val split
    once, before any compute; also check that ``segmenter.init_from`` fits.

    Raises:
        DatasetError: the dataset or a file of it is missing or invalid, or no training image
            is usable: readable, labelled and with a readable pseudo-mask (the message counts
            the problems by kind, with a file of each).
        CheckpointError: see :func:`classifier_trunk_weights`.
    """
    if cfg.segmenter.init_from:
        classifier_trunk_weights(cfg.segmenter.init_from, cfg.segmenter.arch)
    key = data_key(cfg, pseudo_dir)
    root, pseudo_dir = key[0], key[4]
    info = read_info(root)
    train = PseudoMaskDataset(root, cfg.data.train_split, max_image_side=cfg.data.max_image_side,
                              pseudo_dir=pseudo_dir).scan()
    train.require_readable(f"{root}: no usable training images in split "
                           f"'{cfg.data.train_split}' (image, labels and pseudo-mask in "
                           f"{pseudo_dir})")
    val = scan_split(root, cfg.data.val_split, cfg.data.max_image_side)
    return TrainingData(key, info, train, val)


def segmenter_data_for(cfg: ExperimentConfig, pseudo_dir: str | Path,
                       data: TrainingData | None) -> TrainingData:
    """``data`` when it was scanned for ``cfg``'s data and ``pseudo_dir`` (``data_key``), else
    ``scan_segmenter_data(cfg, pseudo_dir)``."""
    if data is not None and data.key == data_key(cfg, pseudo_dir):
        return data
    return scan_segmenter_data(cfg, pseudo_dir)


def _loop_config(cfg: ExperimentConfig, data: TrainingData) -> dict[str, Any]:
    """The workers' config of a run on the scanned ``data``."""
    return {"cfg": cfg.to_dict(), "train_ids": data.train.ids, "val_ids": data.val.ids,
            "pseudo_dir": data.key[4], "class_names": list(data.info.class_names),
            "has_background": data.info.has_background}


def _train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train worker: build, (resume,) train and validate; report every epoch."""
    cfg: ExperimentConfig = from_dict(config["cfg"])
    seg = cfg.segmenter
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    check_precision(device, seg.precision, "segmenter.precision")
    torch.manual_seed(seg.seed + rank)
    np.random.seed(seg.seed + rank)
    model = build_segmenter(seg.arch, len(config["class_names"]), seg.pretrained_backbone)
    checkpoint = ray.train.get_checkpoint()
    if seg.init_from and checkpoint is None:  # a resumed run loads all its weights below
        model.trunk.load_state_dict(classifier_trunk_weights(seg.init_from, seg.arch))
    loader = _train_loader(cfg, config)
    history, saved_optimizer = _resume(checkpoint, model)
    optimizer, scheduler = optimizer_and_schedule(model, seg, len(loader), saved_optimizer,
                                                  len(history))
    model = ray.train.torch.prepare_model(to_memory_format(model, seg.channels_last))
    scaler = grad_scaler(device, seg.precision)
    val_ds = VOCDataset(cfg.data.root, ids=config["val_ids"][rank::world],
                        max_image_side=cfg.data.max_image_side)
    for epoch in range(len(history), seg.epochs):
        if hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        losses = _train_one_epoch(model, loader, optimizer, scheduler, cfg,
                                  config["has_background"], scaler)
        metrics = {"epoch": epoch + 1, **losses, "lr": scheduler.get_last_lr()[0]}
        if config["val_ids"]:
            broadcast_buffers(model)
            metrics.update(_validate(getattr(model, "module", model), val_ds,
                                     len(config["class_names"]), cfg.data.image_scale, seg))
        history.append(metrics)

        def write(path: Path) -> None:
            save_segmenter(path, model=getattr(model, "module", model), cfg=cfg,
                           class_names=config["class_names"],
                           has_background=config["has_background"], history=history,
                           optimizer=optimizer)

        report_epoch(history, rank, write)
        if metrics["optimizer_steps"] == 0:
            break  # nothing was learned: the driver reports it (check_optimizer_steps)


def _train_loader(cfg: ExperimentConfig, config: dict[str, Any]) -> DataLoader:
    return mask_loader(cfg, config["train_ids"], config["pseudo_dir"], cfg.segmenter.crop_size,
                       cfg.segmenter.batch_size, len(config["class_names"]),
                       config["has_background"])


def mask_loader(cfg: ExperimentConfig, ids: list[str], mask_dir: str, crop_size: int,
                batch_size: int, num_classes: int, has_background: bool,
                drop_last: bool = False) -> DataLoader:
    """This worker's shuffled loader of ``ids`` with their ``<mask_dir>/<id>.png`` masks,
    rescaled, cropped to ``crop_size`` px and flipped together (:func:`joint_train_transform`),
    batched by :func:`collate`; the training input of the segmenter and the affinity network."""
    dataset = PseudoMaskDataset(cfg.data.root, ids=ids,
                                transform=joint_train_transform(crop_size, cfg.data.image_scale,
                                                                cfg.data.scale_range),
                                max_image_side=cfg.data.max_image_side, pseudo_dir=mask_dir)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True,
                        collate_fn=functools.partial(collate, num_classes=num_classes,
                                                     has_background=has_background),
                        num_workers=cfg.data.loader_workers, drop_last=drop_last)
    return ray.train.torch.prepare_data_loader(loader)


def _train_one_epoch(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer,
                     scheduler: Any, cfg: ExperimentConfig, has_background: bool,
                     scaler: torch.amp.GradScaler | None = None) -> dict[str, float]:
    """One pass over this worker's shard: :func:`wsss.train.steps.segmenter_step` per batch
    (on the model's device; ``segmenter.precision`` / ``segmenter.channels_last``; ``scaler``
    None: ``wsss.core.precision.grad_scaler``'s), the schedule stepped after every batch.
    Returns the loss terms averaged over batches and workers, and ``optimizer_steps``, the
    steps of all workers together that had a loss to learn from.

    Every batch takes a step on every worker (DDP needs the same number of backward passes
    on each), but a cross-entropy batch without a labelled pixel (all 255) has a zero gradient
    and is not counted.
    """
    model.train()
    device = next(model.parameters()).device
    scaler = scaler or grad_scaler(device, cfg.segmenter.precision)
    sums: dict[str, float] = {}
    count = learned = 0
    for batch in loader:
        values = segmenter_step(model, batch, optimizer, scaler, cfg, has_background, device)
        scheduler.step()
        count += 1
        learned += int(cfg.segmenter.mode != "ce" or bool((batch["mask"] != IGNORE_INDEX).any()))
        for key, value in values.items():
            sums[key] = sums.get(key, 0.0) + value
    keys = sorted(sums) if sums else ["loss"]
    means = all_reduce_mean([sums.get(k, 0.0) / max(count, 1) for k in keys])
    losses = {(k if k == "loss" else f"loss_{k}"): v for k, v in zip(keys, means)}
    return {**losses, "optimizer_steps": all_reduce_sum(learned)}


@torch.no_grad()
def _validate(model: nn.Module, dataset: VOCDataset, num_classes: int, image_scale: float,
              seg: Any) -> dict[str, float]:
    """Val mIoU / pixel accuracy from every worker's images (confusion matrices merged),
    predicted at ``image_scale`` without flip, at ``seg.precision`` (the segmenter section)."""
    model.eval()
    device = next(model.parameters()).device
    confusion = ConfusionMatrix(num_classes)
    for index in range(len(dataset)):
        sample = dataset[index]
        image = torch.as_tensor(sample["image"])[None].to(device)
        prediction = predict_labels(model, image, image_scale, seg.precision,
                                    seg.channels_last)[0].cpu()
        confusion.update(prediction, torch.as_tensor(sample["mask"]))
    scores = sum(all_gather(confusion)).compute()
    return {"val_miou": scores.miou, "val_pixel_accuracy": scores.pixel_accuracy}


def _resume(checkpoint: Any,
            model: nn.Module) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Load the model weights of a Ray checkpoint; returns the metrics of the epochs done ([]
    without one) and the saved optimizer state."""
    if checkpoint is None:
        return [], None
    with checkpoint.as_directory() as ckpt_dir:
        state = read_state(Path(ckpt_dir) / MODEL_FILE, FORMAT, "segmenter")
    _, saved_optimizer = restore_training_state(state, model)
    return list(state["history"]), saved_optimizer
