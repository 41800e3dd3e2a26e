"""Pictures for MLflow artifacts: the VOC colour map and image / heat-map / mask grids.

Everything renders with matplotlib's Agg canvas (no display, no pyplot state), so it is safe in
Ray workers and threads. Files are written atomically (temporary file + ``os.replace``).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
from matplotlib import colormaps  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from PIL import Image  # noqa: E402

from wsss.data.palette import colorize  # noqa: E402
from wsss.storage import write_atomic  # noqa: E402

HEAT_ALPHA = 0.5
CELL_INCHES = 2.0


def heat_overlay(image: np.ndarray, heat: np.ndarray, alpha: float = HEAT_ALPHA) -> np.ndarray:
    """Blend a jet-coloured map [H, W] in [0, 1] over an RGB image [H, W, 3] uint8."""
    jet = colormaps["jet"](np.clip(heat, 0.0, 1.0))[..., :3] * 255.0
    blended = (1.0 - alpha) * image.astype(np.float64) + alpha * jet
    return np.clip(blended + 0.5, 0, 255).astype(np.uint8)


def overlay_grid(images: np.ndarray | Sequence[np.ndarray], maps: Sequence[np.ndarray],
                 masks: Sequence[np.ndarray | None] | None = None,
                 gt: Sequence[np.ndarray | None] | None = None,
                 class_names: Sequence[str] | None = None,
                 path: str | Path | None = None, *,
                 row_titles: Sequence[str] | None = None) -> Path:
    """Save a PNG grid with one row per image and return its path.

    Columns: the image [H, W, 3] uint8; the image under the max-over-classes map (jet) of its
    ``maps`` entry [K, H, W] in [0, 1] (K present classes, K may be 0); the pseudo-mask [H, W]
    in the VOC palette (when ``masks`` is given); the ground truth [H, W] (when ``gt`` is given).
    Images may differ in size; maps of another size are resized to their image. ``class_names``
    (dataset class index -> name) labels the classes shown in each mask; ``row_titles`` (e.g. the
    sample ids) prefix each row.
    """
    if path is None:
        raise ValueError("overlay_grid needs a path to write the PNG to")
    images = [np.asarray(im) for im in images]
    _check_lengths(len(images), maps=maps, masks=masks, gt=gt, row_titles=row_titles)
    if not images:
        raise ValueError("overlay_grid needs at least one image")
    columns = ["image", "map"] + (["pseudo-mask"] if masks is not None else []) \
        + (["ground truth"] if gt is not None else [])
    fig = Figure(figsize=(CELL_INCHES * len(columns), CELL_INCHES * len(images)), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(images), len(columns), squeeze=False)
    for row, image in enumerate(images):
        panels = _row_panels(image, maps[row], masks[row] if masks is not None else None,
                             gt[row] if gt is not None else None, masks is not None,
                             gt is not None, class_names)
        prefix = f"{row_titles[row]}: " if row_titles is not None else ""
        for col, (picture, caption) in enumerate(panels):
            ax = axes[row, col]
            ax.imshow(picture, interpolation="nearest")
            # Class names and ids are text: a "$" must not start matplotlib's math mode.
            ax.set_title((prefix if col == 0 else "") + caption, fontsize=7, parse_math=False)
            ax.set_axis_off()
    fig.tight_layout()
    return _save_figure(fig, Path(path))


def _row_panels(image: np.ndarray, maps: np.ndarray, mask: np.ndarray | None,
                gt: np.ndarray | None, with_mask: bool, with_gt: bool,
                class_names: Sequence[str] | None) -> list[tuple[np.ndarray, str]]:
    """The (RGB picture [H, W, 3] uint8, caption) pairs of one grid row."""
    image = _as_rgb(image)
    heat = _max_map(maps, image.shape[:2])
    panels = [(image, "image"), (heat_overlay(image, heat), f"map (max {heat.max():.2f})")]
    for present, label, wanted in ((mask, "pseudo", with_mask), (gt, "gt", with_gt)):
        if not wanted:
            continue
        if present is None:
            panels.append((np.full_like(image, 255), f"{label}: none"))
        else:
            panels.append((colorize(present), f"{label}: {_class_list(present, class_names)}"))
    return panels


def _max_map(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Max over classes of maps [K, h, w] resized to ``size`` (H, W) -> [H, W] float."""
    maps = np.asarray(maps, dtype=np.float32)
    if maps.ndim == 2:
        maps = maps[None]
    if maps.shape[0] == 0:
        return np.zeros(size, dtype=np.float32)
    heat = maps.max(axis=0)
    if heat.shape != tuple(size):
        resized = Image.fromarray(np.ascontiguousarray(heat)).resize((size[1], size[0]),
                                                                     Image.BILINEAR)
        heat = np.asarray(resized, dtype=np.float32)
    return heat


def _as_rgb(image: np.ndarray) -> np.ndarray:
    """Gray [H, W] or RGB(A) [H, W, C] (uint8 or float in [0, 1]) -> RGB [H, W, 3] uint8."""
    if image.dtype != np.uint8:
        scale = 255.0 if image.max(initial=0) <= 1.0 else 1.0
        image = np.clip(image * scale + 0.5, 0, 255).astype(np.uint8)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    return image[..., :3]


def _class_list(mask: np.ndarray, class_names: Sequence[str] | None) -> str:
    """Names of the non-void classes in ``mask`` (indices when no names are given)."""
    present = [int(c) for c in np.unique(mask) if c != 255]
    if class_names is None:
        return ", ".join(str(c) for c in present) or "-"
    return ", ".join(class_names[c] if c < len(class_names) else str(c) for c in present) or "-"


def _check_lengths(n: int, **columns: Sequence | None) -> None:
    for name, values in columns.items():
        if values is not None and len(values) != n:
            raise ValueError(f"overlay_grid: {name} has {len(values)} entries for {n} images")


def _save_figure(fig: Figure, path: Path) -> Path:
    """Render ``fig`` as PNG and write it to ``path`` atomically."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return write_atomic(path, buffer.getvalue())
