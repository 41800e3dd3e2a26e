"""A synthetic weakly supervised segmentation dataset in the PASCAL VOC layout.

Every image holds 1-3 objects (fewer objects are drawn larger) on a cluttered, smoothly textured
background. All objects share one body: a rounded, wobbly superellipse with fine oriented stripes
in a grey-tan colour distribution. A class is told apart reliably by a small disk (about 10-15 %
of the object area) in a class-specific saturated colour and pattern, placed at a random spot on
the body, and only weakly by the body: each class tints its body slightly (``BODY_TINTS``, about
the size of the per-object colour noise, so body colour alone is an unreliable cue). As with real
objects (a cow's head vs. its hide), the part suffices to classify: a classifier's activation
maps cover the part and miss most of the body, the failure that seed-expansion methods
(adversarial erasing, Hide-and-Seek, ACoL, ...) address by making the weaker body cue count.
Without any class cue in the body no classifier could be pushed to it; with a strong one plain
CAM would already cover it. The body also differs from the background (fine stripes vs. smooth
texture).

``render_sample`` draws one sample (image, mask, part map) from ``(seed, index)``;
``generate_dataset`` writes a whole dataset, byte-identical for the same seed. Sample ``i``
does not depend on ``n``, so a larger ``n`` extends a smaller dataset.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from wsss.data.palette import IGNORE_INDEX
from wsss.data.voc import IMAGE_DIR, MASK_DIR, SPLIT_DIR, DatasetInfo
from wsss.data.reader import read_info
from wsss.data.palette import save_mask_png
from wsss.storage import write_atomic

CLASS_NAMES = ("background", "red_spot", "blue_stripes", "green_checks", "yellow_dots",
               "violet_rings")
NUM_FG = len(CLASS_NAMES) - 1
# Part colours per foreground class: (main, second) RGB; the pattern alternates between them.
PART_COLOURS = np.array([
    [[225, 35, 35], [150, 10, 20]],
    [[35, 80, 235], [225, 230, 250]],
    [[40, 185, 60], [15, 80, 25]],
    [[245, 215, 35], [90, 60, 10]],
    [[175, 55, 225], [250, 235, 250]],
], dtype=np.float64)
BODY_COLOUR = np.array([150.0, 136.0, 116.0])
# Per foreground class: RGB offset of the body colour, towards the part's hue. Norm ~13, against
# per-object noise of sd 10 per channel plus sd 12 in brightness: a weak, overlapping class cue.
BODY_TINTS = np.array([
    [11.0, -5.0, -5.0],
    [-5.0, -2.0, 11.0],
    [-5.0, 11.0, -5.0],
    [7.0, 7.0, -10.0],
    [7.0, -9.0, 7.0],
])
PART_FRACTION = (0.10, 0.13)  # part area / object area when drawn (later overlaps raise it)
# Objects per image, their probabilities, and the major semi-axis range (x image size) by count:
# fewer objects are drawn larger, so the body reaches well beyond the part.
OBJECT_COUNTS, COUNT_PROBS = (1, 2, 3), (0.6, 0.27, 0.13)
SIZE_RANGES = {1: (0.5, 0.7), 2: (0.4, 0.54), 3: (0.32, 0.44)}
ASPECT = (0.45, 0.85)  # minor / major semi-axis
WOBBLE = 0.06  # relative amplitude of the boundary wobble
SHRINK = 0.97  # size factor per failed placement attempt
MAX_OVERLAP = 0.25  # largest share of a new object allowed to cover earlier objects
JPEG_QUALITY = 95


@dataclass(frozen=True)
class Sample:
    """One rendered sample.

    ``image`` RGB uint8 [H, W, 3]; ``mask`` uint8 [H, W] (class index; 255 on the pixel either
    side of every object boundary); ``parts`` uint8 [H, W] (class index on the distinctive-part pixels, 0
    elsewhere); ``instances`` uint8 [H, W] (object number 1..k, 0 = background, no void band);
    ``classes`` the class index of each object, in drawing order.
    """

    image: np.ndarray
    mask: np.ndarray
    parts: np.ndarray
    instances: np.ndarray
    classes: tuple[int, ...]


def sample_id(index: int) -> str:
    """File id of sample ``index``."""
    return f"synth_{index:05d}"


def render_sample(seed: int, index: int, image_size: int = 112) -> Sample:
    """Draw sample ``index`` of the dataset with ``seed`` (deterministic, independent of n)."""
    rng = np.random.default_rng([seed, index])
    size = image_size
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    image = _background(rng, size, xx, yy)
    instances = np.zeros((size, size), dtype=np.uint8)
    parts = np.zeros((size, size), dtype=np.uint8)
    classes: list[int] = []
    count = int(rng.choice(OBJECT_COUNTS, p=COUNT_PROBS))
    for _ in range(count):
        cls = int(rng.integers(1, NUM_FG + 1))
        shape = _place_object(rng, size, xx, yy, instances, parts, SIZE_RANGES[count])
        if shape is None:
            continue
        part = _part_mask(rng, shape)
        body = _body_texture(rng, cls, shape.u, shape.v, shape.radius)
        image[shape.inside] = body[shape.inside]
        image[part] = _part_texture(rng, cls, shape.u, shape.v)[part]
        instances[shape.inside] = len(classes) + 1
        parts[part] = cls
        classes.append(cls)
    image += rng.normal(0.0, 3.0, image.shape)  # sensor noise over everything
    mask = np.zeros((size, size), dtype=np.uint8)
    mask[instances > 0] = np.asarray(classes, dtype=np.uint8)[instances[instances > 0] - 1]
    mask[_boundary_band(mask)] = IGNORE_INDEX
    pixels = np.clip(image + 0.5, 0, 255).astype(np.uint8)
    return Sample(pixels, mask, parts, instances, tuple(classes))


def generate_dataset(out: str | Path, n: int = 300, seed: int = 0, image_size: int = 112,
                     val_fraction: float = 0.2) -> DatasetInfo:
    """Write ``n`` samples to ``out`` in the VOC layout and return its ``DatasetInfo``.

    Splits: a seeded shuffle puts ``round(n * val_fraction)`` ids (at least one, at most n - 1)
    in ``val`` and the rest in ``train``; ``trainval`` lists all. Every file is written
    atomically; files of ids >= n from an earlier, larger run are left alone but unlisted.
    """
    if n < 2:
        raise ValueError(f"n={n}: need at least 2 samples (one train, one val)")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction={val_fraction} must be in (0, 1)")
    if image_size < 32:
        raise ValueError(f"image_size={image_size} must be >= 32")
    root = Path(out)
    for sub in (IMAGE_DIR, MASK_DIR, SPLIT_DIR):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for index in range(n):
        sample = render_sample(seed, index, image_size)
        name = sample_id(index)
        _write_image(root / IMAGE_DIR / f"{name}.jpg", Image.fromarray(sample.image), "JPEG",
                     quality=JPEG_QUALITY, subsampling=0)  # 4:4:4 keeps the part patterns
        save_mask_png(root / MASK_DIR / f"{name}.png", sample.mask)
    order = np.random.default_rng([seed, n, 1]).permutation(n)
    n_val = min(max(1, round(n * val_fraction)), n - 1)
    splits = {"val": sorted(order[:n_val]), "train": sorted(order[n_val:]), "trainval": range(n)}
    for split, indices in splits.items():
        text = "".join(f"{sample_id(int(i))}\n" for i in indices)
        write_atomic(root / SPLIT_DIR / f"{split}.txt", text.encode())
    write_atomic(root / "classes.txt", "".join(f"{c}\n" for c in CLASS_NAMES).encode())
    return read_info(root)


# -- drawing -------------------------------------------------------------------------------------
def _value_noise(rng: np.random.Generator, size: int, cells: int, channels: int) -> np.ndarray:
    """Smooth noise [size, size, channels] in [0, 1]: a random grid, smoothstep-interpolated."""
    grid = rng.random((cells + 1, cells + 1, channels))
    t = (np.arange(size) + 0.5) * (cells / size)
    i0 = np.minimum(t.astype(np.int64), cells - 1)
    f = t - i0
    f = (f * f * (3.0 - 2.0 * f))[:, None, None]
    rows = grid[i0] * (1.0 - f) + grid[i0 + 1] * f  # [size, cells + 1, C]
    f = f[:, 0][None]
    return rows[:, i0] * (1.0 - f) + rows[:, i0 + 1] * f


def _background_colours(rng: np.random.Generator, k: int) -> np.ndarray:
    """k muted colours [k, 3] in 0..255 (saturation <= 0.45, unlike the parts)."""
    hue = rng.random(k)
    sat = rng.uniform(0.1, 0.45, k)
    val = rng.uniform(0.3, 0.85, k)
    offsets = np.array([0.0, 2.0 / 3.0, 1.0 / 3.0])
    wave = np.clip(np.abs(((hue[:, None] + offsets) % 1.0) * 6.0 - 3.0) - 1.0, 0.0, 1.0)
    return 255.0 * val[:, None] * (1.0 - sat[:, None] + sat[:, None] * wave)


def _background(rng: np.random.Generator, size: int, xx: np.ndarray,
                yy: np.ndarray) -> np.ndarray:
    """Cluttered background [size, size, 3] float: blended muted colours, smooth blobs, bars."""
    colours = _background_colours(rng, 3)
    weights = _value_noise(rng, size, int(rng.integers(2, 5)), 3) ** 2 + 1e-6
    image = (weights / weights.sum(-1, keepdims=True)) @ colours
    shade = _value_noise(rng, size, 6, 1)[..., 0]
    for _ in range(int(rng.integers(3, 8))):
        cx, cy = rng.uniform(0, size, 2)
        rx, ry = rng.uniform(0.05, 0.2, 2) * size
        blob = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2
        alpha = np.clip(1.5 * (1.0 - blob), 0.0, 1.0)[..., None]
        image = image * (1.0 - alpha) + alpha * _background_colours(rng, 1)[0]
    for _ in range(int(rng.integers(0, 3))):
        angle, offset = rng.uniform(0, np.pi), rng.uniform(0.2, 0.8) * size
        dist = np.abs((xx - size / 2) * np.sin(angle) - (yy - size / 2) * np.cos(angle)
                      + size / 2 - offset)
        alpha = np.clip(rng.uniform(1.5, 3.0) - dist, 0.0, 1.0)[..., None]
        image = image * (1.0 - alpha) + alpha * _background_colours(rng, 1)[0]
    return image * (0.85 + 0.3 * shade[..., None])


@dataclass(frozen=True)
class _Shape:
    """One placed object: ``inside`` bool [H, W]; ``u``, ``v`` object-frame pixel coordinates
    [H, W]; ``radius`` normalised superellipse radius [H, W] (1 on the boundary)."""

    inside: np.ndarray
    u: np.ndarray
    v: np.ndarray
    radius: np.ndarray


def _place_object(rng: np.random.Generator, size: int, xx: np.ndarray, yy: np.ndarray,
                  instances: np.ndarray, parts: np.ndarray, semi_axis: tuple[float, float],
                  tries: int = 40) -> _Shape | None:
    """A wobbly superellipse (major semi-axis ``semi_axis`` x image size) that overlaps
    earlier objects little and hides none of their parts, or None when none fits in ``tries``.
    Each failed attempt shrinks the next one, so crowded images keep their object count."""
    for attempt in range(tries):
        a = rng.uniform(*semi_axis) * size * SHRINK ** attempt
        b = a * rng.uniform(*ASPECT)
        low = min(max(0.12 * size, 0.55 * a), size / 2)  # keep most of the object in view
        cx, cy = rng.uniform(low, size - low, 2)
        angle, power = rng.uniform(0, np.pi), rng.uniform(2.0, 4.0)
        u = (xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)
        v = -(xx - cx) * np.sin(angle) + (yy - cy) * np.cos(angle)
        radius = (np.abs(u / a) ** power + np.abs(v / b) ** power) ** (1.0 / power)
        theta = np.arctan2(v / b, u / a)
        wobble = WOBBLE * np.sin(int(rng.integers(3, 7)) * theta + rng.uniform(0, 2 * np.pi))
        inside = radius <= 1.0 + wobble
        area = inside.sum()
        if area < 0.02 * size * size:
            continue
        if (inside & (instances > 0)).sum() > MAX_OVERLAP * area or (inside & (parts > 0)).any():
            continue
        return _Shape(inside, u, v, radius)
    return None


def _part_mask(rng: np.random.Generator, shape: _Shape) -> np.ndarray:
    """A disk [H, W] bool covering 10-13 % of the object, centred at a random spot where the
    whole disk fits on the object and in the image (the object centre when none does)."""
    area = float(shape.inside.sum())
    r_part = np.sqrt(rng.uniform(*PART_FRACTION) * area / np.pi)
    candidates = np.flatnonzero(_disk_fits(shape.inside, r_part + 0.5))
    if candidates.size == 0:
        candidates = np.array([np.argmin(shape.radius)])
    pick = int(rng.choice(candidates))
    pu, pv = shape.u.flat[pick], shape.v.flat[pick]
    return shape.inside & ((shape.u - pu) ** 2 + (shape.v - pv) ** 2 <= r_part ** 2)


def _disk_fits(inside: np.ndarray, radius: float) -> np.ndarray:
    """Pixels [H, W] bool where a disk of ``radius`` lies inside ``inside`` [H, W] and the
    image: the outside (image border included) correlated with the disk, by FFT, is zero."""
    h, w = inside.shape
    k = int(np.ceil(radius))
    outside = np.ones((h + 2 * k, w + 2 * k))
    outside[k:k + h, k:k + w] = ~inside
    ky, kx = np.mgrid[-k:k + 1, -k:k + 1]
    disk = (ky ** 2 + kx ** 2 <= radius ** 2).astype(np.float64)
    full = (h + 4 * k, w + 4 * k)
    hits = np.fft.irfft2(np.fft.rfft2(outside, full) * np.fft.rfft2(disk, full), full)
    return hits[2 * k:2 * k + h, 2 * k:2 * k + w] < 0.5


def _body_texture(rng: np.random.Generator, cls: int, u: np.ndarray, v: np.ndarray,
                  radius: np.ndarray) -> np.ndarray:
    """Body look [H, W, 3]: common colour with a weak class tint, fine oriented stripes,
    speckle, shading."""
    base = BODY_COLOUR + BODY_TINTS[cls - 1] + rng.normal(0.0, 10.0, 3) + rng.normal(0.0, 12.0)
    angle, period = rng.uniform(0, np.pi), rng.uniform(3.0, 4.5)
    stripes = np.sin(2 * np.pi * (u * np.cos(angle) + v * np.sin(angle)) / period)
    shading = 1.0 - 0.25 * np.clip(radius, 0.0, 1.0) ** 2
    texture = base * shading[..., None] + 28.0 * stripes[..., None]
    return texture + rng.normal(0.0, 10.0, u.shape + (1,))


def _part_texture(rng: np.random.Generator, cls: int, u: np.ndarray,
                  v: np.ndarray) -> np.ndarray:
    """Class-specific part look [H, W, 3]: class colours in a class-specific pattern."""
    main, second = PART_COLOURS[cls - 1] + rng.normal(0.0, 8.0, (2, 3))
    if cls == 1:  # solid
        pick = np.zeros_like(u, dtype=bool)
    elif cls == 2:  # stripes
        pick = np.sin(2 * np.pi * u / 4.0) > 0.3
    elif cls == 3:  # checks
        pick = (np.floor(u / 3.0) + np.floor(v / 3.0)) % 2 == 0
    elif cls == 4:  # dots
        pick = (np.abs((u % 5.0) - 2.5) < 1.0) & (np.abs((v % 5.0) - 2.5) < 1.0)
    else:  # rings centred on the object centre (arcs across the part)
        pick = np.sin(2 * np.pi * np.hypot(u, v) / 4.0) > 0.3
    texture = np.where(pick[..., None], second, main)
    return texture + rng.normal(0.0, 6.0, u.shape + (1,))


def _boundary_band(mask: np.ndarray) -> np.ndarray:
    """Pixels [H, W] bool whose 4-neighbourhood holds a different label (1 px each side)."""
    band = np.zeros(mask.shape, dtype=bool)
    band[1:] |= mask[1:] != mask[:-1]
    band[:-1] |= mask[:-1] != mask[1:]
    band[:, 1:] |= mask[:, 1:] != mask[:, :-1]
    band[:, :-1] |= mask[:, :-1] != mask[:, 1:]
    return band


# -- files ---------------------------------------------------------------------------------------
def _write_image(path: Path, image: Image.Image, fmt: str, **options: int) -> None:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    write_atomic(path, buffer.getvalue())
