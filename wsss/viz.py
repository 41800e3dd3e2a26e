"""Pictures for MLflow artifacts: image / heat-map / mask grids with their colour bars and a
legend of the VOC palette colours, and the helpers the sweep plots share.

Everything renders with matplotlib's Agg canvas (no display, no pyplot state), so it is safe in
Ray workers and threads. Files are written atomically (temporary file + ``os.replace``).
"""

from __future__ import annotations

import io
import textwrap
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
from matplotlib import colormaps  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.cm import ScalarMappable  # noqa: E402
from matplotlib.colors import Normalize  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from PIL import Image  # noqa: E402

from wsss.data.palette import IGNORE_INDEX, colorize, voc_palette  # noqa: E402
from wsss.storage import write_atomic  # noqa: E402

HEAT_ALPHA = 0.5
HEAT_CMAP = "jet"
CELL_INCHES = 2.0  # width of one picture column
TITLE_INCHES = 0.45  # room above each row's pictures for their titles
LEGEND_INCHES = 1.5  # width of the colour legend column
FONT_SIZE = 8
TITLE_CHARS = 30  # a panel title wraps after about this many characters
TITLE_LINES = 3  # and has at most this many lines
VOID_LABEL = "void (ignored)"


def heat_overlay(image: np.ndarray, heat: np.ndarray, alpha: float = HEAT_ALPHA) -> np.ndarray:
    """Blend a jet-coloured map [H, W] in [0, 1] over an RGB image [H, W, 3] uint8."""
    jet = colormaps[HEAT_CMAP](np.clip(heat, 0.0, 1.0))[..., :3] * 255.0
    blended = (1.0 - alpha) * image.astype(np.float64) + alpha * jet
    return np.clip(blended + 0.5, 0, 255).astype(np.uint8)


def overlay_grid(images: np.ndarray | Sequence[np.ndarray], maps: Sequence[np.ndarray] | None,
                 masks: Sequence[np.ndarray | None] | None = None,
                 gt: Sequence[np.ndarray | None] | None = None,
                 class_names: Sequence[str] | None = None,
                 path: str | Path | None = None, *,
                 row_titles: Sequence[str] | None = None,
                 map_classes: Sequence[Sequence[int]] | None = None) -> Path:
    """Save :func:`grid_figure` as a PNG at ``path`` (atomically) and return the path."""
    if path is None:
        raise ValueError("overlay_grid needs a path to write the PNG to")
    fig = grid_figure(images, maps, masks, gt, class_names, row_titles=row_titles,
                      map_classes=map_classes)
    return save_figure(fig, Path(path))


def grid_figure(images: np.ndarray | Sequence[np.ndarray], maps: Sequence[np.ndarray] | None,
                masks: Sequence[np.ndarray | None] | None = None,
                gt: Sequence[np.ndarray | None] | None = None,
                class_names: Sequence[str] | None = None, *,
                row_titles: Sequence[str] | None = None,
                map_classes: Sequence[Sequence[int]] | None = None) -> Figure:
    """A grid with one row per image; columns:

    - the image [H, W, 3] uint8, titled with its row title (e.g. the sample id);
    - when ``maps`` is given, the image under the max over classes of its ``maps`` entry
      [K, H, W] in [0, 1] (K present classes, K may be 0) in the jet colours, with a colour bar
      0..1; titled with the classes of the maps (``map_classes``: the K dataset class indices
      of each row's maps), e.g. ``map: max over cat, dog``;
    - the pseudo-mask [H, W] in the VOC palette (when ``masks`` is given);
    - the ground truth [H, W] (when ``gt`` is given);
    - with masks or ground truth, a legend of the palette colours of the classes (and void)
      in the row's masks, named by ``class_names`` (dataset class index -> name).

    Images may differ in size; maps of another size are resized to their image.
    """
    images = [np.asarray(im) for im in images]
    _check_lengths(len(images), maps=maps, masks=masks, gt=gt, row_titles=row_titles,
                   map_classes=map_classes)
    if not images:
        raise ValueError("overlay_grid needs at least one image")
    kinds = ["image"] + (["map"] if maps is not None else []) \
        + (["mask"] if masks is not None else []) + (["gt"] if gt is not None else [])
    with_legend = masks is not None or gt is not None
    ratios = [1.0] * len(kinds) + ([LEGEND_INCHES / CELL_INCHES] if with_legend else [])
    fig = Figure(figsize=(CELL_INCHES * sum(ratios),
                          (CELL_INCHES + TITLE_INCHES) * len(images)),
                 dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(images), len(ratios), squeeze=False,
                        gridspec_kw={"width_ratios": ratios})
    palette = voc_palette()
    for row, image in enumerate(images):
        image = _as_rgb(image)
        planes = {"mask": masks[row] if masks is not None else None,
                  "gt": gt[row] if gt is not None else None}
        for col, kind in enumerate(kinds):
            ax = axes[row, col]
            ax.set_axis_off()
            if kind == "image":
                title = str(row_titles[row]) if row_titles is not None else "image"
                ax.imshow(image, interpolation="nearest")
                ax.set_title(literal(title), fontsize=FONT_SIZE,
                             fontweight="bold" if row_titles is not None else "normal")
            elif kind == "map":
                row_maps = _as_maps(maps[row])
                classes = map_classes[row] if map_classes is not None else None
                if classes is not None and len(classes) != row_maps.shape[0]:
                    raise ValueError(f"overlay_grid: row {row} has {row_maps.shape[0]} maps "
                                     f"but {len(classes)} map classes")
                heat = _max_map(row_maps, image.shape[:2])
                ax.imshow(heat_overlay(image, heat), interpolation="nearest")
                ax.set_title(literal(_map_title(row_maps.shape[0], classes, class_names)),
                             fontsize=FONT_SIZE)
                # beside the picture and as tall as it, whatever the image's aspect
                bar = fig.colorbar(ScalarMappable(Normalize(0.0, 1.0), HEAT_CMAP),
                                   cax=ax.inset_axes([1.03, 0.0, 0.06, 1.0]),
                                   ticks=[0.0, 0.5, 1.0])
                bar.ax.tick_params(labelsize=FONT_SIZE - 1, length=2, pad=1)
            else:
                plane, label = planes[kind], ("pseudo-mask" if kind == "mask" else "ground truth")
                ax.imshow(colorize(plane) if plane is not None else np.full_like(image, 255),
                          interpolation="nearest")
                ax.set_title(label if plane is not None else f"no {label}", fontsize=FONT_SIZE)
        if with_legend:
            _legend(axes[row, -1], [p for p in planes.values() if p is not None],
                    class_names, palette)
    return fig


