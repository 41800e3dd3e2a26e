"""Classifier training on Ray Train (``TorchTrainer``), for every registered method.

The driver scans the dataset once (bad files are listed, not trained on), then launches
``train.num_workers`` workers (gloo on CPU, NCCL on GPU). Every epoch each worker reports its loss
and the validation mAP (predictions gathered across workers); rank 0 writes a checkpoint and
logs the epoch to MLflow. A restarted worker group resumes from the last checkpoint.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import ray.train
import ray.train.torch
import torch
from ray.train.torch import TorchTrainer
from torch.utils.data import DataLoader

from wsss.config import ExperimentConfig, from_dict
from wsss.core.classification import mean_average_precision
from wsss.core.precision import check_precision, grad_scaler, to_memory_format
from wsss.data.dataset import SplitScan, VOCDataset
from wsss.data.errors import DatasetError
from wsss.data.reader import read_info
from wsss.data.transforms import eval_transform, train_transform
from wsss.data.voc import DatasetInfo
from wsss.methods import check_method_config, get_method
from wsss.ray_utils import gpus_available, init_ray, train_logging
from wsss.storage import is_uri
from wsss.train.checkpoint import (FORMAT, link_from_ray_checkpoint, read_state,
                                   restore_training_state, save_checkpoint)
from wsss.train.mask_eval import pseudo_mask_scores
from wsss.train.optim import optimizer_and_schedule
from wsss.train.reporting import MODEL_FILE, check_optimizer_steps, epoch_callbacks, report_epoch
from wsss.train.steps import classifier_step


@dataclass
class ClassifierResult:
    """What a training run produced: the final checkpoint and its history."""

    checkpoint: Path
    metrics: dict[str, float]
    history: list[dict[str, Any]]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack a list of dataset samples into images [B,3,H,W], labels [B,C] and ids."""
    return {
        "image": torch.stack([torch.as_tensor(s["image"]) for s in samples]),
        "labels": torch.stack([s["labels"] for s in samples]),
        "id": [s["id"] for s in samples],
    }


def scan_split(root: str, split: str, max_side: int, optional: bool = True) -> SplitScan:
    """Every sample of ``split`` read once (``VOCDataset.scan``); an empty scan when the split
    file does not exist and the split is ``optional`` (a validation split), else the
    DatasetError naming the missing file."""
    try:
        dataset = VOCDataset(root, split, max_image_side=max_side)
    except DatasetError as err:
        if optional and "split file not found" in str(err):
            return SplitScan(str(root))
        raise
    return dataset.scan()


# (absolute dataset folder, train split, val split, max image side, absolute pseudo-mask folder)
DataKey = tuple[str, str, str, int, str | None]


@dataclass
class TrainingData:
    """The splits a training run reads, scanned once in the driver before Ray or MLflow start.

    Attributes:
        key: what was scanned: (absolute dataset folder, train split, val split, max image
            side, pseudo-mask folder or None); a run given data of another key scans its own.
        info: the dataset's classes.
        train / val: the scans of the two splits (``val`` is empty without a val split).
    """

    key: DataKey
    info: DatasetInfo
    train: SplitScan
    val: SplitScan

    @property
    def root(self) -> str:
        return self.key[0]

    @property
    def skipped(self) -> list[tuple[str, str]]:
        """``(id, reason)`` of every unreadable id of both splits."""
        return self.train.skipped + self.val.skipped

    def config(self, cfg: ExperimentConfig) -> ExperimentConfig:
        """``cfg`` with the absolute dataset folder (workers run in other folders, or on other
        nodes, which must see the same path)."""
        return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, root=self.root))


def data_key(cfg: ExperimentConfig, pseudo_dir: str | Path | None = None) -> DataKey:
    """``TrainingData.key`` of a config (and pseudo-mask folder); a URI (``s3://...``) as
    given, a local path resolved."""
    return (_resolved(cfg.data.root), cfg.data.train_split, cfg.data.val_split,
            cfg.data.max_image_side, _resolved(pseudo_dir) if pseudo_dir else None)


def _resolved(root: str | Path) -> str:
    return str(root) if is_uri(str(root)) else str(Path(root).resolve())


