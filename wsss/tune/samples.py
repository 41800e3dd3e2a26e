"""Pictures for a trial's MLflow run: a CAM overlay grid and a few pseudo-mask PNGs, drawn by
the pipeline's own steps (``wsss.pipeline.samples``)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence

import ray.train

from wsss.config import CamConfig, RefineConfig
from wsss.data.reader import DatasetReader
from wsss.pipeline.samples import sample_grid
from wsss.pipeline.steps import Job, Step, make_masks, map_steps, mask_steps
from wsss.storage import Location
from wsss.train.checkpoint import open_checkpoint

GRID_FILE = "cam_overlays.png"


def checkpoint_samples(checkpoint_dir: str, data_root: str, ids: Sequence[str],
                       refine: RefineConfig, out_dir: Path) -> list[Path]:
    """Write ``cam_overlays.png`` (image, map, pseudo-mask, ground truth per row) and
    ``pseudo_mask_<id>.png`` for ``ids`` from the classifier in a Ray checkpoint
    (``checkpoint_dir``, local or remote): maps at one scale on the CPU, masks without CRF."""
    reader = DatasetReader.open(data_root)
    with ray.train.Checkpoint(checkpoint_dir).as_directory() as local:
        ckpt = open_checkpoint(Path(local) / "model.pt", "classifier")
    state = ckpt.state
    job = Job(reader, state["method"], dict(state["method_params"]), CamConfig(),
              dataclasses.replace(refine, crf=False))
    steps = [*map_steps(job, ckpt), Step(make_masks, {"job": job})]
    return _draw(reader, ids, steps, out_dir)


def saved_map_samples(maps_dir: str | Path, data_root: str, ids: Sequence[str],
                      method: str, method_params: dict[str, Any], refine: RefineConfig,
                      out_dir: Path) -> list[Path]:
    """The pictures of :func:`checkpoint_samples` from saved maps ``<maps_dir>/<id>.npz``,
    masks made with ``refine`` (the CRF included when it is on)."""
    reader = DatasetReader.open(data_root)
    job = Job(reader, method, dict(method_params), refine=refine,
              maps=Location.parse(maps_dir))
    return _draw(reader, ids, mask_steps(job)[:-1], out_dir)


def _draw(reader: DatasetReader, ids: Sequence[str], steps: list[Step],
          out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    grid = sample_grid(reader.index(ids=ids), steps, reader.info.class_names,
                       out_dir / GRID_FILE, mask_files=out_dir)
    return [] if grid is None else [grid, *sorted(out_dir.glob("pseudo_mask_*.png"))]
