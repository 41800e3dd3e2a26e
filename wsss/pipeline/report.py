"""What every batch step reports, and the one MLflow block each step runs inside.

``StageReport`` is a step's ``report.json`` (counts, failures with their reasons, scores);
``tracked_stage`` opens the step's MLflow run, and once the run has ended records in the report
what a lost tracking server left in the local unsent file; ``publish`` logs a finished report
(counts, scores, the report file, a sample picture).
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from wsss import tracking
from wsss.config import TrackingConfig, to_dict
from wsss.core.scoring import Scorer, SegmentationScores
from wsss.data.reader import SampleRef
from wsss.pipeline.manifest import Manifest, claim
from wsss.storage import Location

REPORT_FILE = "report.json"
GRID_SAMPLES = 8


@dataclass
class StageReport:
    """Counts and problems of a batch step (written to ``report.json``).

    Attributes:
        done: ids processed in this run.
        reused: ids whose output a previous run had written (resume).
        failed: ``(id, reason)`` of every id that could not be processed.
        seconds: wall time of the step's work (seconds).
        scores: the scores of the written masks against ground truth, when scored.
        nodes: per step, how many images each Ray node processed.
        extra: further JSON-able facts (``miou``, ``scored``, throughput, nodes...).
    """

    done: int = 0
    reused: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    scores: SegmentationScores | None = None
    nodes: dict[str, dict[str, int]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The content of ``report.json``."""
        return {"done": self.done, "reused": self.reused, "seconds": round(self.seconds, 3),
                "failed": [{"id": i, "reason": r} for i, r in self.failed], **self.extra}

    def write(self, out: Location) -> str:
        """Write ``report.json`` into ``out`` atomically; returns its path."""
        return out.write_bytes(json.dumps(self.to_dict(), indent=2, default=str).encode(),
                               REPORT_FILE)

    def add_scores(self, scorer: Scorer) -> None:
        """Record the scores of ``scorer`` (when it scored any image) in the report."""
        if scorer.images:
            self.scores = scorer.scores()
            self.extra.update(scored=scorer.images, miou=self.scores.miou,
                              pixel_accuracy=self.scores.pixel_accuracy)

    def summary(self, what: str) -> str:
        """One line: ``<what>: N done (r/s), M already present, K failed`` (+ MLflow note)."""
        rate = self.done / self.seconds if self.seconds > 0 else 0.0
        reused = f", {self.reused} already present" if self.reused else ""
        text = f"{what}: {self.done} done ({rate:.1f}/s){reused}, {len(self.failed)} failed"
        unsent = self.extra.get("mlflow_unsent")
        if unsent:
            text += (f"; MLflow did not answer: {unsent['records']} record(s) kept in "
                     f"{unsent['file']}")
        return text


@dataclass
class TrackedStage:
    """The open MLflow run of a step; the step sets ``report`` (and ``out``) before it ends."""

    run: Any
    out: Location | None = None
    report: StageReport | None = None


@contextlib.contextmanager
def tracked_stage(name: str, stage: str, tracking_cfg: TrackingConfig,
                  params: Mapping[str, Any], out: Location | None = None,
                  parent_run_id: str | None = None) -> Iterator[TrackedStage]:
    """Run the body inside MLflow run ``name`` (tag ``stage``, ``params`` flattened).

    Unsent records go to ``out`` when it is a local folder. After the run ends, a report the
    body left in ``TrackedStage.report`` notes what MLflow did not take
    (``mlflow_unsent: {records, file}``) and is written again to ``TrackedStage.out``.
    """
    local = out.root if out is not None and out.is_local else None
    with tracking.start_run(name, experiment=tracking_cfg.experiment, uri=tracking_cfg.uri,
                            params=to_dict(dict(params)), tags={"stage": stage},
                            parent_run_id=parent_run_id, local_dir=local) as run:
        tracked = TrackedStage(run, out)
        yield tracked
    kept = tracking.kept_locally(run.info.run_id)
    if kept is not None and tracked.report is not None:
        tracked.report.extra["mlflow_unsent"] = {"records": kept[0], "file": str(kept[1])}
        if tracked.out is not None:
            tracked.report.write(tracked.out)


