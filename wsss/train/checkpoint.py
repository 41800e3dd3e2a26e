"""Checkpoints: one ``model.pt`` holding weights and what is needed to rebuild them.

Files hold only tensors and plain Python values, so they load with ``weights_only=True``; a
file that needs arbitrary unpickling is refused. ``save_checkpoint`` / ``load_classifier`` serve
classifiers; ``write_state`` / ``read_state`` / ``restore_training_state`` are the generic steps
other models' checkpoints (``wsss.train.segmenter``) share.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from wsss.config import ConfigError, ModelConfig, from_dict
from wsss.methods import get_method
from wsss.models.backbones import Backbone

FORMAT = "wsss.classifier/1"


class CheckpointError(ValueError):
    """A checkpoint is missing, unsafe, or does not fit what it is used for."""


def save_checkpoint(path: str | Path, *, model: nn.Module, method: Any, cfg: Any,
                    class_names: list[str], has_background: bool, epoch: int,
                    optimizer: torch.optim.Optimizer | None = None,
                    history: list[dict[str, float]] | None = None) -> Path:
    """Write a checkpoint atomically (temp file + rename); ``history`` = per-epoch metrics.
    The schedule is not saved: it is rebuilt from the config and the epoch on resume."""
    state = {
        "format": FORMAT,
        "method": method.name,
        "method_params": method.params_dict(),
        "num_classes": method.num_classes,
        "class_names": list(class_names),
        "has_background": bool(has_background),
        "config": cfg.to_dict(),
        "epoch": int(epoch),
        "state_dict": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "history": list(history or []),
    }
    return write_state(path, state)


def load_checkpoint_state(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint dict safely (``weights_only=True``) and check its format."""
    return read_state(path, FORMAT, "classifier")


def write_state(path: str | Path, state: dict[str, Any]) -> Path:
    """Write a checkpoint dict (tensors and plain values only) atomically (temp file + rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def read_state(path: str | Path, fmt: str | tuple[str, ...], kind: str) -> dict[str, Any]:
    """Load a checkpoint dict with ``weights_only=True`` and check that its format is ``fmt``
    (or one of them).

    ``kind`` names the expected checkpoint in errors (e.g. "classifier").
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:  # weights_only refused what the file holds
        raise CheckpointError(f"refusing checkpoint {path}: it is not a file of tensors and plain "
                              f"values that torch.load(weights_only=True) can read safely "
                              f"({_unpickler_reason(err)})") from err
    except Exception as err:  # torch raises RuntimeError, EOFError... for damaged files
        raise CheckpointError(f"cannot load checkpoint {path} safely (weights_only=True): "
                              f"{str(err).splitlines()[0]}") from err
    formats = (fmt,) if isinstance(fmt, str) else fmt
    if not isinstance(state, dict) or state.get("format") not in formats:
        raise CheckpointError(f"{path} is not a wsss {kind} checkpoint (format "
                              f"{' or '.join(formats)})")
    return state


def _unpickler_reason(err: Exception) -> str:
    """The line of torch's weights_only refusal that says what was refused."""
    for line in str(err).splitlines():
        if "WeightsUnpickler error:" in line:
            reason = line.split("WeightsUnpickler error:", 1)[1].strip()
            if reason:
                return reason.split(". Please use")[0]
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    detail = [line for line in lines if not line.startswith(("Weights only", "Please", "Check"))]
    return (detail or lines or [type(err).__name__])[0]


def restore_training_state(state: dict[str, Any],
                           model: nn.Module) -> tuple[int, dict[str, Any] | None]:
    """Load the weights of ``state`` into ``model``; returns its epoch (the number of epochs
    done) and the saved optimizer state (None when not saved), for
    ``wsss.train.optim.optimizer_and_schedule``."""
    model.load_state_dict(state["state_dict"])
    return int(state["epoch"]), state.get("optimizer")


def link_from_ray_checkpoint(checkpoint: Any, name: str, dest: str | Path) -> Path:
    """Make ``dest`` the file ``name`` of a ``ray.train.Checkpoint``, atomically: a hard link
    to it when both are on one local disk (one copy on disk, which outlives Ray deleting its
    checkpoint), else a copy (object-store storage, another file system)."""
    with checkpoint.as_directory() as ckpt_dir:
        return link_or_copy(Path(ckpt_dir) / name, Path(dest))


