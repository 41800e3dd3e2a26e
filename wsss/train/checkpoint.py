"""Classifier checkpoints: one ``model.pt`` holding weights and what is needed to rebuild them.

Files hold only tensors and plain Python values, so they load with ``weights_only=True``; a
file that needs arbitrary unpickling is refused.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

FORMAT = "wsss.classifier/1"


class CheckpointError(ValueError):
    """A checkpoint is missing, unsafe, or does not fit what it is used for."""


def save_checkpoint(path: str | Path, *, model: nn.Module, method: Any, cfg: Any,
                    class_names: list[str], has_background: bool, epoch: int,
                    optimizer: torch.optim.Optimizer | None = None,
                    scheduler: Any = None) -> Path:
    """Write a checkpoint atomically (temp file + rename)."""
    path = Path(path)
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
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint_state(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint dict safely (``weights_only=True``) and check its format."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError...
        raise CheckpointError(f"cannot load checkpoint {path} safely (weights_only=True): "
                              f"{str(err).splitlines()[0]}") from err
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a wsss classifier checkpoint (format {FORMAT})")
    return state


def load_classifier(path: str | Path, device: str | torch.device = "cpu",
                    expect_classes: int | None = None) -> tuple[Any, nn.Module, dict[str, Any]]:
    """Rebuild ``(method, model in eval mode, checkpoint state)`` from a checkpoint file.

    ``expect_classes`` (the dataset's foreground class count) is checked before any work.
    """
    from wsss.config import from_dict
    from wsss.methods import get_method

    state = load_checkpoint_state(path)
    if expect_classes is not None and state["num_classes"] != expect_classes:
        raise CheckpointError(f"{path} was trained for {state['num_classes']} classes but the "
                              f"dataset has {expect_classes} foreground classes")
    cfg = from_dict(state["config"])
    method = get_method(state["method"])(state["num_classes"], state["method_params"])
    model = method.build_model(dataclasses.replace(cfg.model, pretrained=None))
    model.load_state_dict(state["state_dict"])
    return method, model.to(device).eval(), state