def scan_training_data(cfg: ExperimentConfig) -> TrainingData:
    """Read the train and val splits of ``cfg.data`` once, before any compute, after checking
    the method section (``wsss.methods.check_method_config``).

    Raises:
        ConfigError: an unknown method, or parameters it refuses.
        DatasetError: the dataset folder, a file of it or the train split is missing or
            invalid; the dataset has no foreground class; or no training image is readable
            (the message counts the problems by kind, with a file of each).
    """
    check_method_config(cfg.method)
    key = data_key(cfg)
    root = key[0]
    info = read_info(root)
    if info.num_fg < 1:
        raise DatasetError(f"{root}: no foreground classes to train on")
    train = scan_split(root, cfg.data.train_split, cfg.data.max_image_side, optional=False)
    train.require_readable(f"{root}: no readable training images in split "
                           f"'{cfg.data.train_split}'")
    val = scan_split(root, cfg.data.val_split, cfg.data.max_image_side)
    return TrainingData(key, info, train, val)


def training_data_for(cfg: ExperimentConfig, data: TrainingData | None) -> TrainingData:
    """``data`` when it was scanned for ``cfg``'s data (``data_key``), else
    ``scan_training_data(cfg)``."""
    return data if data is not None and data.key == data_key(cfg) else scan_training_data(cfg)


def train_classifier(cfg: ExperimentConfig, out_dir: str | Path, run_name: str,
                     mlflow_run_id: str | None = None, tracking_uri: str | None = None,
                     storage_path: str | None = None, round_index: int = 0,
                     init_model: str | Path | None = None,
                     mask_eval_ids: Sequence[str] | None = None,
                     callbacks: Sequence[Any] = (),
                     resources_per_worker: dict[str, float] | None = None,
                     data: TrainingData | None = None) -> ClassifierResult:
    """Train one round of ``cfg.method`` with Ray Train; copy the final model to ``out_dir``.

    Args:
        cfg: the experiment config (data, model, method, train sections are used).
        out_dir: where ``model.pt`` of the final epoch is written.
        run_name: Ray Train run name (re-using a name resumes that run).
        mlflow_run_id / tracking_uri: the MLflow run that records each epoch (optional;
            see ``wsss.train.reporting.EpochRecorder``).
        storage_path: Ray Train storage (local folder or s3://...); default ``out_dir/ray``.
        round_index: which round of a multi-round method (adversarial erasing) this is.
        init_model: ``model.pt`` of the previous round, loaded before training starts.
        mask_eval_ids: training ids whose pseudo-mask mIoU rank 0 adds to every epoch's
            metrics as ``pseudo_miou`` and ``degenerate_share`` (see
            ``wsss.train.mask_eval``); None skips it.
        callbacks: Ray Train ``UserCallback``s (a sweep trial forwards reports to Tune).
        resources_per_worker: Ray resources of each worker (default: Ray Train's).
        data: ``scan_training_data(cfg)`` when the caller scanned already (the split is not
            read again); scanned here, before Ray starts, when None or scanned for other data
            (``data_key``).

    Raises:
        DatasetError: see ``scan_training_data``.
        ConfigError: ``train.precision`` the workers' device cannot do (fp16 without GPUs).
    """
    data = training_data_for(cfg, data)
    cfg, info = data.config(cfg), data.info
    init_ray()
    use_gpu = gpus_available() if cfg.train.use_gpu is None else cfg.train.use_gpu
    check_precision("cuda" if use_gpu else "cpu", cfg.train.precision, "train.precision")
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    loop_config = {"cfg": cfg.to_dict(), "train_ids": data.train.ids, "val_ids": data.val.ids,
                   "num_fg": info.num_fg, "class_names": list(info.class_names),
                   "has_background": info.has_background, "round": round_index,
                   "init_model": str(init_model) if init_model else None,
                   "mask_eval_ids": list(mask_eval_ids) if mask_eval_ids else None}
    trainer = TorchTrainer(
        _train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.train.num_workers, use_gpu=use_gpu,
                                               resources_per_worker=resources_per_worker),
        run_config=ray.train.RunConfig(
            name=run_name,
            storage_path=storage_path or str(out_dir / "ray"),
            failure_config=ray.train.FailureConfig(max_failures=cfg.train.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),
            callbacks=[*epoch_callbacks(mlflow_run_id, tracking_uri), *callbacks],
            logging_config=train_logging(),
        ),
    )
    start = time.perf_counter()
    result = trainer.fit()
    seconds = time.perf_counter() - start
    check_optimizer_steps(result.metrics, f"classifier run '{run_name}'")
    final = link_from_ray_checkpoint(result.checkpoint, MODEL_FILE, out_dir / MODEL_FILE)
    history = read_state(final, FORMAT, "classifier")["history"]
    return ClassifierResult(final, dict(history[-1]), history, data.skipped, seconds)