def publish(report: StageReport, out: Location | None, what: str,
            grid: Path | None = None) -> None:
    """Write ``report.json`` to ``out`` and log the report to the active MLflow run: counts
    (``<what>_done``, ``<what>_failed``, ``images_per_s``), scores and their table, the report
    file and ``grid`` (a sample picture)."""
    tracking.log_metrics({f"{what}_done": report.done, f"{what}_failed": len(report.failed),
                          "images_per_s": report.done / max(report.seconds, 1e-9)})
    if report.scores is not None:
        tracking.log_metrics(report.scores.summary())
        tracking.log_text(report.scores.table(), "scores.txt")
    if out is not None and out.is_local:
        report.write(out)
        tracking.log_artifact(out.local_path(REPORT_FILE))
    else:
        tracking.log_text(json.dumps(report.to_dict(), indent=2, default=str), REPORT_FILE)
        if out is not None:
            report.write(out)
    if grid is not None:
        tracking.log_artifact(grid)


def pending(refs: Sequence[SampleRef], out: Location, suffix: str, report: StageReport,
            manifest: Manifest | None = None, overwrite: bool = False) -> list[SampleRef]:
    """The refs without an output ``out/<id><suffix>`` yet (resume); counts the others as
    ``report.reused``. Temporary files a killed run left in ``out`` are removed first.

    With ``manifest`` (the job, ``wsss.pipeline.manifest``) the folder must hold this job's
    outputs only (``claim``: JobConflict otherwise; ``overwrite`` removes them all first), and
    the report records the job under ``job``."""
    out.make_dirs()
    out.remove_temp_files()
    if manifest is not None:
        claim(out, manifest, suffix, overwrite)
        report.extra["job"] = manifest.to_dict()
    written = {n[:-len(suffix)] for n in out.list_files() if n.endswith(suffix)}
    todo = [r for r in refs if r.id not in written]
    report.reused += len(refs) - len(todo)
    return todo


def collect(blocks: Iterable[dict[str, np.ndarray]], report: StageReport,
            scorer: Scorer | None = None) -> None:
    """Count the output rows of ``wsss.pipeline.steps.write_outputs`` into ``report``
    (done, failed with reasons, written but not scored under ``not_scored``, per-node counts
    in ``nodes``, ``cam_seconds``, the first block's latency) and add their score counts to
    ``scorer``; adds to ``report.seconds``."""
    start = time.perf_counter()
    for block in blocks:
        if "first_block_s" not in report.extra:  # start-up: planning, workers, first batch
            report.extra.update(first_block_s=time.perf_counter() - start,
                                first_block_images=len(block["id"]))
        for sample_id, status, reason, cam_node, write_node, unscored in zip(
                block["id"], block["status"], block["reason"], block["cam_node"],
                block["write_node"], block["unscored"]):
            if status == "done":
                report.done += 1
                _count(report.nodes, "cam", str(cam_node))
                _count(report.nodes, "masks", str(write_node))
                if unscored:  # written, but its ground truth could not be read
                    report.extra.setdefault("not_scored", []).append(
                        {"id": str(sample_id), "reason": str(unscored)})
            else:
                report.failed.append((str(sample_id), str(reason)))
        report.extra["cam_seconds"] = report.extra.get("cam_seconds", 0.0) + float(
            np.sum(block["cam_seconds"]))
        if scorer is not None:
            for counts in block["counts"]:
                scorer.add(counts)
    report.seconds += time.perf_counter() - start


def _count(nodes: dict[str, dict[str, int]], step: str, node: str) -> None:
    per_step = nodes.setdefault(step, {})
    per_step[node] = per_step.get(node, 0) + 1