def legend_entries(planes: Sequence[np.ndarray], class_names: Sequence[str] | None
                   ) -> list[tuple[int, str]]:
    """(class index, name) of every value in the masks ``planes``, by index, void last."""
    present: set[int] = set()
    for plane in planes:
        present.update(int(c) for c in np.unique(plane))
    return [(c, class_name(c, class_names)) for c in sorted(present, key=lambda c: (
        c == IGNORE_INDEX, c))]


def class_name(index: int, class_names: Sequence[str] | None) -> str:
    """The name of dataset class ``index`` (its number when there are no names for it)."""
    if index == IGNORE_INDEX:
        return VOID_LABEL
    if class_names is not None and 0 <= index < len(class_names):
        return str(class_names[index])
    return str(index)


def _legend(ax: Axes, planes: Sequence[np.ndarray], class_names: Sequence[str] | None,
            palette: np.ndarray) -> None:
    """The palette colour and name of each class in ``planes``, in the (axis-less) ``ax``."""
    ax.set_axis_off()
    entries = legend_entries(planes, class_names)
    if not entries:
        return
    handles = [Patch(facecolor=palette[c] / 255.0, edgecolor="0.4", linewidth=0.5,
                     label=literal(name)) for c, name in entries]
    ax.legend(handles=handles, loc="center left", bbox_to_anchor=(0.0, 0.5),
              title="mask colours", fontsize=FONT_SIZE - 1, title_fontsize=FONT_SIZE - 1,
              frameon=False, borderaxespad=0.0, handlelength=1.2, handletextpad=0.5,
              ncols=1 if len(entries) <= 10 else 2)


def _map_title(count: int, classes: Sequence[int] | None,
               class_names: Sequence[str] | None) -> str:
    """``map: <class>`` for one map, ``map: max over <classes>`` for several (wrapped; the
    number of classes when their names take more than ``TITLE_LINES`` lines)."""
    if count == 0:
        return "map: no class present"
    if classes is None:
        return "map" if count == 1 else f"map: max over {count} classes"
    names = [class_name(int(c), class_names) for c in classes]
    title = f"map: {names[0]}" if count == 1 else "map: max over " + ", ".join(names)
    lines = textwrap.wrap(title, TITLE_CHARS, break_on_hyphens=False)
    if len(lines) > TITLE_LINES:  # too many names to read: the count (the legend names them)
        lines = textwrap.wrap(f"map: max over {count} classes" if count > 1 else title,
                              TITLE_CHARS, break_on_hyphens=False, max_lines=TITLE_LINES)
    return "\n".join(lines)


def _as_maps(maps: np.ndarray) -> np.ndarray:
    """Maps [K, h, w] (one map [h, w] becomes [1, h, w]) as float32."""
    maps = np.asarray(maps, dtype=np.float32)
    return maps[None] if maps.ndim == 2 else maps


def _max_map(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Max over classes of maps [K, h, w] resized to ``size`` (H, W) -> [H, W] float."""
    maps = _as_maps(maps)
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


def _check_lengths(n: int, **columns: Sequence | None) -> None:
    for name, values in columns.items():
        if values is not None and len(values) != n:
            raise ValueError(f"overlay_grid: {name} has {len(values)} entries for {n} images")


def literal(text: object) -> str:
    """``text`` as matplotlib shows it as given: a ``$`` in a class name, sample id or knob
    value does not start math mode (which fails on text such as ``$\\frac{a$``)."""
    return str(text).replace("$", r"\$")


def save_figure(fig: Figure, path: Path) -> Path:
    """Render ``fig`` as PNG and write it to ``path`` atomically."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return write_atomic(path, buffer.getvalue())