def _train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train worker: build, (resume,) train and validate; report every epoch."""
    cfg: ExperimentConfig = from_dict(config["cfg"])
    context = ray.train.get_context()
    rank = context.get_world_rank()
    torch.manual_seed(cfg.train.seed + rank)
    np.random.seed(cfg.train.seed + rank)
    device = ray.train.torch.get_device()
    check_precision(device, cfg.train.precision, "train.precision")
    method = get_method(cfg.method.name)(config["num_fg"], cfg.method.params)
    model = method.build_model(cfg.model)
    if config["init_model"]:
        previous = read_state(config["init_model"], FORMAT, "classifier")
        model.load_state_dict(previous["state_dict"])
    method.prepare_round(model, config["round"])
    train_loader, val_loader = _loaders(cfg, config)
    start_epoch, history, saved_optimizer = _resume(ray.train.get_checkpoint(), model)
    optimizer, scheduler = optimizer_and_schedule(model, cfg.train, len(train_loader),
                                                  saved_optimizer, start_epoch)
    model = ray.train.torch.prepare_model(to_memory_format(model, cfg.train.channels_last))
    scaler = grad_scaler(device, cfg.train.precision)
    for epoch in range(start_epoch, cfg.train.epochs):
        if hasattr(train_loader.sampler, "set_epoch"):
            train_loader.sampler.set_epoch(epoch)
        loss, logs, steps = _train_one_epoch(method, model, train_loader, optimizer, scheduler,
                                             scaler, cfg, device, epoch)
        metrics = {"epoch": epoch + 1, "loss": loss, **logs, "lr": scheduler.get_last_lr()[0],
                   "optimizer_steps": steps}
        if val_loader is not None:
            broadcast_buffers(model)
            metrics["val_mAP"] = _validate(model, val_loader)
        if config.get("mask_eval_ids") and rank == 0:
            metrics.update(_pseudo_mask_metrics(method, model, cfg, config["mask_eval_ids"]))
        history.append(metrics)

        def write(path: Path) -> None:
            save_checkpoint(path, model=getattr(model, "module", model), method=method, cfg=cfg,
                            class_names=config["class_names"],
                            has_background=config["has_background"], epoch=epoch + 1,
                            optimizer=optimizer, history=history)

        report_epoch(history, rank, write)
        if steps == 0:
            break  # nothing was learned: the driver reports it (check_optimizer_steps)


def _loaders(cfg: ExperimentConfig, config: dict[str, Any]) -> tuple[DataLoader, DataLoader | None]:
    train_ds = VOCDataset(cfg.data.root, ids=config["train_ids"],
                          transform=train_transform(cfg.data.crop_size, cfg.data.image_scale,
                                                    cfg.data.scale_range),
                          max_image_side=cfg.data.max_image_side)
    train_loader = DataLoader(train_ds, batch_size=cfg.train.batch_size, shuffle=True,
                              collate_fn=collate, num_workers=cfg.data.loader_workers)
    train_loader = ray.train.torch.prepare_data_loader(train_loader)
    if not config["val_ids"]:
        return train_loader, None
    val_ds = VOCDataset(cfg.data.root, ids=config["val_ids"],
                        transform=eval_transform(cfg.data.crop_size),
                        max_image_side=cfg.data.max_image_side)
    val_loader = DataLoader(val_ds, batch_size=cfg.train.batch_size, collate_fn=collate,
                            num_workers=cfg.data.loader_workers)
    return train_loader, ray.train.torch.prepare_data_loader(val_loader)


def _train_one_epoch(method: Any, model: torch.nn.Module, loader: Any,
                     optimizer: torch.optim.Optimizer, scheduler: Any,
                     scaler: torch.amp.GradScaler, cfg: ExperimentConfig,
                     device: str | torch.device,
                     epoch: int) -> tuple[float, dict[str, float], int]:
    """One pass over this worker's shard: :func:`wsss.train.steps.classifier_step` per batch
    (``train.precision`` / ``train.channels_last``), the schedule stepped after every batch.
    Returns the loss and the method's logged terms averaged over all workers (this process
    alone without a process group), and the optimizer steps taken by all workers together."""
    model.train()
    total, count, logs_sum = 0.0, 0, {}
    for batch in loader:
        loss, logs = classifier_step(method, model, batch, optimizer, scaler, device,
                                     cfg.train.precision, cfg.train.channels_last, epoch)
        scheduler.step()
        total += loss
        count += 1
        for key, value in logs.items():
            logs_sum[key] = logs_sum.get(key, 0.0) + value
    values = all_reduce_mean([total / max(count, 1)] + [v / max(count, 1) for v in logs_sum.values()])
    return values[0], dict(zip(logs_sum, values[1:])), all_reduce_sum(count)


@torch.no_grad()
def _validate(model, loader) -> float:
    """Validation mAP over all workers' predictions."""
    model.eval()
    scores, targets = [], []
    for batch in loader:
        scores.append(torch.sigmoid(model(batch["image"])).cpu())
        targets.append(batch["labels"].cpu())
    local = (torch.cat(scores).numpy(), torch.cat(targets).numpy())
    gathered = all_gather(local)
    all_scores = np.concatenate([g[0] for g in gathered])
    all_targets = np.concatenate([g[1] for g in gathered])
    return float(mean_average_precision(all_scores, all_targets))


