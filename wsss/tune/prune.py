"""After a sweep: keep one model on disk, the best trial's, without its optimizer state.

Every round of every trial leaves a Ray Train checkpoint (an adversarial-erasing model with its
optimizer state is 180-230 MB), hard-linked as
``WORKDIR/EXPERIMENT/trials/<id>/round<k>/model.pt``.
While the sweep runs they are what a retried trial resumes from; once it has ended they are
not needed, except the best trial's model, which the summary names. So when a sweep ends
normally (not when it is interrupted: ``--resume`` then needs them), :func:`keep_best_model`
deletes the checkpoints of the trials that completed or were stopped early (a trial that
failed keeps its own: ``--resume`` retries it from them) other than the best trial's last one,
and rewrites that one without its optimizer state (only a training run resuming that very
checkpoint would need it, and that run has finished). Only local storage is pruned; a sweep
whose ``--storage-path`` is a URI keeps its checkpoints.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from wsss.storage import is_uri
from wsss.train.affinity import FORMAT as AFFINITY_FORMAT
from wsss.train.checkpoint import FORMAT, link_or_copy, read_state, write_state

PRUNED_STATUSES = ("completed", "stopped early")  # trials whose checkpoints can go
SWEPT_FORMATS = (FORMAT, AFFINITY_FORMAT)  # what sweep trials train: classifiers, affinity nets


@dataclass
class Pruned:
    """What :func:`keep_best_model` did: bytes freed, trials whose files went, the kept file."""

    freed: int = 0
    trials: int = 0
    kept: Path | None = None

    def line(self) -> str:
        """One summary line (empty when nothing was removed or rewritten)."""
        if not self.freed:
            return ""
        kept = f"; kept the best trial's model ({_mb(self.kept.stat().st_size)}, without " \
               f"optimizer state)" if self.kept and self.kept.is_file() else ""
        return (f"disk: removed the checkpoints of {self.trials} other trial(s) and earlier "
                f"rounds ({_mb(self.freed)} freed){kept}\n")


def keep_best_model(rows: Sequence[dict[str, Any]], best: dict[str, Any] | None,
                    workdir: str | Path, storage_path: str, experiment: str) -> Pruned:
    """Delete every finished trial's checkpoints except ``best``'s last one (its ``checkpoint``,
    a ``model.pt`` in a Ray Train checkpoint folder), which loses its optimizer state.

    Args:
        rows: the sweep's trials (``trial_id``, ``status``), as ``report.trial_row`` makes them.
        best: the best row (None: no trial scored, every finished trial's files go).
        workdir: the sweep's work folder (``WORKDIR/EXPERIMENT``, with ``trials/<id>/``).
        storage_path: Ray storage; a URI is left alone.
        experiment: the sweep's name (Ray Train runs are in ``STORAGE/EXPERIMENT-train``).
    """
    pruned = Pruned()
    if is_uri(storage_path):
        return pruned
    keep = Path(best["checkpoint"]) if best and best.get("checkpoint") else None
    if keep is not None and (is_uri(str(keep)) or not keep.is_file()):
        keep = None
    train_runs = Path(storage_path) / f"{experiment}-train"
    for row in rows:
        if row["status"] not in PRUNED_STATUSES:
            continue
        trial_id = str(row["trial_id"])
        folders = [*train_runs.glob(f"{trial_id}-round*"),
                   *(Path(workdir) / "trials" / trial_id).glob("round*")]
        removed = [f for f in folders if keep is None or not _holds(f, keep, trial_id)]
        for folder in removed:
            pruned.freed += _remove(folder)
        if removed and (best is None or trial_id != best["trial_id"]):
            pruned.trials += 1
    if keep is not None:
        pruned.freed += _drop_optimizer(keep, Path(workdir) / "trials" / best["trial_id"])
        pruned.kept = keep
    return pruned


def _holds(folder: Path, keep: Path, trial_id: str) -> bool:
    """Whether ``folder`` (a Ray Train run ``<id>-round<k>`` or a ``trials/<id>/round<k>``)
    is the round of the kept checkpoint."""
    run = keep.parent.parent.name  # STORAGE/EXPERIMENT-train/<id>-round<k>/checkpoint_*/model.pt
    return folder in keep.parents or (folder.name == run.removeprefix(f"{trial_id}-")
                                      and folder.parent.name == trial_id)


def _drop_optimizer(path: Path, trial_dir: Path) -> int:
    """Rewrite checkpoint ``path`` without its optimizer state (atomically) and re-link the
    trial's copy of it (``trial_dir/round<k>/model.pt``); returns the bytes saved."""
    state = read_state(path, SWEPT_FORMATS, "classifier or affinity network")
    if state.get("optimizer") is None:
        return 0
    before = path.stat().st_size
    state["optimizer"] = None
    write_state(path, state)
    match = re.search(r"-(round\d+)$", path.parent.parent.name)
    linked = trial_dir / match.group(1) / path.name if match else None
    if linked is not None and linked.is_file():
        link_or_copy(path, linked)
    return max(before - path.stat().st_size, 0)


def _remove(folder: Path) -> int:
    """Delete ``folder``; returns the bytes of its files that had no other link."""
    size = sum(f.stat().st_size for f in folder.rglob("*")
               if f.is_file() and not f.is_symlink() and f.stat().st_nlink == 1)
    shutil.rmtree(folder, ignore_errors=True)
    return size


def _mb(size: int) -> str:
    return f"{size / 2**20:.0f} MB"
