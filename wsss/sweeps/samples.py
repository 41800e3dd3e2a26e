"""Pictures for a trial's MLflow run: a CAM overlay grid and a few pseudo-mask PNGs."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from wsss.config import RefineConfig
from wsss.data.voc import VOCDataset

MapsFn = Callable[[str], tuple[np.ndarray, list[int]]]


def mask_samples(dataset: VOCDataset, ids: Sequence[str], maps_of: MapsFn, method: object,
                 refine: RefineConfig, out_dir: Path) -> list[Path]:
    """Write ``cam_overlays.png`` (image, map, pseudo-mask, ground truth per row) and
    ``pseudo_mask_<id>.png`` for ``ids``; ``maps_of(id)`` gives maps [K, H, W] + class ids."""
    from wsss.stages import make_pseudo_mask
    from wsss.viz import overlay_grid, save_mask_png

    out_dir.mkdir(parents=True, exist_ok=True)
    images, maps, masks, gts, paths = [], [], [], [], []
    for sample_id in ids:
        sample_maps, class_ids = maps_of(sample_id)
        image = dataset.load_image(sample_id)
        mask = make_pseudo_mask(method, dataset, sample_id, sample_maps, class_ids, refine)
        images.append(image)
        maps.append(sample_maps)
        masks.append(mask)
        gts.append(dataset.load_mask(sample_id, image.shape[:2]))
        paths.append(save_mask_png(out_dir / f"pseudo_mask_{sample_id}.png", mask))
    grid = overlay_grid(images, maps, masks, gts, list(dataset.info.class_names),
                        out_dir / "cam_overlays.png", row_titles=list(ids))
    return [grid, *paths]


def checkpoint_samples(checkpoint_dir: str, data_root: str, ids: Sequence[str],
                       refine: RefineConfig, out_dir: Path) -> list[Path]:
    """:func:`mask_samples` of the classifier in a Ray checkpoint (``checkpoint_dir``, local or
    remote), maps computed on the fly (CPU)."""
    import dataclasses

    import ray.train

    from wsss.train.checkpoint import load_classifier, trained_image_scale
    from wsss.train.mask_eval import present_maps

    dataset = VOCDataset(data_root, ids=list(ids))
    with ray.train.Checkpoint(checkpoint_dir).as_directory() as local:
        method, model, state = load_classifier(Path(local) / "model.pt", "cpu")

    def maps_of(sample_id: str) -> tuple[np.ndarray, list[int]]:
        return present_maps(method, model, dataset, sample_id, trained_image_scale(state))[:2]

    return mask_samples(dataset, ids, maps_of, method, dataclasses.replace(refine, crf=False),
                        out_dir)
