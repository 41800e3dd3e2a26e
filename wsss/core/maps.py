"""Localization maps (CAM and Grad-CAM) for every present class of a batch, and map files.

Models follow one contract: ``model.backbone`` is a :class:`~wsss.models.backbones.Backbone`
(``forward_until`` / ``forward_from`` a named stage) and ``model.maps_from_features`` turns
last-stage features [B, F, h, w] into raw class maps [B, C, h, w] whose spatial mean are the
logits [B, C].

Grad-CAM is computed for all (image, present class) pairs from a single forward pass: the trunk up
to the target layer runs without autograd, its activation becomes a leaf, and only the tail
(target layer -> logits) is differentiated, once per "class slot" (slot p holds the p-th present
class of every image) on the same retained graph.
"""

from __future__ import annotations

import contextlib
import io
import os
import zipfile
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from wsss.core.precision import autocast
from wsss.data.transforms import resize_by
from wsss.models.classifier import unwrap
from wsss.models.heads import NORM_EPS
from wsss.storage import write_atomic

if TYPE_CHECKING:
    from wsss.methods.base import Method

MAP_KINDS = ("cam", "gradcam")


def _device_of(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Put ``model`` in eval mode for the block, restoring its previous mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


# -- raw maps ----------------------------------------------------------------------------------
def cam_maps(method: Method, model: nn.Module, images: torch.Tensor,
             labels: torch.Tensor | None = None) -> torch.Tensor:
    """Raw class activation maps [B, C, h, w] for images [B, 3, H, W] (no autograd)."""
    with torch.no_grad():
        return method.class_maps(model, images, labels)


def _class_slots(present: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Present classes of each image packed into slots.

    Args:
        present: bool [B, C].

    Returns:
        classes long [B, P] (class of slot p of image b) and valid bool [B, P], where P is the
        largest number of present classes of any image.
    """
    num_slots = int(present.sum(dim=1).max().item()) if present.numel() else 0
    order = torch.argsort(present.to(torch.int8), dim=1, descending=True, stable=True)
    classes = order[:, :num_slots]
    return classes, present.gather(1, classes)


def _channel_weights(logits: torch.Tensor, leaf: torch.Tensor, classes: torch.Tensor,
                     valid: torch.Tensor) -> torch.Tensor:
    """Grad-CAM weights: spatial mean of d logit[b, classes[b, p]] / d leaf[b] for each slot p.

    One backward pass of the tail per slot, reusing the same graph (no forward is re-run); only
    the gradient with respect to ``leaf`` is computed (no parameter gradients).

    Args:
        logits: [B, C], differentiable function of ``leaf``.
        leaf: activation [B, K, h, w] requiring grad.
        classes, valid: [B, P] slots from :func:`_class_slots`.

    Returns:
        Weights [P, B, K] (zero for invalid slots).
    """
    num_slots = classes.shape[1]
    weights = []
    for slot in range(num_slots):
        one_hot = torch.zeros_like(logits)
        one_hot.scatter_(1, classes[:, slot:slot + 1], valid[:, slot:slot + 1].to(logits.dtype))
        (grad,) = torch.autograd.grad(logits, leaf, grad_outputs=one_hot,
                                      retain_graph=slot < num_slots - 1)
        weights.append(grad.mean(dim=(2, 3)))
    return torch.stack(weights)


def gradcam_maps(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                 layer: str = "layer4") -> torch.Tensor:
    """Grad-CAM maps relu(sum_k alpha_k^c A_k) for every present class, from one forward pass.

    ``alpha^c`` is the spatial mean of d logit_c / d A, A the activation of backbone stage
    ``layer``. Backpropagation starts at the logits and stops at ``layer``: nothing before it is
    differentiated and no parameter gradient is computed. The backward of each class slot is
    summed over the batch, so the model must not mix images (eval-mode batch norm).

    Args:
        model: a model following the backbone / ``maps_from_features`` contract, in eval mode.
        images: [B, 3, H, W] on the model's device.
        labels: multi-hot [B, C]; classes with label <= 0.5 get zero maps.
        layer: backbone stage (``stem``, ``layer1`` .. ``layer4``).

    Returns:
        Raw (un-normalised, non-negative) maps [B, C, h', w'] at the resolution of ``layer``.
    """
    if torch.is_inference_mode_enabled():
        raise RuntimeError("gradcam_maps needs autograd; call it outside torch.inference_mode()")
    net = unwrap(model)
    with torch.no_grad():
        acts = net.backbone.forward_until(layer, images)
    present = labels.to(acts.device) > 0.5
    out = acts.new_zeros((acts.shape[0], labels.shape[1], *acts.shape[2:]))
    classes, valid = _class_slots(present)
    if classes.shape[1] == 0:
        return out
    leaf = acts.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = net.maps_from_features(net.backbone.forward_from(layer, leaf)).mean(dim=(2, 3))
        alpha = _channel_weights(logits, leaf, classes, valid)  # [P, B, K]
    cams = torch.relu(torch.einsum("pbk,bkhw->pbhw", alpha, acts))
    image_idx, slot_idx = valid.nonzero(as_tuple=True)
    out[image_idx, classes[image_idx, slot_idx]] = cams[slot_idx, image_idx]
    return out


# -- localization maps -------------------------------------------------------------------------
def _raw_maps(method: Method, model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
              kind: str, layer: str) -> torch.Tensor:
    """Raw maps [B, C, h, w] of the requested kind."""
    if kind == "cam":
        return cam_maps(method, model, images, labels)
    return gradcam_maps(model, images, labels, layer)


def _scale_maps(method: Method, model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                kind: str, layer: str, flip: bool, out_size: tuple[int, int],
                precision: str) -> torch.Tensor:
    """Maps [N, *out_size] of the N present (image, class) pairs of one (resized) batch.

    Pairs are in ``(labels > 0.5).nonzero()`` order; only they are upsampled. With ``flip`` the
    mirrored batch's maps are mirrored back and added. The network runs under ``precision``'s
    autocast; its maps are promoted to at least float32 before anything else is done.
    """
    present = labels > 0.5
    if flip:
        images = torch.cat([images, images.flip(-1)])
        labels = torch.cat([labels, labels])
    with autocast(images.device, precision):
        raw = _raw_maps(method, model, images, labels, kind, layer)
    raw = raw.to(torch.promote_types(raw.dtype, torch.float32))
    batch = present.shape[0]
    maps = raw[:batch][present]
    if flip:
        maps = torch.cat([maps, raw[batch:][present]])
    maps = F.interpolate(maps.unsqueeze(1), size=out_size, mode="bilinear",
                         align_corners=False).squeeze(1)
    if flip:
        pairs = maps.shape[0] // 2
        maps = maps[:pairs] + maps[pairs:].flip(-1)
    return maps


def _check_kind(kind: str, method: Method) -> None:
    if kind not in MAP_KINDS:
        raise ValueError(f"unknown map kind '{kind}'; choose one of: {', '.join(MAP_KINDS)}")
    if kind not in method.supported_map_kinds:
        raise ValueError(f"method '{method.name}' gives {', '.join(method.supported_map_kinds)} "
                         f"maps only, not {kind}")


def localization_maps(method: Method, model: nn.Module, images: torch.Tensor,
                      labels: torch.Tensor, kind: str | None = None, layer: str | None = None,
                      scales: Sequence[float] = (1.0,), flip: bool = False,
                      out_size: tuple[int, int] | None = None,
                      image_scale: float = 1.0, precision: str = "fp32") -> torch.Tensor:
    """Normalised localization maps of every class, multi-scale and optionally flip-averaged.

    For each scale ``s`` the batch is resized (bilinear) by ``s * image_scale``, mapped (and mirrored, mapped, mirrored back
    when ``flip``), upsampled to ``out_size``; the sum over scales is ReLU'd and divided per image
    and class by its maximum (+1e-5). Absent classes are exactly zero (only present pairs are
    upsampled). The model runs in eval mode (its previous mode is restored) on its own device,
    in the memory format it has (``wsss.core.precision.to_memory_format``; the inputs are not
    converted), under the autocast of ``precision``.

    Args:
        method: a :class:`~wsss.methods.base.Method` (gives CAM maps and defaults).
        model: the method's model.
        images: [B, 3, H, W].
        labels: multi-hot [B, C].
        kind: ``"cam"``, ``"gradcam"`` or None for ``method.default_map_kind``.
        layer: Grad-CAM stage, None for ``method.map_layer``.
        scales: test-time scale factors, relative to ``image_scale``.
        flip: also use horizontally flipped images.
        out_size: (H_out, W_out), default the input size (H, W).
        image_scale: the resolution the model was trained at as a factor of ``images``
            (``data.image_scale``; ``wsss.train.checkpoint.trained_image_scale``), so objects
            have the size they had in training.
        precision: ``fp32`` | ``bf16`` | ``fp16`` (``cams.precision``), checked by the caller
            (``wsss.core.precision.check_precision``).

    Returns:
        Float maps [B, C, H_out, W_out] in [0, 1] on the model's device: float32 for every
        precision (float64 when the model and images are float64, a reference computation).
    """
    kind = kind or method.default_map_kind
    _check_kind(kind, method)
    if len(scales) == 0:
        raise ValueError("localization_maps needs at least one scale")
    layer = layer or method.map_layer
    device = _device_of(model)
    images = images.to(device)
    labels = labels.to(device)
    height, width = images.shape[-2:]
    size = tuple(out_size) if out_size is not None else (height, width)
    with _eval_mode(model):
        total = sum(_scale_maps(method, model, resize_by(images, scale * image_scale), labels,
                                kind, layer, flip, size, precision) for scale in scales)
    total = torch.relu(total)
    total = total / (total.amax(dim=(1, 2), keepdim=True) + NORM_EPS)
    out = total.new_zeros((*labels.shape, *size))
    out[labels > 0.5] = total
    return out


# -- map files ---------------------------------------------------------------------------------
def save_maps(path: str | os.PathLike, maps: np.ndarray | torch.Tensor,
              class_ids: Sequence[int]) -> None:
    """Atomically write maps [K, H, W] (stored as float16) and their dataset class ids to .npz.

    The file is written to a temporary name in the same directory and moved into place, so a
    reader never sees a partial file.
    """
    write_atomic(Path(path), maps_npz_bytes(maps, class_ids, str(path)))


def maps_npz_bytes(maps: np.ndarray | torch.Tensor, class_ids: Sequence[int],
                   name: str = "maps") -> bytes:
    """Maps [K, H, W] (as float16) and their K dataset class ids encoded as an .npz file;
    ``name`` names the destination in errors."""
    if isinstance(maps, torch.Tensor):
        maps = maps.detach().cpu().numpy()
    maps = np.asarray(maps)
    ids = np.asarray(list(class_ids), dtype=np.int64)
    if maps.ndim != 3 or maps.shape[0] != ids.shape[0]:
        raise ValueError(f"{name}: expected maps [K, H, W] with K == len(class_ids) "
                         f"({ids.shape[0]}), got shape {tuple(maps.shape)}")
    buffer = io.BytesIO()
    np.savez_compressed(buffer, maps=maps.astype(np.float16), class_ids=ids)
    return buffer.getvalue()


def load_maps(path: str | os.PathLike) -> tuple[np.ndarray, list[int]]:
    """Read a map file written by :func:`save_maps`.

    Returns:
        maps float32 [K, H, W] and the K dataset class ids.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not a readable map file (the message names it).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"map file not found: {path}")
    maps, class_ids = read_maps(path, str(path))
    return maps.astype(np.float32), class_ids


def read_maps(source: str | os.PathLike | BinaryIO, name: str) -> tuple[np.ndarray, list[int]]:
    """Maps [K, H, W] as stored (float16) and their K class ids from an .npz file or open
    binary file written by :func:`maps_npz_bytes`; ``name`` names it in errors (ValueError)."""
    try:
        data = np.load(source, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise ValueError("not an .npz archive")
        with data:
            maps = data["maps"]
            class_ids = [int(c) for c in data["class_ids"]]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        raise ValueError(f"unreadable map file {name}: {err}") from err
    if maps.ndim != 3 or maps.shape[0] != len(class_ids):
        raise ValueError(f"unreadable map file {name}: maps shape {maps.shape} does not match "
                         f"{len(class_ids)} class ids")
    return maps, class_ids
