"""The PASCAL VOC colour map: class index <-> RGB colour of a mask pixel.

The map follows the VOC devkit (``VOCdevkit/VOCcode/VOClabelcolormap.m``): the bits of the class
index are interleaved over the red, green and blue channels, highest bit first, so class 1 is
(128, 0, 0), class 15 (person) is (192, 128, 128) and 255 (void / object boundaries) is
(224, 224, 192). It is a one-to-one map of 0..255 onto 256 distinct colours.

Numpy only (no plotting library), so dataset readers in Ray workers can use it.
"""

from __future__ import annotations

import io
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from wsss.storage import write_atomic

IGNORE_COLOUR = (224, 224, 192)  # VOC's colour for index 255 (void / object boundaries)
IGNORE_INDEX = 255  # class index of void / ignored pixels in every mask


@lru_cache(maxsize=1)
def _palette() -> np.ndarray:
    index = np.arange(256)
    palette = np.zeros((256, 3), dtype=np.int64)
    for bit in range(8):  # bit-interleaved colour map of the PASCAL VOC devkit
        for channel in range(3):
            palette[:, channel] |= ((index >> (channel + 3 * bit)) & 1) << (7 - bit)
    palette[IGNORE_INDEX] = IGNORE_COLOUR  # what the interleaving gives too; stated for clarity
    palette = palette.astype(np.uint8)
    palette.setflags(write=False)  # shared by every caller: nobody may change it
    return palette


def voc_palette() -> np.ndarray:
    """The PASCAL VOC colour map [256, 3] uint8 (class 1 = (128, 0, 0); 255 = light grey)."""
    return _palette().copy()


def colorize(mask: np.ndarray) -> np.ndarray:
    """Class-index mask [H, W] (any integer type) -> RGB [H, W, 3] uint8 in the VOC palette."""
    return _palette()[np.asarray(mask).astype(np.int64) & 255]


def _packed(rgb: np.ndarray) -> np.ndarray:
    """RGB [..., 3] uint8 -> one int64 per colour (0xRRGGBB) [...]."""
    rgb = rgb.astype(np.int64)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def class_colours(num_classes: int) -> np.ndarray:
    """The colours [num_classes + 1, 3] uint8 a mask of ``num_classes`` classes may hold:
    classes 0..num_classes-1, then void (255)."""
    indices = list(range(min(num_classes, IGNORE_INDEX))) + [IGNORE_INDEX]
    return _palette()[indices]


def colours_to_indices(rgb: np.ndarray, num_classes: int) -> tuple[np.ndarray, list[tuple]]:
    """Class indices of an RGB mask drawn in the VOC colour map.

    Args:
        rgb: the mask's pixels, uint8 [H, W, 3].
        num_classes: classes of the dataset; colours of classes 0..num_classes-1 and the void
            colour (224, 224, 192) -> 255 are recognised.

    Returns:
        ``(indices, unknown)``: indices uint8 [H, W] (0 where the colour is unknown) and the
        sorted list of (r, g, b) colours present in ``rgb`` that are none of those; the
        conversion is exact when ``unknown`` is empty.
    """
    colours = class_colours(num_classes)
    index_of = {int(c): i for i, c in enumerate(_packed(colours))}
    values = list(range(len(colours) - 1)) + [IGNORE_INDEX]
    present, inverse = np.unique(_packed(rgb), return_inverse=True)
    lookup = np.zeros(len(present), dtype=np.uint8)
    unknown = []
    for k, colour in enumerate(present.tolist()):
        if colour in index_of:
            lookup[k] = values[index_of[colour]]
        else:
            unknown.append((colour >> 16, (colour >> 8) & 255, colour & 255))
    return lookup[inverse.reshape(rgb.shape[:2])], unknown


def save_mask_png(path: str | Path, mask: np.ndarray) -> Path:
    """Write a class-index mask uint8 [H, W] as a VOC-palette PNG, atomically; returns the path.

    The file reads back (``wsss.data.decode.load_mask``) to the same indices, 255 included.
    """
    return write_atomic(Path(path), mask_png_bytes(mask))


def mask_png_bytes(mask: np.ndarray) -> bytes:
    """A class-index mask uint8 [H, W] encoded as a VOC-palette PNG file."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be [H, W], got shape {mask.shape}")
    if mask.dtype != np.uint8:
        if mask.size and (mask.min() < 0 or mask.max() > 255):
            raise ValueError("mask values must lie in 0..255")
        mask = mask.astype(np.uint8)
    image = Image.fromarray(np.ascontiguousarray(mask)).convert("P")
    image.putpalette(voc_palette().reshape(-1).tobytes())
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
