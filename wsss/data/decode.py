"""Decoding one image or mask file into arrays, upright and within a size bound.

Images and masks are read as a picture viewer shows them: an EXIF ``Orientation`` tag (a
photo stored sideways, as cameras and phones write them) is applied on decoding with
``PIL.ImageOps.exif_transpose``, so a mask drawn on the upright picture lines up with it.
Both are downscaled alike (one ``fit_size`` of the upright size), which bounds memory for huge
files: JPEGs are decoded at 1/2, 1/4 or 1/8 scale by ``Image.draft``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from wsss.data import errors
from wsss.data.errors import DatasetError
from wsss.data.palette import IGNORE_INDEX, colours_to_indices

# Errors PIL raises for files it cannot decode (DecompressionBombError: over PIL's pixel limit).
DECODE_ERRORS = (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError,
                 ValueError)
# EXIF orientations (TIFF 6.0 / EXIF 2.3 tag 0x0112) whose upright picture swaps the sides.
_SIDEWAYS = (5, 6, 7, 8)


def fit_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """(width, height) scaled down, aspect kept, so that the longer side is at most
    ``max_side``; unchanged when it already fits. Images and their masks share it, so a
    downscaled pair keeps equal sizes. Symmetric: ``fit_size(h, w)`` is ``fit_size(w, h)``
    reversed, so a sideways-stored file's target is the upright target reversed."""
    longest = max(width, height)
    if longest <= max_side:
        return width, height
    scale = max_side / longest
    return max(1, round(width * scale)), max(1, round(height * scale))


def is_sideways(im: Image.Image) -> bool:
    """True when ``im``'s EXIF orientation (5-8) turns it by 90 degrees to stand upright."""
    return im.getexif().get(ExifTags.Base.Orientation) in _SIDEWAYS


def upright_size(im: Image.Image) -> tuple[int, int]:
    """(width, height) of ``im`` once its EXIF orientation is applied."""
    return im.size[::-1] if is_sideways(im) else im.size


def _stored_target(im: Image.Image, max_side: int) -> tuple[int, int]:
    """The size, in the file's stored orientation, whose upright turn is ``fit_size`` of the
    upright picture."""
    target = fit_size(*upright_size(im), max_side)
    return target[::-1] if is_sideways(im) else target


def load_rgb(path: Path | BinaryIO, max_side: int = 1024) -> np.ndarray:
    """Decode any image (gray, RGBA, CMYK, 16-bit, palette) to RGB uint8 [H, W, 3], upright
    (EXIF orientation applied, as ``PIL.ImageOps.exif_transpose``) and downscaled to
    ``fit_size(upright width, upright height, max_side)``.

    Memory stays bounded for huge images: a JPEG is decoded at 1/2, 1/4 or 1/8 scale by
    ``Image.draft`` (towards the target in its stored orientation); other formats are decoded
    once and resized before any conversion or rotation. ``path`` may be an open binary file;
    its ``name`` attribute then names it in errors.

    Raises:
        DatasetError: the file cannot be decoded (kind ``images cannot be decoded``).
    """
    try:
        with Image.open(path) as im:
            target = _stored_target(im, max_side)
            im.draft("RGB", target)  # JPEG only: DCT scaling to the smallest size >= target
            im.load()
            if im.mode in ("P", "PA", "1"):  # resizing would fall back to nearest neighbour
                im = im.convert("RGBA" if im.mode == "PA" else "RGB")
            if im.size != target:
                im = im.resize(target, Image.BILINEAR)
            ImageOps.exif_transpose(im, in_place=True)
            if im.mode.startswith("I"):  # 16/32-bit grayscale: rescale to 8 bits
                arr = np.asarray(im, dtype=np.float32)
                arr = arr * (255.0 / max(float(arr.max()), 1.0))
                im = Image.fromarray(arr.astype(np.uint8))
            return np.asarray(im.convert("RGB")).copy()
    except DECODE_ERRORS as err:
        raise decode_error("image", file_name(path), err) from err


