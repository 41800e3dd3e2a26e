"""Saliency (objectness) maps for saliency-guided pseudo-masks (Oh et al., CVPR 2017).

Two sources: a folder of precomputed maps, ``<dataset>/SaliencyMaps/<id>.png`` (grayscale,
255 = salient; the common WSSS practice, e.g. maps from a salient-object detector), or the
spectral-residual static saliency of Hou & Zhang (CVPR 2007), computed here with numpy FFTs (the
same algorithm as OpenCV-contrib's ``StaticSaliencySpectralResidual``, without that dependency).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from wsss.data.errors import DatasetError

SALIENCY_DIR = "SaliencyMaps"
SOURCES = ("auto", "folder", "spectral_residual")
_WORK_WIDTH = 64  # the algorithm works on a small thumbnail, as in the paper


def spectral_residual(image: np.ndarray) -> np.ndarray:
    """Static saliency of an RGB uint8 image [H, W, 3] -> float [H, W] in [0, 1].

    log-amplitude spectrum minus its 3x3 local mean (the "spectral residual"), back to the
    image domain with the original phase, squared, Gaussian-smoothed, resized and normalised.
    """
    height, width = image.shape[:2]
    gray = torch.from_numpy(image.astype(np.float32).mean(axis=2))[None, None]
    small_h = max(8, round(height * _WORK_WIDTH / width))
    gray = F.interpolate(gray, size=(small_h, _WORK_WIDTH), mode="area")[0, 0].double()
    spectrum = torch.fft.fft2(gray)
    log_amp = torch.log(spectrum.abs() + 1e-8)
    local_mean = F.avg_pool2d(log_amp[None, None], 3, stride=1, padding=1,
                              count_include_pad=False)[0, 0]
    residual = torch.exp(log_amp - local_mean) * torch.exp(1j * torch.angle(spectrum))
    sal = torch.fft.ifft2(residual).abs() ** 2
    sal = _gaussian_blur(sal.float(), sigma=2.5)
    sal = F.interpolate(sal[None, None], size=(height, width), mode="bilinear",
                        align_corners=False)[0, 0]
    sal = sal - sal.min()
    return (sal / (sal.max() + 1e-8)).numpy()


def load_saliency(root: str | Path, sample_id: str, size: tuple[int, int]) -> np.ndarray:
    """Precomputed map ``<root>/SaliencyMaps/<id>.png`` as float [H, W] in [0, 1].

    The map's EXIF orientation is applied (``PIL.ImageOps.exif_transpose``), as for images
    (``wsss.data.decode``); maps of another size than the image (H, W) are then resized
    bilinearly.

    Raises:
        DatasetError: the file is missing or cannot be decoded.
    """
    path = Path(root) / SALIENCY_DIR / f"{sample_id}.png"
    try:
        with Image.open(path) as im:
            upright = ImageOps.exif_transpose(im)
            sal = np.asarray(upright.convert("L"), dtype=np.float32) / 255.0
    except (FileNotFoundError, OSError) as err:
        raise DatasetError(f"cannot read saliency map {path}: {err}") from err
    if sal.shape != tuple(size):
        sal = F.interpolate(torch.from_numpy(sal)[None, None], size=size, mode="bilinear",
                            align_corners=False)[0, 0].numpy()
    return sal


def saliency_for(root: str | Path, sample_id: str, image: np.ndarray,
                 source: str = "auto") -> np.ndarray:
    """The saliency map [H, W] of an image from ``source`` (``auto``: folder if present)."""
    if source not in SOURCES:
        raise ValueError(f"unknown saliency source '{source}'; choose one of: {', '.join(SOURCES)}")
    if source == "auto":
        source = "folder" if (Path(root) / SALIENCY_DIR).is_dir() else "spectral_residual"
    if source == "folder":
        return load_saliency(root, sample_id, image.shape[:2])
    return spectral_residual(image)


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of a 2-D tensor [h, w] (reflect padding)."""
    radius = int(3 * sigma)
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    kernel = torch.exp(-(t ** 2) / (2 * sigma ** 2))
    kernel = kernel / kernel.sum()
    x = x[None, None]
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="reflect"), kernel.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="reflect"), kernel.view(1, 1, -1, 1))
    return x[0, 0]
