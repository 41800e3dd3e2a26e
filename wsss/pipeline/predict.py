"""The predict step (``wsss predict``): a segmenter checkpoint + a split -> ``<out>/<id>.png``.

Each mask is the segmenter's arg-max at full image size (optionally through the dense CRF,
DeepLab's post-processing), written and scored by the same steps as the pseudo-masks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from wsss.config import RefineConfig, TrackingConfig, to_dict
from wsss.core.scoring import Scorer
from wsss.data.reader import DatasetReader
from wsss.pipeline.executors import LocalExecutor
from wsss.pipeline.manifest import Manifest, data_job
from wsss.pipeline.masks import add_reused_scores
from wsss.pipeline.report import StageReport, collect, pending, publish, tracked_stage
from wsss.pipeline.columns import objects
from wsss.pipeline.steps import INPUT_ERRORS, Job, Step, decode, write_outputs
from wsss.storage import Location
from wsss.train.checkpoint import CheckpointError, open_checkpoint, trained_image_scale
from wsss.train.segmenter import load_segmenter, predict_mask


class PredictStep:
    """Adds ``mask`` uint8 [H, W]: the segmenter's prediction of each decoded image
    (``wsss.train.segmenter.predict_mask``); a row whose CRF fails gets the reason in
    ``error``.

    Args:
        model: the segmenter in eval mode, on ``device``.
        image_scale: the resolution it was trained at (``data.image_scale``).
        crf: refine each prediction with these dense CRF settings (None: the arg-max).
        device: torch device of ``model``.
        threads: unused (the executors' model-step interface).
    """

    def __init__(self, model: nn.Module, image_scale: float, crf: RefineConfig | None,
                 device: str = "cpu", threads: int | None = None) -> None:
        self.model, self.image_scale, self.crf, self.device = model, image_scale, crf, device

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        masks, errors = [], list(batch["error"])
        for row, image in enumerate(batch["image"]):
            mask = np.zeros((0, 0), np.uint8)
            if not errors[row]:
                try:
                    mask = predict_mask(self.model, image, self.image_scale, self.crf,
                                        self.device)
                except INPUT_ERRORS as err:
                    errors[row] = str(err)
            masks.append(mask)
        return {**batch, "error": np.asarray(errors, dtype=object), "mask": objects(masks)}


def run_predict(checkpoint: str | Path, data_root: str | Path, split: str,
                out_dir: str | Path, tracking_cfg: TrackingConfig = TrackingConfig(),
                device: str | None = None, max_image_side: int = 1024,
                crf: RefineConfig | None = None, overwrite: bool = False) -> StageReport:
    """Write the segmenter's predicted masks ``<out_dir>/<id>.png`` for every image of
    ``split`` without one yet (full image size, predicted at the segmenter's training
    ``data.image_scale``); every written mask is scored against ground truth where it exists.

    ``crf``: refine each prediction with the dense CRF of these ``crf_*`` settings; an image
    whose CRF fails is skipped and listed in the report.

    ``checkpoint``: a path or URI. The folder's ``manifest.json`` records the job (the
    checkpoint's content hash, the data, the CRF settings); ``overwrite`` removes another
    job's masks and recomputes them all.

    Raises:
        ConfigError: ``crf`` is out of range for ``max_image_side``.
        CheckpointError: the checkpoint is unreadable or predicts another number of classes.
        JobConflict: ``out_dir`` holds masks of another job (and no ``overwrite``).
    """
    if crf is not None:
        crf.validate_for(max_image_side)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    ckpt = open_checkpoint(checkpoint, "segmenter")
    model, state = load_segmenter(checkpoint, device)
    reader = DatasetReader.open(data_root, max_image_side)
    if state["num_classes"] != reader.info.num_classes:
        raise CheckpointError(f"{checkpoint} predicts {state['num_classes']} classes but "
                              f"{data_root} has {reader.info.num_classes}")
    out = Location.parse(out_dir)
    crf_keys = False if crf is None else {k: v for k, v in to_dict(crf).items()
                                          if k.startswith("crf_")}
    manifest = Manifest.of("predict", {"checkpoint": ckpt.sha256, **data_job(reader),
                                       "crf": crf_keys})
    job = Job(reader, out=out, evaluate=True)
    refs = reader.index(split)
    predict = {"model": model, "image_scale": trained_image_scale(state), "crf": crf}
    steps = [Step(decode, {"job": job}), Step(PredictStep, predict, model=True),
             Step(write_outputs, {"job": job})]
    params = {"checkpoint": str(checkpoint), "checkpoint_sha256": ckpt.sha256,
              "data": str(data_root), "split": split, "arch": state["arch"],
              "crf": crf is not None, **({"refine": crf} if crf else {})}
    report, scorer = StageReport(), Scorer(reader.info)
    todo = pending(refs, out, ".png", report, manifest, overwrite)
    with tracked_stage(f"predict-{split}", "predict", tracking_cfg, params, out) as stage:
        collect(LocalExecutor(desc="predict", device=device).run(todo, steps), report, scorer)
        add_reused_scores(reader, refs, todo, out, scorer, report)
        publish(report, out, "predicted")
        stage.report = report
    return report
