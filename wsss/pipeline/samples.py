"""The sample picture of a step: a few images with their maps, masks and ground truth.

Every step draws its picture by running its own steps (``wsss.pipeline.steps``) on the first
few ids in this process, so the picture shows exactly what the step computes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from wsss.data.palette import save_mask_png
from wsss.data.reader import SampleRef
from wsss.pipeline.executors import LocalExecutor
from wsss.pipeline.report import GRID_SAMPLES
from wsss.pipeline.steps import Step
from wsss.storage import Location
from wsss.viz import overlay_grid


def sample_rows(refs: Sequence[SampleRef], steps: Sequence[Step],
                device: str = "cpu") -> list[dict[str, object]]:
    """The good rows (no ``error``) of ``steps`` run locally on ``refs``, one dict each."""
    rows = []
    for batch in LocalExecutor(batch_size=max(1, len(refs)), desc="", device=device).run(
            refs, steps):
        for row, error in enumerate(batch["error"]):
            if not error:
                rows.append({key: column[row] for key, column in batch.items()})
    return rows


def step_picture(refs: Sequence[SampleRef], steps: Sequence[Step],
                 class_names: Sequence[str], out: Location) -> Path | None:
    """:func:`sample_grid` drawn as ``<out>/samples.png`` when ``out`` is a local folder
    (None for an object store: the picture goes to MLflow only from a local file)."""
    if not out.is_local:
        return None
    return sample_grid(refs, steps, class_names, Path(out.root) / "samples.png")


def sample_grid(refs: Sequence[SampleRef], steps: Sequence[Step], class_names: Sequence[str],
                path: Path, mask_files: Path | None = None,
                device: str = "cpu") -> Path | None:
    """Draw ``path``: one row per good sample among the first ``GRID_SAMPLES`` of ``refs``
    run through ``steps`` (columns: image, maps when the steps give them, mask, ground truth,
    a legend of the mask colours);
    with ``mask_files`` each mask is also written there as ``pseudo_mask_<id>.png``. None when
    no sample could be drawn."""
    rows = sample_rows(list(refs)[:GRID_SAMPLES], steps, device)
    if not rows:
        return None
    images = [r["image"] for r in rows]
    with_maps = "maps" in rows[0]
    maps = [np.asarray(r["maps"], np.float32) for r in rows] if with_maps else None
    map_classes = [[int(c) for c in r["class_ids"]] for r in rows] if with_maps else None
    masks = [r["mask"] for r in rows] if "mask" in rows[0] else None
    gts = [r["gt"] if r["gt"].size else None for r in rows]
    gts = gts if any(g is not None for g in gts) else None  # a split without masks: no column
    ids = [str(r["id"]) for r in rows]
    if mask_files is not None and masks is not None:
        for sample_id, mask in zip(ids, masks):
            save_mask_png(mask_files / f"pseudo_mask_{sample_id}.png", mask)
    return overlay_grid(images, maps, masks, gts, list(class_names), path, row_titles=ids,
                        map_classes=map_classes)
