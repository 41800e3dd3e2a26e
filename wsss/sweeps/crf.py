"""The CRF sweep: background and dense-CRF knobs scored on maps of one fixed checkpoint.

Maps are extracted once before the sweep (``run_cams``); a trial only turns them into refined
pseudo-masks and scores them, reporting the running mIoU after each chunk of images so ASHA
can stop poor settings early (time attribute ``chunk``).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any, Iterator, Sequence

from wsss.config import ExperimentConfig, RefineConfig
from wsss.sweeps.runner import SAMPLE_IMAGES, Sweep
from wsss.sweeps.trial import OBJECTIVE, SweepContext, scaled

CHUNK_ATTR = "chunk"
CHUNKS = 4


def refined_mask_scores(cams_dir: str | Path, data_root: str | Path, ids: Sequence[str],
                        refine: RefineConfig, chunks: int = CHUNKS) -> Iterator[tuple[int, Any]]:
    """Pseudo-label ``ids`` from their map files with ``refine`` (CRF included) and yield
    ``(images scored so far, running Scores)`` after each of ``chunks`` chunks.

    The one place the CRF sweep turns maps into masks: a single process for now; the Ray Data
    pseudo-labeling pipeline can take its place here without touching the sweep.
    """
    from wsss.data.voc import VOCDataset
    from wsss.metrics import ConfusionMatrix
    from wsss.stages import mask_pair, maps_method

    dataset = VOCDataset(data_root, ids=list(ids))
    method = maps_method(cams_dir)
    confusion = ConfusionMatrix(dataset.info.num_classes)
    names = list(dataset.info.class_names)
    background = 0 if dataset.info.has_background else None
    bounds = [round(len(ids) * (k + 1) / chunks) for k in range(chunks)]
    done = 0
    for end in bounds:
        for sample_id in ids[done:end]:
            gt, pred = mask_pair(method, dataset, Path(cams_dir), sample_id, refine)
            confusion.update(pred, gt)
        done = end
        yield done, confusion.compute(names, background=background)


def crf_trial(config: dict[str, Any], ctx: SweepContext) -> None:
    """Tune function trainable: score the trial's refine settings, chunk by chunk."""
    import ray.tune

    from wsss.sweeps.spaces import apply_trial
    from wsss.sweeps.tracking import trial_run
    from wsss.tracking import log_metrics

    trial = ray.tune.get_context()
    cfg = apply_trial(ctx.base(), config)
    run_id = trial_run(ctx, trial.get_trial_id(), trial.get_trial_name(), cfg)
    cams = ctx.extra["cams_dir"]
    for chunk, (done, scores) in enumerate(
            refined_mask_scores(cams, cfg.data.root, ctx.eval_ids, cfg.refine), start=1):
        metrics = {OBJECTIVE: scores.miou, CHUNK_ATTR: chunk, "images": done,
                   "pixel_accuracy": scores.pixel_accuracy}
        log_metrics(metrics, step=chunk, run_id=run_id, uri=ctx.tracking_uri)
        ray.tune.report(metrics)


@dataclasses.dataclass
class CrfSweep(Sweep):
    """Refine knobs on the maps of ``--checkpoint`` (or of a CAM classifier trained first)."""

    time_attr: str = CHUNK_ATTR
    trial_resources: dict[str, float] = dataclasses.field(default_factory=lambda: {"cpu": 1})

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--checkpoint", help="classifier model.pt whose maps are refined "
                                                 "(default: train a CAM classifier first)")

    def prepare(self, args: argparse.Namespace, cfg: ExperimentConfig,
                workdir: Path) -> dict[str, Any]:
        """Maps of the training split from the fixed checkpoint, extracted once."""
        from wsss.stages import run_cams, run_train_classifier

        checkpoint = args.checkpoint
        if checkpoint is None:
            training = scaled(cfg, args.workers_per_trial, args.gpus_per_trial)
            trained = run_train_classifier(training, workdir / "classifier",
                                           run_name="crf-sweep-classifier")
            checkpoint = trained.checkpoint
        cams = workdir / "cams"
        run_cams(checkpoint, cfg.data.root, cfg.data.train_split, cams, cfg.cams, cfg.tracking)
        return {"cams_dir": str(cams), "checkpoint": str(Path(checkpoint).resolve())}

    def full_length(self, cfg: ExperimentConfig, trial_config: dict[str, Any]) -> int:
        return CHUNKS

    def samples(self, ctx: SweepContext, cfg: ExperimentConfig, row: dict[str, Any],
                out_dir: Path) -> list[Path]:
        """Maps and CRF-refined pseudo-masks of a few images under the trial's settings."""
        from wsss.cams import load_maps
        from wsss.data.voc import VOCDataset
        from wsss.stages import maps_method
        from wsss.sweeps.samples import mask_samples
        from wsss.sweeps.spaces import apply_trial

        cams = Path(ctx.extra["cams_dir"])
        ids = list(ctx.eval_ids[:SAMPLE_IMAGES])
        return mask_samples(VOCDataset(cfg.data.root, ids=ids), ids,
                            lambda i: load_maps(cams / f"{i}.npz"), maps_method(cams),
                            apply_trial(cfg, row["knobs"]).refine, out_dir)

    def max_t(self, cfg: ExperimentConfig) -> int:
        return CHUNKS

