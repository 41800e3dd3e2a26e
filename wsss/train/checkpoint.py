"""Checkpoints: one ``model.pt`` holding weights and what is needed to rebuild them.

Files hold only tensors and plain Python values, so they load with ``weights_only=True``; a
file that needs arbitrary unpickling is refused. Every command and sweep option that reads a
checkpoint goes through :func:`open_checkpoint`: a local path or a URI (``file://``, ``s3://``,
any fsspec protocol such as ``memory://``; ``wsss.storage.Location``), read once, its kind (classifier, segmenter, affinity network)
checked, its content hashed (sha256, what output manifests record), and its model built once per
process (:meth:`Checkpoint.model`). ``save_checkpoint`` writes classifiers; ``write_state`` /
``read_state`` / ``restore_training_state`` are the generic steps other models' checkpoints
(``wsss.train.segmenter``, ``wsss.train.affinity``) share.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import io
import os
import pickle
import shutil
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

import pyarrow.fs as pafs
import torch
from torch import nn

from wsss.config import ModelConfig, from_dict
from wsss.errors import ConfigError, WsssError
from wsss.methods import get_method
from wsss.models.backbones import Backbone
from wsss.storage import Location

FORMAT = "wsss.classifier/1"
SEGMENTER_FORMAT = "wsss.segmenter/1"
AFFINITY_FORMAT = "wsss.affinity/1"
# kind -> (format, how errors name it, module that registers its model builder)
KINDS = {"classifier": (FORMAT, "classifier", "wsss.train.checkpoint"),
         "segmenter": (SEGMENTER_FORMAT, "segmenter", "wsss.train.segmenter"),
         "affinity": (AFFINITY_FORMAT, "affinity network", "wsss.train.affinity")}
CACHED_CHECKPOINTS = 4  # checkpoints (with their built models) kept per process


class CheckpointError(WsssError, ValueError):
    """A checkpoint is missing, unsafe, or does not fit what it is used for."""


@dataclasses.dataclass(frozen=True, eq=False)
class Checkpoint:
    """A checkpoint file as read by :func:`open_checkpoint`.

    Attributes:
        source: the path or URI it was read from, as given (for messages).
        kind: ``classifier``, ``segmenter`` or ``affinity``.
        sha256: hex digest of the file's bytes: its identity, whatever its path.
        state: the checkpoint dict (tensors and plain values).
    """

    source: str
    kind: str
    sha256: str
    state: dict[str, Any]
    _models: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False)

    def model(self, device: str | torch.device = "cpu") -> nn.Module:
        """The model in eval mode on ``device``, built on first use and then shared by every
        caller in this process (read-only use: inference, or copying its weights).

        Raises:
            CheckpointError: the weights do not fit the model the checkpoint names.
        """
        key = str(device)
        with _LOCK:
            if key not in self._models:
                importlib.import_module(KINDS[self.kind][2])  # registers the kind's builder
                model = _BUILDERS[self.kind](self.state, self.source)
                self._models[key] = model.to(device).eval()
            return self._models[key]


_BUILDERS: dict[str, Callable[[dict[str, Any], str], nn.Module]] = {}
_CACHE: OrderedDict[tuple[Any, ...], Checkpoint] = OrderedDict()
_LOCK = threading.RLock()


def register_builder(kind: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: ``fn(state, source) -> nn.Module`` builds the model of ``kind``'s
    checkpoints (weights loaded) for :meth:`Checkpoint.model`."""
    def register(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _BUILDERS[kind] = fn
        return fn
    return register


def open_checkpoint(source: str | os.PathLike, kind: str | tuple[str, ...]) -> Checkpoint:
    """The checkpoint at ``source`` (a local path, or a URI ``wsss.storage.Location`` opens:
    ``file://``, ``s3://``, ``gs://``, any fsspec protocol), read once per process
    while the file is unchanged (size and modification stamp), loaded with
    ``weights_only=True``, and checked to be of ``kind`` (or one of them).

    Raises:
        CheckpointError: missing, unreadable, unsafe to load, or of another kind (the message
            names the source and, for a wsss checkpoint of another kind, what it is).
    """
    text = os.fspath(source)
    kinds = (kind,) if isinstance(kind, str) else tuple(kind)
    loc, stamp = _file_stamp(text)
    key = (type(loc.filesystem).__name__, loc.root, *stamp) if stamp else None
    with _LOCK:
        cached = _CACHE.get(key) if key else None
        if cached is not None:
            _CACHE.move_to_end(key)
    if cached is None:
        cached = _read_checkpoint(text, loc)
        if key:
            with _LOCK:
                _CACHE[key] = cached
                while len(_CACHE) > CACHED_CHECKPOINTS:
                    _CACHE.popitem(last=False)
    if cached.kind not in kinds:
        raise CheckpointError(_wrong_kind(text, kinds, cached.state.get("format")))
    return dataclasses.replace(cached, source=text, _models=cached._models)


def _file_stamp(source: str) -> tuple[Location, tuple[Any, ...]]:
    """(the file's ``Location``, (size, modification time) or () when its store has none)."""
    try:
        loc = Location.parse(source)
        info = loc.filesystem.get_file_info(loc.root)
    except (OSError, ValueError) as err:
        raise CheckpointError(f"cannot read checkpoint {source}: {err}") from err
    if info.type == pafs.FileType.NotFound:
        raise CheckpointError(f"checkpoint not found: {source}")
    if info.type == pafs.FileType.Directory:
        raise CheckpointError(f"checkpoint {source} is a folder, not a model.pt file")
    return loc, (info.size, str(info.mtime)) if info.mtime is not None else ()


def _read_checkpoint(source: str, loc: Location) -> Checkpoint:
    """Read, hash and load the file; its kind from its format ("" when not a wsss one)."""
    try:
        with loc.filesystem.open_input_stream(loc.root) as stream:
            data = stream.readall()
    except OSError as err:
        raise CheckpointError(f"cannot read checkpoint {source}: {err}") from err
    state = _load_state(io.BytesIO(data), source)
    fmt = state.get("format") if isinstance(state, dict) else None
    kind = next((k for k, spec in KINDS.items() if fmt == spec[0]), "")
    return Checkpoint(source, kind, hashlib.sha256(data).hexdigest(),
                      state if isinstance(state, dict) else {})


def _wrong_kind(source: str, kinds: tuple[str, ...], fmt: Any) -> str:
    """The message for a file that is not a wsss checkpoint of ``kinds``."""
    wanted = " or ".join(KINDS[k][1] for k in kinds)
    found = next((spec[1] for spec in KINDS.values() if spec[0] == fmt), None)
    if found:
        return f"{source} is not a wsss {wanted} checkpoint: it holds a {found}"
    formats = " or ".join(KINDS[k][0] for k in kinds)
    return f"{source} is not a wsss {wanted} checkpoint (format {formats})"


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


def load_checkpoint_state(path: str | os.PathLike) -> dict[str, Any]:
    """A classifier checkpoint's dict (:func:`open_checkpoint`)."""
    return open_checkpoint(path, "classifier").state


def write_state(path: str | Path, state: dict[str, Any]) -> Path:
    """Write a checkpoint dict (tensors and plain values only) atomically (temp file + rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def read_state(path: str | Path, fmt: str | tuple[str, ...], kind: str) -> dict[str, Any]:
    """Load a local checkpoint dict with ``weights_only=True``, uncached (a training run's
    own checkpoints, rewritten as it goes), and check that its format is ``fmt`` (or one of
    them). ``kind`` names the expected checkpoint in errors (e.g. "classifier").
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    state = _load_state(path, path)
    formats = (fmt,) if isinstance(fmt, str) else fmt
    if not isinstance(state, dict) or state.get("format") not in formats:
        raise CheckpointError(f"{path} is not a wsss {kind} checkpoint (format "
                              f"{' or '.join(formats)})")
    return state


def _load_state(file: Any, source: str | Path) -> Any:
    """``torch.load(file, weights_only=True)`` on the CPU; CheckpointError naming ``source``
    when the file is unsafe or damaged."""
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:  # weights_only refused what the file holds
        raise CheckpointError(f"refusing checkpoint {source}: it is not a file of tensors and "
                              f"plain values that torch.load(weights_only=True) can read safely "
                              f"({_unpickler_reason(err)})") from err
    except Exception as err:  # torch raises RuntimeError, EOFError... for damaged files
        raise CheckpointError(f"cannot load checkpoint {source} safely (weights_only=True): "
                              f"{str(err).splitlines()[0]}") from err


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


def load_classifier(path: str | os.PathLike, device: str | torch.device = "cpu",
                    expect_classes: int | None = None) -> tuple[Any, nn.Module, dict[str, Any]]:
    """``(method, model in eval mode, checkpoint state)`` of a classifier checkpoint (path or
    URI; the model built once per process, :meth:`Checkpoint.model`).

    ``expect_classes`` (the dataset's foreground class count) is checked before any work.
    """
    ckpt = open_checkpoint(path, "classifier")
    check_classes(ckpt.state, expect_classes, ckpt.source)
    return classifier_method(ckpt.state, ckpt.source), ckpt.model(device), ckpt.state


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
    method = classifier_method(state, source)
    return method, _build_classifier(state, source).to(device).eval()


def classifier_method(state: dict[str, Any], source: str | Path = "checkpoint") -> Any:
    """The method (``wsss.methods``) of a classifier checkpoint dict; CheckpointError naming
    ``source`` when it is unknown or its parameters do not fit."""
    try:
        return get_method(state["method"])(state["num_classes"], state["method_params"])
    except (ConfigError, KeyError, TypeError) as err:
        raise CheckpointError(f"{source}: cannot rebuild its classifier (method "
                              f"{state.get('method')!r}): {err}") from err


@register_builder("classifier")
def _build_classifier(state: dict[str, Any], source: str | Path) -> nn.Module:
    """The classifier of a checkpoint dict with its weights, on the CPU."""
    method = classifier_method(state, source)
    try:
        # Only the model section is needed; other sections may have changed since.
        model_cfg = from_dict(state["config"].get("model", {}), ModelConfig, prefix="model.")
        model = method.build_model(dataclasses.replace(model_cfg, pretrained=None))
    except (ConfigError, KeyError, TypeError) as err:
        raise CheckpointError(f"{source}: cannot rebuild its classifier (method "
                              f"{state.get('method')!r}): {err}") from err
    load_weights(model, state["state_dict"], source)
    return model


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
    ckpt = open_checkpoint(path, "classifier")
    first = next(m for m in ckpt.model().modules() if isinstance(m, Backbone))
    return ckpt.state["config"].get("model", {}).get("backbone", "resnet18"), first.state_dict()