def _pseudo_mask_metrics(method, model, cfg: ExperimentConfig,
                         ids: list[str]) -> dict[str, float]:
    """``pseudo_miou`` and ``degenerate_share`` of the pseudo-masks of ``ids`` (training
    images; ground truth used only to score)."""
    dataset = VOCDataset(cfg.data.root, ids=ids, max_image_side=cfg.data.max_image_side)
    scorer = pseudo_mask_scores(method, model, dataset, ids, cfg.refine, cfg.data.image_scale)
    return {"pseudo_miou": float(scorer.scores().miou),
            "degenerate_share": float(scorer.degenerate_share)}


def _resume(checkpoint, model) -> tuple[int, list[dict[str, Any]], dict[str, Any] | None]:
    """Load the model weights of a Ray checkpoint; returns (epoch to start at, history, saved
    optimizer state)."""
    if checkpoint is None:
        return 0, [], None
    with checkpoint.as_directory() as ckpt_dir:
        state = read_state(Path(ckpt_dir) / MODEL_FILE, FORMAT, "classifier")
    epoch, saved_optimizer = restore_training_state(state, model)
    return epoch, list(state.get("history", [])), saved_optimizer


def all_reduce_mean(values: list[float]) -> list[float]:
    if not torch.distributed.is_initialized():
        return values
    device = "cuda" if torch.distributed.get_backend() == "nccl" else "cpu"
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(tensor)
    return (tensor / torch.distributed.get_world_size()).tolist()


def all_reduce_sum(value: int) -> int:
    """``value`` summed over all Ray Train workers (itself without a process group)."""
    if not torch.distributed.is_initialized():
        return value
    device = "cuda" if torch.distributed.get_backend() == "nccl" else "cpu"
    tensor = torch.tensor([value], dtype=torch.int64, device=device)
    torch.distributed.all_reduce(tensor)
    return int(tensor.item())


def broadcast_buffers(model: torch.nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every worker, so that each
    worker's evaluation uses the weights the checkpoint saves (rank 0's). DDP syncs buffers
    only inside its own forward; a worker's last training batch leaves its own statistics."""
    if not torch.distributed.is_initialized():
        return
    for buffer in model.buffers():
        torch.distributed.broadcast(buffer.data, src=0)


def all_gather(obj: Any) -> list[Any]:
    if not torch.distributed.is_initialized():
        return [obj]
    gathered: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, obj)
    return gathered
