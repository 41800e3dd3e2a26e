"""The mask steps: saved maps -> pseudo-masks (``wsss refine``, ``wsss eval``), and the
scoring of mask files against ground truth (``wsss eval --masks``).

Every mask comes from ``wsss.core.masks.make_pseudo_mask`` of the method that made the maps
(named in the maps folder's ``report.json``), whichever step or executor asks for it.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Sequence

from wsss.config import RefineConfig, TrackingConfig
from wsss.core.scoring import Scorer, SegmentationScores
from wsss.data.reader import DatasetReader, SampleRef
from wsss.pipeline.executors import LocalExecutor
from wsss.pipeline.manifest import Manifest, data_job, read_manifest, refine_job
from wsss.pipeline.report import REPORT_FILE, StageReport, collect, pending, publish, tracked_stage
from wsss.pipeline.samples import step_picture
from wsss.pipeline.steps import (Job, Step, decode, mask_steps, read_masks_and_gt,
                                 read_written_masks, require_gt, write_outputs)
from wsss.storage import Location


def maps_job(cams_dir: str | Path, reader: DatasetReader, refine: RefineConfig,
             out: Location | None = None, evaluate: bool = True) -> Job:
    """The job of turning the maps in ``cams_dir`` into masks: its method (from the folder's
    ``report.json``; default ``cam``) decides how maps become masks (e.g. saliency guidance).

    Raises FileNotFoundError when the folder does not exist."""
    maps = Location.parse(cams_dir)
    if not maps.is_dir():
        raise FileNotFoundError(f"maps folder not found: {maps.uri} (`wsss cam` writes one)")
    info = json.loads(maps.read_text(REPORT_FILE)) if maps.is_file(REPORT_FILE) else {}
    return Job(reader, info.get("method", "cam"), dict(info.get("method_params") or {}),
               refine=refine, out=out, maps=maps, evaluate=evaluate)


def run_refine(cams_dir: str | Path, data_root: str | Path, split: str, out_dir: str | Path,
               refine_cfg: RefineConfig = RefineConfig(),
               tracking_cfg: TrackingConfig = TrackingConfig(),
               max_image_side: int = 1024, overwrite: bool = False) -> StageReport:
    """Write ``<out_dir>/<id>.png`` pseudo-masks from ``<cams_dir>/<id>.npz`` maps for the ids
    of ``split`` without one yet (resume); records one MLflow run.

    Each mask is ``make_pseudo_mask`` with ``refine_cfg`` (background score, dense CRF over
    the present classes, confidence marking with 255). The report's ``miou`` scores every
    written mask (this run's and earlier ones) against ground truth, where it exists.

    The folder's ``manifest.json`` records the job (the maps' own job, the data, the refine
    settings; ``refine.affinity`` as its checkpoint's content hash); ``overwrite`` removes
    another job's masks and recomputes them all.

    Raises:
        ConfigError: ``refine_cfg`` is out of range (``RefineConfig.validate_for``).
        DatasetError / FileNotFoundError: the dataset, split or maps folder is bad.
        CheckpointError: ``refine_cfg.affinity`` is not an affinity network checkpoint.
        JobConflict: ``out_dir`` holds masks of another job (and no ``overwrite``).
    """
    refine_cfg.validate_for(max_image_side)
    reader = DatasetReader.open(data_root, max_image_side)
    out = Location.parse(out_dir)
    job = maps_job(cams_dir, reader, refine_cfg, out)
    refs = reader.index(split)
    maps = read_manifest(job.maps)
    manifest = Manifest.of("refine", {"maps": maps.job if maps else {"folder": job.maps.uri},
                                      **data_job(reader), "refine": refine_job(refine_cfg)})
    report, scorer = StageReport(), Scorer(reader.info)
    todo = pending(refs, out, ".png", report, manifest, overwrite)
    params = {"cams": str(cams_dir), "data": str(data_root), "split": split,
              "refine": refine_cfg}
    with tracked_stage(f"refine-{split}", "refine", tracking_cfg, params, out) as stage:
        collect(LocalExecutor(desc="refine").run(todo, mask_steps(job)), report, scorer)
        add_reused_scores(reader, refs, todo, out, scorer, report)
        drawn = [*mask_steps(job)[:2], Step(read_written_masks, {"job": job})]
        grid = step_picture(refs, drawn, reader.info.class_names, out)
        publish(report, out, "masks", grid)
        stage.report = report
    return report


def run_eval(cams_dir: str | Path, data_root: str | Path, split: str,
             refine_cfg: RefineConfig = RefineConfig(), masks_out: str | Path | None = None,
             tracking_cfg: TrackingConfig = TrackingConfig(),
             max_image_side: int = 1024) -> tuple[SegmentationScores, StageReport]:
    """Turn maps into pseudo-masks and score them against ground truth (mIoU table).

    Masks use ``refine_cfg``'s background score and confidence marking without the CRF
    (``wsss refine`` adds the CRF and writes the masks for the segmenter); with ``masks_out``
    they are also written there. Ids without ground truth fail with that reason.
    """
    reader = DatasetReader.open(data_root, max_image_side)
    out = None if masks_out is None else Location.parse(masks_out)
    job = maps_job(cams_dir, reader, dataclasses.replace(refine_cfg, crf=False), out)
    refs = reader.index(split)
    steps = [Step(decode, {"job": job}), Step(require_gt), *mask_steps(job)[1:]]
    report, scorer = StageReport(), Scorer(reader.info)
    collect(LocalExecutor(desc="eval").run(refs, steps), report, scorer)
    report.add_scores(scorer)
    params = {"cams": str(cams_dir), "data": str(data_root), "split": split,
              "refine": job.refine}
    with tracked_stage(f"eval-{split}", "eval", tracking_cfg, params):
        publish(report, None, "images")
    return scorer.scores(), report


def score_masks(reader: DatasetReader, refs: Sequence[SampleRef],
                masks: Location) -> tuple[Scorer, StageReport]:
    """Score ``<masks>/<id>.png`` against ground truth for the ``refs`` that have ground
    truth (the others are passed over). Missing or unreadable masks are listed in the
    report's ``failed``; ``report.done`` counts the scored images."""
    job = Job(reader, out=masks, evaluate=True)
    scorer, report = Scorer(reader.info), StageReport()
    steps = [Step(read_masks_and_gt, {"job": job}),
             Step(write_outputs, {"job": dataclasses.replace(job, out=None)})]
    collect(LocalExecutor(desc="score").run([r for r in refs if r.mask_file], steps), report,
            scorer)
    return scorer, report


def add_reused_scores(reader: DatasetReader, refs: Sequence[SampleRef],
                      todo: Sequence[SampleRef], out: Location, scorer: Scorer,
                      report: StageReport) -> None:
    """Add the masks an earlier run wrote in ``out`` (``refs`` not in ``todo``) to ``scorer``
    and record the scores of all written masks in ``report`` (unreadable ones under
    ``not_scored``)."""
    new = {r.id for r in todo}
    reused, scored = score_masks(reader, [r for r in refs if r.id not in new], out)
    scorer.merge(reused)
    if scored.failed:  # masks written, but they or their ground truth could not be read
        report.extra.setdefault("not_scored", []).extend(
            {"id": i, "reason": r} for i, r in scored.failed)
    report.add_scores(scorer)


def run_eval_masks(masks_dir: str | Path, data_root: str | Path, split: str,
                   tracking_cfg: TrackingConfig = TrackingConfig(),
                   max_image_side: int = 1024) -> tuple[SegmentationScores, StageReport]:
    """Score ``<masks_dir>/<id>.png`` masks (refined or predicted) against ground truth."""
    reader = DatasetReader.open(data_root, max_image_side)
    masks = Location.parse(masks_dir)
    if not masks.is_dir():
        raise FileNotFoundError(f"masks folder not found: {masks_dir}")
    scorer, report = score_masks(reader, reader.index(split), masks)
    report.add_scores(scorer)
    params = {"masks": str(masks_dir), "data": str(data_root), "split": split}
    with tracked_stage(f"eval-masks-{split}", "eval", tracking_cfg, params):
        publish(report, None, "images")
    return scorer.scores(), report
