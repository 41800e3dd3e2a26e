"""The CRF sweep: background and dense-CRF knobs scored on maps of one fixed checkpoint.

Before the sweep the Ray Data pseudo-labelling pipeline (``wsss.pipeline.pseudo_label``)
extracts the maps of the scored images once; a trial re-runs its refine stage on those maps
through Ray Data (``wsss.pipeline.pseudo_label.rescore_maps``) with the trial's settings,
reporting the running mIoU after each chunk of images so ASHA can stop poor settings early (time
attribute ``chunk``). A trial reserves one CPU per ``--workers-per-trial`` for its refine tasks.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any, Sequence

from ray import tune

from wsss.config import ExperimentConfig
from wsss.pipeline.pseudo_label import PipelineOptions, rescore_maps, run_pseudo_label
from wsss.pipeline.train_cls import run_train_classifier
from wsss.tracking import log_metrics
from wsss.train.checkpoint import open_checkpoint
from wsss.tune.report import DEGENERATE_METRIC, MIOU, with_objective
from wsss.tune.runner import SAMPLE_IMAGES, Sweep, select_train_eval_ids
from wsss.tune.samples import saved_map_samples
from wsss.tune.spaces import apply_trial
from wsss.tune.tracking import trial_run
from wsss.tune.trial import SweepContext, scaled

CHUNK_ATTR = "chunk"
CHUNKS = 4
TRIAL_MEMORY = 256 * 2**20  # the trial function only drives its Ray Data tasks


def trial_config(ctx: SweepContext, base: ExperimentConfig,
                 knobs: dict[str, Any]) -> ExperimentConfig:
    """``base`` with a trial's knobs, and the affinity network the sweep prepared (the random
    walk sweep's ``extra["affinity"]``) as ``refine.affinity``."""
    cfg = apply_trial(base, knobs)
    if ctx.extra.get("affinity"):
        refine = dataclasses.replace(cfg.refine, affinity=ctx.extra["affinity"])
        cfg = dataclasses.replace(cfg, refine=refine)
    return cfg


def crf_trial(config: dict[str, Any], ctx: SweepContext) -> None:
    """Tune function trainable: score the trial's refine settings, chunk by chunk."""
    trial = tune.get_context()
    cfg = trial_config(ctx, ctx.base(), config)
    trial_id = trial.get_trial_id()
    run_id = trial_run(ctx, trial_id, ctx.run_name(trial_id, config), cfg)
    chunks = rescore_maps(ctx.extra["maps_dir"], cfg.data.root, cfg.data.train_split,
                          ctx.eval_ids, cfg.refine, ctx.extra["method"],
                          ctx.extra["method_params"], chunks=CHUNKS,
                          batch_size=cfg.cams.batch_size, max_image_side=cfg.data.max_image_side)
    for chunk, scored in enumerate(chunks, start=1):
        metrics = with_objective({MIOU: scored.scores.miou,
                                  DEGENERATE_METRIC: scored.degenerate_share, CHUNK_ATTR: chunk,
                                  "images": scored.images, "images_failed": len(scored.failed),
                                  "pixel_accuracy": scored.scores.pixel_accuracy},
                                 ctx.degenerate_penalty)
        log_metrics(metrics, step=chunk, run_id=run_id, uri=ctx.tracking_uri,
                    unsent=ctx.unsent_file)
        tune.report(metrics)


@dataclasses.dataclass
class CrfSweep(Sweep):
    """Refine knobs on the maps of ``--checkpoint`` (or of a CAM classifier trained first)."""

    time_attr: str = CHUNK_ATTR
    path_options: Sequence[str] = ("checkpoint",)

    def resources(self, args: argparse.Namespace) -> tune.PlacementGroupFactory:
        """The trial function (a little memory) plus one CPU bundle per refine worker."""
        return tune.PlacementGroupFactory(
            [{"memory": TRIAL_MEMORY}] + [{"CPU": 1.0}] * args.workers_per_trial)

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--checkpoint", help="classifier model.pt (path or URI: file://, "
                                                 "s3://...) whose maps are refined (default: "
                                                 "train a CAM classifier first)")

    def prepare(self, args: argparse.Namespace, cfg: ExperimentConfig,
                workdir: Path) -> dict[str, Any]:
        """Maps of the scored images from the fixed checkpoint, extracted once by the Ray Data
        pseudo-labelling pipeline (``OUT/maps``)."""
        checkpoint = args.checkpoint
        if checkpoint is None:
            training = scaled(cfg, args.workers_per_trial, args.gpus_per_trial)
            trained = run_train_classifier(training, workdir / "classifier",
                                           run_name="crf-sweep-classifier")
            checkpoint = trained.checkpoint
        out = workdir / "pseudo-labels"
        # A new sweep recomputes the maps; --resume resumes those of the same job (and stops
        # on another job's, wsss.pipeline.manifest)
        options = PipelineOptions(save_maps=True, max_image_side=cfg.data.max_image_side,
                                  gpus_per_worker=args.gpus_per_trial or 1.0,
                                  overwrite=not args.resume)
        ids = select_train_eval_ids(cfg, args.eval_images, args.seed)
        report = run_pseudo_label(checkpoint, cfg.data.root, cfg.data.train_split, out,
                                  cfg.cams, cfg.refine, cfg.tracking, options, ids=ids)
        if report.failed:
            raise RuntimeError(f"map extraction failed for {len(report.failed)} image(s), "
                               f"e.g. {report.failed[0]}; see {out / 'report.json'}")
        state = open_checkpoint(checkpoint, "classifier").state
        return {"maps_dir": str(out / "maps"), "checkpoint": str(checkpoint), "ids": list(ids),
                "method": state["method"], "method_params": dict(state["method_params"])}

    def full_length(self, cfg: ExperimentConfig, trial_config: dict[str, Any]) -> int:
        return CHUNKS

    def samples(self, ctx: SweepContext, cfg: ExperimentConfig, row: dict[str, Any],
                out_dir: Path) -> list[Path]:
        """Maps and CRF-refined pseudo-masks of a few images under the trial's settings."""
        return saved_map_samples(ctx.extra["maps_dir"], cfg.data.root,
                                 list(ctx.eval_ids[:SAMPLE_IMAGES]), ctx.extra["method"],
                                 ctx.extra["method_params"],
                                 trial_config(ctx, cfg, row["knobs"]).refine, out_dir)

    def max_t(self, cfg: ExperimentConfig) -> int:
        return CHUNKS