def load_mask(path: Path | BinaryIO, size: tuple[int, int], num_classes: int,
              max_side: int = 1024) -> np.ndarray:
    """Decode a palette/grayscale mask PNG to class indices uint8 [H, W] and validate it
    (``path`` may be an open binary file with a ``name``).

    The mask's own EXIF orientation is applied, as for images: a viewer shows the mask that
    way, so that is the picture its author saw and labelled. Masks from annotation tools (and
    those wsss writes) carry no orientation tag, so for them nothing changes. A mask larger
    than ``max_side`` is downscaled (nearest neighbour) by ``fit_size``, as its image is.

    Args:
        size: (H, W) of the loaded (upright, downscaled) image.
        num_classes: values 0..num_classes-1 and 255 (ignore) are valid.

    Raises:
        DatasetError: naming the file, with one of the kinds of ``wsss.data.errors``: not a
            palette/grayscale PNG (RGB masks in the VOC colour map are told apart: ``wsss data
            convert-masks`` converts them), undecodable, of another size than the image (its
            transpose is called out), or holding values outside the class range.
    """
    name = file_name(path)
    try:
        with Image.open(path) as im:
            if im.mode not in ("P", "L"):
                raise mask_mode_error(im, name, num_classes)
            im.load()
            target = _stored_target(im, max_side)
            if im.size != target:
                im = im.resize(target, Image.NEAREST)
            ImageOps.exif_transpose(im, in_place=True)
            mask = np.asarray(im).copy()
    except DatasetError:  # a ValueError too: keep the message as it is
        raise
    except DECODE_ERRORS as err:
        raise decode_error("mask", name, err) from err
    _check_mask_size(mask, size, name)
    bad = (mask >= num_classes) & (mask != IGNORE_INDEX)
    if bad.any():
        values = sorted(set(mask[bad].tolist()))
        raise DatasetError(f"mask {name} has label value(s) {values} outside "
                           f"0..{num_classes - 1} (255 = ignore)",
                           errors.mask_values_kind(num_classes), name, f"values {values}")
    return mask


def _check_mask_size(mask: np.ndarray, size: tuple[int, int], name: str) -> None:
    if mask.shape == tuple(size):
        return
    sizes = f"{mask.shape[1]}x{mask.shape[0]} but its image is {size[1]}x{size[0]}"
    if mask.shape == tuple(size)[::-1]:
        raise DatasetError(
            f"mask {name} has size {sizes}: the transpose, so one of the two is likely stored "
            f"rotated by an EXIF orientation tag the other lacks (wsss applies EXIF "
            f"orientation to both, as image viewers do; the mask must match the upright "
            f"picture)", errors.MASK_TRANSPOSED, name, sizes)
    raise DatasetError(f"mask {name} has size {sizes}", errors.MASK_SIZE, name, sizes)


def rgb_mask_indices(im: Image.Image, num_classes: int) -> tuple[np.ndarray, list[str]]:
    """Class indices uint8 [H, W] of an RGB(A) mask drawn in the PASCAL VOC colour map
    (``wsss.data.palette``), and the problems that make it not one ([] when it is): colours
    outside the map of classes 0..num_classes-1 and void, transparent pixels (RGBA), or
    another mode. The EXIF orientation is not applied (the pixels are returned as stored)."""
    if im.mode not in ("RGB", "RGBA"):
        return np.zeros(im.size[::-1], np.uint8), [f"mode {im.mode} is not RGB"]
    pixels = np.asarray(im)
    problems = []
    if im.mode == "RGBA" and (pixels[..., 3] != 255).any():
        problems.append("transparent pixels")
    indices, unknown = colours_to_indices(pixels[..., :3], num_classes)
    if unknown:
        shown = ", ".join(str(c) for c in unknown[:5])
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        problems.append(f"colour(s) {shown}{more} outside the PASCAL VOC colour map of "
                        f"classes 0..{num_classes - 1} and 255")
    return indices, problems


def mask_mode_error(im: Image.Image, name: str, num_classes: int) -> DatasetError:
    """The error for a mask that is not a palette or grayscale PNG; one in the VOC colour map
    says that ``wsss data convert-masks`` converts it."""
    message = (f"mask {name} has mode {im.mode}: expected a palette (P) or grayscale (L) PNG "
               f"of class indices")
    if im.mode in ("RGB", "RGBA") and not rgb_mask_indices(im, num_classes)[1]:
        return DatasetError(f"{message}; its colours are the PASCAL VOC colour map, so `wsss "
                            f"data convert-masks` can convert it", errors.MASK_VOC_COLOURS, name)
    return DatasetError(message, errors.mask_mode_kind(im.mode), name)


def decode_error(what: str, name: str, err: Exception) -> DatasetError:
    """The DatasetError for a file PIL could not decode (PIL's own text names a file object
    by its repr, so an unidentified file gets a reason of its own)."""
    reason = ("not an image PIL can identify (empty, damaged, or of an unknown format)"
              if isinstance(err, UnidentifiedImageError) else str(err))
    kind = errors.IMAGE_UNREADABLE if what == "image" else errors.MASK_UNREADABLE
    return DatasetError(f"cannot read {what} {name}: {reason}", kind, name, reason)


def file_name(path: Any) -> str:
    """A path as text, or the ``name`` of an open file."""
    return str(path if isinstance(path, (str, Path)) else getattr(path, "name", path))