def link_or_copy(source: Path, dest: Path) -> Path:
    """``dest`` made the file ``source`` atomically: a hard link when both are on one file
    system (no second copy on disk), else a copy."""
    tmp = dest.with_name(dest.name + ".tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copyfile(source, tmp)
    os.replace(tmp, dest)
    return dest


def load_classifier(path: str | Path, device: str | torch.device = "cpu",
                    expect_classes: int | None = None) -> tuple[Any, nn.Module, dict[str, Any]]:
    """Rebuild ``(method, model in eval mode, checkpoint state)`` from a checkpoint file.

    ``expect_classes`` (the dataset's foreground class count) is checked before any work.
    """
    state = load_checkpoint_state(path)
    check_classes(state, expect_classes, path)
    method, model = classifier_from_state(state, device, source=path)
    return method, model, state


def trained_image_scale(state: dict[str, Any]) -> float:
    """``data.image_scale`` of the run that wrote a (classifier or segmenter) checkpoint: the
    resolution, as a factor of the image as loaded, its maps and predictions are computed at
    (1.0 for checkpoints written before the key existed)."""
    return float(state.get("config", {}).get("data", {}).get("image_scale", 1.0))


def check_classes(state: dict[str, Any], expect_classes: int | None, path: str | Path) -> None:
    """CheckpointError unless the checkpoint at ``path`` predicts ``expect_classes`` classes."""
    if expect_classes is not None and state["num_classes"] != expect_classes:
        raise CheckpointError(f"{path} was trained for {state['num_classes']} classes but the "
                              f"dataset has {expect_classes} foreground classes")


def classifier_from_state(state: dict[str, Any], device: str | torch.device = "cpu",
                          source: str | Path = "checkpoint") -> tuple[Any, nn.Module]:
    """``(method, model in eval mode on device)`` from a loaded classifier checkpoint dict.

    A checkpoint whose method is unknown, or whose weights do not fit its method's model (a
    file edited, or from another version), raises CheckpointError naming ``source``.
    """
    try:
        # Only the model section is needed; other sections may have changed since.
        model_cfg = from_dict(state["config"].get("model", {}), ModelConfig, prefix="model.")
        method = get_method(state["method"])(state["num_classes"], state["method_params"])
        model = method.build_model(dataclasses.replace(model_cfg, pretrained=None))
        load_weights(model, state["state_dict"], source)
    except (ConfigError, KeyError, TypeError) as err:
        raise CheckpointError(f"{source}: cannot rebuild its classifier (method "
                              f"{state.get('method')!r}): {err}") from err
    return method, model.to(device).eval()


def load_weights(model: nn.Module, state_dict: dict[str, Any], source: str | Path) -> None:
    """``model.load_state_dict`` with a CheckpointError naming ``source`` and the first
    mismatches when the weights belong to another model (method, architecture, class count)."""
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as err:
        details = [line.strip() for line in str(err).splitlines()[1:] if line.strip()]
        summary = "; ".join(d[:200] for d in details[:2]) or str(err)[:200]
        raise CheckpointError(f"{source}: its weights do not fit the {type(model).__name__} "
                              f"model it names ({summary})") from err


def classifier_backbone(path: str | Path) -> tuple[str, dict[str, torch.Tensor]]:
    """The backbone name (``model.backbone``) and the :class:`~wsss.models.backbones.Backbone`
    weights of the classifier checkpoint at ``path``: what a trained classifier hands to the
    models that start from it (the segmenter's trunk, the affinity network). A method with
    several backbones (adversarial erasing: one per round) gives its first, trained on whole
    images.

    Raises:
        CheckpointError: not a readable classifier checkpoint.
    """
    state = load_checkpoint_state(path)
    _, classifier = classifier_from_state(state, source=path)
    first = next(m for m in classifier.modules() if isinstance(m, Backbone))
    return state["config"].get("model", {}).get("backbone", "resnet18"), first.state_dict()
