"""Output manifests: every output folder knows the job that made it.

A step that writes one file per image (maps, masks, predictions, pseudo-labels) skips the ids
whose file exists, so a killed run resumes (``wsss.pipeline.report.pending``). That is right
only for the same job: ``OUT/manifest.json`` records the job (the step, the checkpoint's
sha256 content hash, and the config keys that change the outputs), and a run of another job
into the folder stops before any work with :class:`JobConflict` (exit 2), naming the folder
and the keys that differ; ``--overwrite`` removes the other job's outputs and recomputes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping

from wsss.config import CamConfig, RefineConfig, flatten, to_dict
from wsss.data.reader import DatasetReader
from wsss.storage import Location, OutputError
from wsss.train.checkpoint import open_checkpoint

MANIFEST_FILE = "manifest.json"
HASH_SHOWN = 12  # hex digits of a content hash shown in messages
CAM_SPEED_KEYS = ("batch_size", "channels_last")  # how fast maps are made, not what they hold


class JobConflict(OutputError):
    """An output folder holds the outputs of another job (or of an unknown one)."""


@dataclass(frozen=True)
class Manifest:
    """The job whose outputs a folder holds.

    Attributes:
        stage: the step that writes them (``maps``, ``refine``, ``pseudo-label``, ``predict``).
        job: dotted key -> JSON value: what changes the outputs (``checkpoint``: the sha256
            of the checkpoint file's bytes; ``data``; ``cams.scales``; ``refine.affinity``:
            the affinity network's sha256...).
    """

    stage: str
    job: dict[str, Any]

    @classmethod
    def of(cls, stage: str, job: Mapping[str, Any]) -> "Manifest":
        """The manifest of ``job`` (configs and nested dicts flattened to dotted keys, values
        as JSON holds them: tuples become lists)."""
        return cls(stage, json.loads(json.dumps(flatten(to_dict(dict(job))), default=str)))

    def to_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "job": self.job}

    def differences(self, other: "Manifest") -> list[str]:
        """``key: this -> other`` for every key whose value differs (the stage first)."""
        diffs = [] if self.stage == other.stage else [f"stage: {self.stage} -> {other.stage}"]
        for key in sorted(set(self.job) | set(other.job)):
            mine, theirs = self.job.get(key), other.job.get(key)
            if mine != theirs:
                diffs.append(f"{key}: {_shown(mine)} -> {_shown(theirs)}")
        return diffs


def _shown(value: Any) -> str:
    """A value for a message: content hashes shortened, absent keys as ``(none)``."""
    if value is None:
        return "(none)"
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef"
                                                           for c in value):
        return value[:HASH_SHOWN]
    return json.dumps(value) if not isinstance(value, str) else value


def read_manifest(out: Location) -> Manifest | None:
    """The manifest in ``out`` (None when it has none)."""
    if not out.is_file(MANIFEST_FILE):
        return None
    try:
        data = json.loads(out.read_text(MANIFEST_FILE))
        return Manifest(str(data["stage"]), dict(data["job"]))
    except (ValueError, KeyError, TypeError) as err:
        raise JobConflict(f"{out.name(MANIFEST_FILE)} is not a wsss manifest ({err}); pass "
                          f"--overwrite to recompute the folder's outputs") from err


def claim(out: Location, manifest: Manifest, suffix: str, overwrite: bool = False) -> None:
    """Make ``out`` the folder of ``manifest``'s job, before any work.

    The same job (or a folder without ``<id><suffix>`` outputs) goes on: its outputs are kept
    and resumed. With ``overwrite`` every ``*<suffix>`` output is removed first.

    Raises:
        JobConflict: ``out`` holds outputs of another job (the message names the folder and
            each key that differs), or outputs without a manifest (their job is unknown).
    """
    out.make_dirs()
    recorded = read_manifest(out)
    written = [name for name in out.list_files() if name.endswith(suffix)]
    if overwrite:
        for name in written:
            out.filesystem.delete_file(out.path(name))
    elif recorded is None and written:
        raise JobConflict(f"{out.uri} holds {len(written)} {suffix} output(s) but no "
                          f"{MANIFEST_FILE}, so the job that wrote them is unknown; choose "
                          f"another output folder, or pass --overwrite to recompute them")
    elif recorded is not None and recorded != manifest:
        diffs = "; ".join(recorded.differences(manifest))
        raise JobConflict(f"{out.uri} holds the outputs of another {recorded.stage} job "
                          f"({diffs}); choose another output folder, or pass --overwrite to "
                          f"recompute them")
    if overwrite or recorded != manifest:
        out.write_bytes(json.dumps(manifest.to_dict(), indent=2).encode(), MANIFEST_FILE)


def data_job(reader: DatasetReader) -> dict[str, Any]:
    """The job keys of the images a step reads: the dataset (absolute path or URI) and the
    largest image side they are read at."""
    data = reader.data
    return {"data": data.root if data.is_local else data.uri,
            "max_image_side": reader.max_image_side}


def maps_manifest(checkpoint_sha256: str, reader: DatasetReader, cams: CamConfig) -> Manifest:
    """The job of a maps folder (``wsss cam``, ``pseudo-label --save-maps``): the classifier
    (content hash), the images and the map settings that change the maps."""
    settings = {k: v for k, v in to_dict(cams).items() if k not in CAM_SPEED_KEYS}
    return Manifest.of("maps", {"checkpoint": checkpoint_sha256, **data_job(reader),
                                "cams": settings})


def refine_job(refine: RefineConfig) -> dict[str, Any]:
    """The ``refine`` keys of a job, the affinity network (``refine.affinity``) as the content
    hash of its checkpoint (CheckpointError when it is not one)."""
    settings = to_dict(refine)
    if refine.affinity:
        settings["affinity"] = open_checkpoint(refine.affinity, "affinity").sha256
    return settings
