"""Localization maps of every present class of a batch (any registered map kind, multi-scale
and flip-averaged), and map files.

Models follow one contract: ``model.backbone`` is a :class:`~wsss.models.backbones.Backbone`
(``forward_until`` / ``forward_from`` a named stage) and ``model.maps_from_features`` turns
last-stage features [B, F, h, w] into raw class maps [B, C, h, w] whose spatial mean are the
logits [B, C]. How the raw maps are computed is the map kind's (``wsss.core.map_kinds``: CAM,
Grad-CAM, LayerCAM, ...); what is done with them (scales, flip, normalisation) is the same for
every kind and lives here.
"""

from __future__ import annotations

import contextlib
import io
import os
import zipfile
import zlib
from pathlib import Path
from typing import BinaryIO, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from wsss.core.map_kinds import MAP_KINDS, MapKind, MapSource, map_kind_for
from wsss.core.precision import autocast
from wsss.data.transforms import resize_by
from wsss.models.heads import NORM_EPS
from wsss.storage import write_atomic


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


# -- raw maps of one kind ----------------------------------------------------------------------
def cam_maps(method: MapSource, model: nn.Module, images: torch.Tensor,
             labels: torch.Tensor | None = None) -> torch.Tensor:
    """Raw class activation maps [B, C, h, w] for images [B, 3, H, W] (no autograd)."""
    with torch.no_grad():
        return method.class_maps(model, images, labels)


def gradcam_maps(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                 layer: str = "layer4") -> torch.Tensor:
    """Grad-CAM maps relu(sum_k alpha_k^c A_k) [B, C, h', w'] at the resolution of backbone
    stage ``layer`` for every present class of multi-hot ``labels`` [B, C], from one forward
    pass (``wsss.core.map_kinds.gradcam``); the model in eval mode."""
    return MAP_KINDS["gradcam"]().raw_maps(model, images, labels, layer)


# -- localization maps -------------------------------------------------------------------------
def _scale_maps(method: MapSource, model: nn.Module, images: torch.Tensor,
                labels: torch.Tensor, kind: MapKind, layer: str, flip: bool,
                out_size: tuple[int, int], precision: str) -> torch.Tensor:
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
        raw = kind.raw_maps(model, images, labels, layer, method)
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


def localization_maps(method: MapSource, model: nn.Module, images: torch.Tensor,
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
        method: the method that trained the model (a ``wsss.core.map_kinds.MapSource``, e.g.
            ``wsss.methods.base.Method``): its class maps, default kind and layer.
        model: the method's model.
        images: [B, 3, H, W].
        labels: multi-hot [B, C].
        kind: a registered map kind (``wsss.core.map_kinds.MAP_KINDS``: ``"cam"``,
            ``"gradcam"``, ...) or None for ``method.default_map_kind``.
        layer: the stage a gradient kind weights, None for ``method.map_layer``.
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
    map_kind, layer = map_kind_for(method, kind, layer)
    if len(scales) == 0:
        raise ValueError("localization_maps needs at least one scale")
    device = _device_of(model)
    images = images.to(device)
    labels = labels.to(device)
    height, width = images.shape[-2:]
    size = tuple(out_size) if out_size is not None else (height, width)
    with _eval_mode(model):
        total = sum(_scale_maps(method, model, resize_by(images, scale * image_scale), labels,
                                map_kind, layer, flip, size, precision) for scale in scales)
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
