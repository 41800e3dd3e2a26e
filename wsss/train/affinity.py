"""Affinity-network training on seeds with Ray Train (AffinityNet, Ahn & Kwak, CVPR 2018).

The seeds are label masks ``<seeds_dir>/<id>.png`` of the training split (``wsss train-affinity``
writes them from a maps folder with ``wsss.core.affinity.seed_mask``; 255 = no seed). Random
rescales, crops and flips move image and seeds together (as for the segmenter); the seeds are
brought to the network's feature resolution (stride 8, nearest), every pixel pair within
``affinity.radius`` cells gets a same / different / ignored label
(``wsss.core.affinity.pair_labels``), and the network learns their affinity with the balanced
loss of AffinityNet eq. 5-7 (``wsss.core.affinity.affinity_loss``). The network starts from a
trained classifier's backbone. Rank 0 writes the checkpoint every epoch and a restarted worker
group resumes from the last one.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import ray.train
import ray.train.torch
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from wsss.config import ExperimentConfig, from_dict
from wsss.core.affinity import affinity_loss, network_affinities, pair_labels, pair_offsets
from wsss.data.dataset import SplitScan, VOCDataset
from wsss.data.palette import IGNORE_INDEX
from wsss.data.reader import read_info
from wsss.data.transforms import normalize
from wsss.models.affinity import FEATURE, AffinityNet, build_affinity_net
from wsss.ray_utils import init_ray
from wsss.storage import absolute
from wsss.train.checkpoint import (AFFINITY_FORMAT, CheckpointError, classifier_backbone,
                                   load_weights, open_checkpoint, read_state, register_builder,
                                   restore_training_state, write_state)
from wsss.train.classifier import ClassifierResult as TrainResult
from wsss.train.classifier import TrainingData, all_reduce_mean, all_reduce_sum, data_key
from wsss.train.mask_eval import walk_mask_scores
from wsss.train.optim import optimizer_and_schedule
from wsss.train.reporting import MODEL_FILE, report_epoch
from wsss.train.segmenter import PseudoMaskDataset, fit_on_workers, mask_loader

FORMAT = AFFINITY_FORMAT


@dataclasses.dataclass(frozen=True)
class MaskEval:
    """What an affinity run scores after every epoch: the saved maps of ``ids`` (training
    images with ground truth) in ``maps_dir``, walked on the network being trained."""

    maps_dir: str
    ids: tuple[str, ...]


def save_affinity(path: str | Path, *, model: AffinityNet, cfg: ExperimentConfig, backbone: str,
                  has_background: bool, history: list[dict[str, Any]],
                  optimizer: torch.optim.Optimizer | None = None) -> Path:
    """Write an affinity-network checkpoint (loads with ``weights_only=True``) atomically;
    ``history`` holds one dict of plain numbers per epoch done."""
    history = [{k: v if isinstance(v, int) else float(v) for k, v in h.items()} for h in history]
    return write_state(path, {
        "format": FORMAT, "backbone": backbone, "feature_dim": cfg.affinity.feature_dim,
        "head": model.head, "radius": cfg.affinity.radius, "has_background": bool(has_background),
        "image_scale": cfg.data.image_scale, "config": cfg.to_dict(), "epoch": len(history),
        "history": history, "state_dict": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None})


def load_affinity(path: str | Path,
                  device: str | torch.device = "cpu") -> tuple[AffinityNet, dict[str, Any]]:
    """Rebuild ``(network in eval mode on device, checkpoint state)`` from an affinity-network
    checkpoint; the state's ``radius`` (feature-map cells) and ``image_scale`` say how its
    affinities were learnt.

    Raises:
        CheckpointError: missing, unsafe, not an affinity checkpoint, or its weights do not fit.
    """
    ckpt = open_checkpoint(path, "affinity")
    return ckpt.model(device), ckpt.state


@register_builder("affinity")
def _build_affinity(state: dict[str, Any], source: str) -> AffinityNet:
    try:
        model = build_affinity_net(state["backbone"], feature_dim=state["feature_dim"],
                                   head=state.get("head", FEATURE))
    except (KeyError, ValueError) as err:
        raise CheckpointError(f"{source}: cannot rebuild its affinity network: {err}") from err
    load_weights(model, state["state_dict"], source)
    return model


def scan_affinity_data(cfg: ExperimentConfig, seeds_dir: str | Path,
                       ids: Sequence[str] | None = None) -> TrainingData:
    """Read the training split (or only its ``ids``: images, labels, ``<seeds_dir>/<id>.png``)
    once, before any compute.

    Raises:
        DatasetError: the dataset or a file of it is missing or invalid, or no training image
            has a readable image and seed mask (the message counts the problems by kind).
    """
    key = data_key(cfg, seeds_dir)
    root, seeds_dir = key[0], key[4]
    train = PseudoMaskDataset(root, cfg.data.train_split, ids=list(ids) if ids else None,
                              max_image_side=cfg.data.max_image_side,
                              pseudo_dir=seeds_dir).scan()
    train.require_readable(f"{root}: no usable training images in split "
                           f"'{cfg.data.train_split}' (image, labels and seeds in {seeds_dir})")
    return TrainingData(key, read_info(root), train, SplitScan(root))


def train_affinity(cfg: ExperimentConfig, seeds_dir: str | Path, init_from: str | Path,
                   out_dir: str | Path, run_name: str, mlflow_run_id: str | None = None,
                   tracking_uri: str | None = None, storage_path: str | None = None,
                   data: TrainingData | None = None, mask_eval: MaskEval | None = None,
                   callbacks: Sequence[Any] = (),
                   resources_per_worker: dict[str, float] | None = None) -> TrainResult:
    """Train ``cfg.affinity``'s network on the seeds with Ray Train; link the final model.

    Args:
        cfg: the experiment config (``data`` and ``affinity`` sections are used).
        seeds_dir: folder of ``<id>.png`` seed masks of ``cfg.data.train_split``.
        init_from: the classifier checkpoint whose backbone starts the network.
        out_dir: where ``model.pt`` of the final epoch is placed.
        run_name: Ray Train run name (re-using a name resumes that run).
        mlflow_run_id / tracking_uri: the MLflow run that records each epoch (optional).
        storage_path: Ray Train storage (local folder or s3://...); default ``out_dir/ray``.
        data: ``scan_affinity_data(cfg, seeds_dir)`` when the caller scanned already.
        mask_eval: saved maps and training ids whose walked pseudo-masks rank 0 scores after
            every epoch (``pseudo_miou``, ``degenerate_share``; ``cfg.refine``'s walk and
            background, no CRF; ``wsss.train.mask_eval.walk_mask_scores``); None skips it.
        callbacks / resources_per_worker: see ``wsss.train.segmenter.fit_on_workers``.

    Raises:
        DatasetError: see :func:`scan_affinity_data`; CheckpointError: ``init_from`` is not a
        classifier checkpoint.
    """
    if data is None or data.key != data_key(cfg, seeds_dir):
        data = scan_affinity_data(cfg, seeds_dir)
    classifier_backbone(init_from)  # a bad checkpoint fails here, before Ray starts
    cfg = data.config(cfg)
    init_ray()
    loop_config = {"cfg": cfg.to_dict(), "train_ids": data.train.ids, "seeds_dir": data.key[4],
                   "init_from": absolute(init_from),
                   "class_names": list(data.info.class_names),
                   "has_background": data.info.has_background,
                   "mask_eval": dataclasses.asdict(mask_eval) if mask_eval else None}
    return fit_on_workers(_train_loop_per_worker, loop_config, cfg.affinity,
                          (FORMAT, "affinity network"), run_name, out_dir, data.skipped,
                          storage_path, mlflow_run_id, tracking_uri, callbacks,
                          resources_per_worker)


def batch_losses(model: nn.Module, images: torch.Tensor, seeds: torch.Tensor,
                 offsets: torch.Tensor, background: int | None) -> dict[str, torch.Tensor]:
    """The affinity loss terms of one batch (``wsss.core.affinity.affinity_loss``).

    Args:
        model: the affinity network (features or boundaries at stride 8).
        images: RGB uint8 [B, 3, H, W] on the model's device.
        seeds: long [B, H, W] dataset ids, 255 = no seed, brought to the features' size by
            nearest-neighbour sampling.
        offsets: int64 [P, 2] pair offsets (``pair_offsets``).
        background: the background id, or None for datasets without one.
    """
    affinities = network_affinities(model, normalize(images), offsets)
    small = F.interpolate(seeds[:, None].float(), size=affinities.shape[-2:], mode="nearest")
    labels = pair_labels(small[:, 0].long(), offsets.to(seeds.device), background)
    return affinity_loss(affinities, labels)


def _train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train worker: build, (resume,) train; report every epoch."""
    cfg: ExperimentConfig = from_dict(config["cfg"])
    aff = cfg.affinity
    rank = ray.train.get_context().get_world_rank()
    torch.manual_seed(aff.seed + rank)
    np.random.seed(aff.seed + rank)
    backbone, weights = classifier_backbone(config["init_from"])
    checkpoint = ray.train.get_checkpoint()
    model = build_affinity_net(backbone, None if checkpoint else weights, aff.feature_dim,
                               aff.head)
    loader = _train_loader(cfg, config)
    history, saved_optimizer = _resume(checkpoint, model)
    optimizer, scheduler = optimizer_and_schedule(model, aff, len(loader), saved_optimizer,
                                                  len(history))
    model = ray.train.torch.prepare_model(model)
    offsets = pair_offsets(aff.radius)
    background = 0 if config["has_background"] else None
    for epoch in range(len(history), aff.epochs):
        if hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        metrics = {"epoch": epoch + 1,
                   **_train_one_epoch(model, loader, optimizer, scheduler, offsets, background),
                   "lr": scheduler.get_last_lr()[0]}
        if config["mask_eval"] and rank == 0:
            metrics.update(_walk_metrics(model, cfg, MaskEval(**config["mask_eval"])))
        history.append(metrics)

        def write(path: Path) -> None:
            save_affinity(path, model=getattr(model, "module", model), cfg=cfg,
                          backbone=backbone, has_background=config["has_background"],
                          history=history, optimizer=optimizer)

        report_epoch(history, rank, write)
        if metrics["optimizer_steps"] == 0:
            break  # no seed pair to learn from: the driver reports it (check_optimizer_steps)


def _walk_metrics(model: nn.Module, cfg: ExperimentConfig, mask_eval: MaskEval) -> dict[str, float]:
    """``pseudo_miou`` and ``degenerate_share`` of the walked pseudo-masks of
    ``mask_eval.ids``."""
    dataset = VOCDataset(cfg.data.root, ids=list(mask_eval.ids),
                         max_image_side=cfg.data.max_image_side)
    scorer = walk_mask_scores(model, dataset, mask_eval.maps_dir, mask_eval.ids, cfg.refine,
                              cfg.affinity.radius, cfg.data.image_scale)
    return {"pseudo_miou": float(scorer.scores().miou),
            "degenerate_share": float(scorer.degenerate_share)}


def _train_loader(cfg: ExperimentConfig, config: dict[str, Any]) -> DataLoader:
    ids = config["train_ids"]
    return mask_loader(cfg, ids, config["seeds_dir"], cfg.affinity.crop_size,
                       cfg.affinity.batch_size, len(config["class_names"]),
                       config["has_background"], drop_last=len(ids) > 1)


def _train_one_epoch(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer,
                     scheduler: Any, offsets: torch.Tensor,
                     background: int | None) -> dict[str, float]:
    """One pass over this worker's shard: the loss terms averaged over batches and workers,
    and ``optimizer_steps``, the steps of all workers that had a labelled pair to learn from
    (every worker steps on every batch, as DDP needs)."""
    model.train()
    device = next(model.parameters()).device
    sums: dict[str, float] = {}
    count = learned = 0
    for batch in loader:
        seeds = batch["mask"].to(device)
        terms = batch_losses(model, batch["image"].to(device), seeds, offsets, background)
        optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        optimizer.step()
        scheduler.step()
        count += 1
        learned += int(bool((seeds != IGNORE_INDEX).any()))
        for key, value in terms.items():
            sums[key] = sums.get(key, 0.0) + float(value.detach())
    keys = sorted(sums) if sums else ["loss"]
    means = all_reduce_mean([sums.get(k, 0.0) / max(count, 1) for k in keys])
    losses = {(k if k == "loss" else f"loss_{k}"): v for k, v in zip(keys, means)}
    return {**losses, "optimizer_steps": all_reduce_sum(learned)}


def _resume(checkpoint: Any,
            model: nn.Module) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Load the weights of a Ray checkpoint; the metrics of the epochs done ([] without one)
    and the saved optimizer state."""
    if checkpoint is None:
        return [], None
    with checkpoint.as_directory() as ckpt_dir:
        state = read_state(Path(ckpt_dir) / MODEL_FILE, FORMAT, "affinity network")
    _, saved_optimizer = restore_training_state(state, model)
    return list(state["history"]), saved_optimizer
