"""Ray Data pseudo-labelling: same masks as `wsss cam` + `wsss refine`, resume, bad inputs,
URIs, and a simulated two-node cluster (work on both nodes; a killed map actor loses nothing)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
from PIL import Image

from wsss.cli import main
from wsss.config import CamConfig, RefineConfig, TrackingConfig
from wsss.core.maps import load_maps
from wsss.pipeline.executors import WorkerPlan, plan_workers
from wsss.pipeline.maps import run_cams
from wsss.pipeline.masks import run_refine
from wsss.pipeline.pseudo_label import PipelineOptions, run_pseudo_label
from wsss.storage import Location

CAM = CamConfig(kind="gradcam", scales=(1.0, 0.5), flip=True, batch_size=4)


@pytest.fixture(scope="module")
def checkpoint(untrained_checkpoint) -> Path:
    return untrained_checkpoint


def _ids(root: Path, split: str = "train") -> list[str]:
    return (root / f"ImageSets/Segmentation/{split}.txt").read_text().split()


def _masks(folder: Path) -> dict[str, np.ndarray]:
    return {p.stem: np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))
            if p.name != "samples.png"}


def _tracking(tmp_path: Path) -> TrackingConfig:
    return TrackingConfig(uri=f"sqlite:///{tmp_path / 'mlflow.db'}")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, synth_root, checkpoint) -> tuple[Path, Path, dict]:
    """Maps and masks of the single-process path (run_cams + run_refine), CRF on."""
    base = tmp_path_factory.mktemp("reference")
    tracking = _tracking(base)
    run_cams(checkpoint, synth_root, "train", base / "cams", CAM, tracking, device="cpu")
    report = run_refine(base / "cams", synth_root, "train", base / "masks", RefineConfig(),
                        tracking)
    return base / "cams", base / "masks", report.extra


@pytest.mark.parametrize("kind", ["path", "file-uri", "fsspec-memory"])
def test_locations_read_write_list_and_clean_up(tmp_path, kind):
    uri = {"path": str(tmp_path), "file-uri": tmp_path.as_uri(),
           "fsspec-memory": f"memory://{tmp_path.name}"}[kind]
    loc = Location.parse(uri)
    assert loc.is_local == (kind != "fsspec-memory")
    loc.write_bytes(b"mask", "sub", "a.png")
    loc.write_bytes(b"half", "sub", ".a.png.x1.tmp")  # what a killed local writer leaves
    assert loc.read_bytes("sub", "a.png") == b"mask" and loc.is_file("sub", "a.png")
    assert loc.list_files("sub") == [".a.png.x1.tmp", "a.png"] and loc.list_files("no") == []
    assert loc.remove_temp_files("sub") == 1 and loc.list_files("sub") == ["a.png"]
    with pytest.raises(FileNotFoundError, match=r"file not found: .*sub/b\.png"):
        loc.read_bytes("sub", "b.png")
    if loc.is_local:
        assert loc.local_path("sub", "a.png") == tmp_path / "sub" / "a.png"


def test_plan_keeps_cpus_for_the_tasks():
    # one CPU stays reserved for the tasks; torch threads are the actor's share of all cores
    assert plan_workers({"CPU": 2}) == WorkerPlan(1, 1.0, 0.0, 2)
    assert plan_workers({"CPU": 2}, cam_workers=2) == WorkerPlan(2, 0.5, 0.0, 1)
    assert plan_workers({"CPU": 9}, cam_workers=2) == WorkerPlan(2, 4.0, 0.0, 4)
    gpu = plan_workers({"CPU": 8, "GPU": 2})
    assert gpu.workers == 2 and gpu.gpus == 1.0 and gpu.cpus == 1.0 and gpu.device == "cuda"
    with pytest.raises(ValueError, match="needs at least 2"):
        plan_workers({"CPU": 1})


@pytest.mark.slow
def test_masks_and_maps_equal_the_single_process_path(ray_session, synth_root, checkpoint,
                                                      reference, tmp_path):
    cams_dir, masks_dir, ref_extra = reference
    out = tmp_path / "out"
    report = run_pseudo_label(checkpoint, synth_root, "train", out, CAM, RefineConfig(),
                              _tracking(tmp_path),
                              PipelineOptions(save_maps=True, evaluate=True))
    ids = _ids(synth_root)
    assert report.done == len(ids) and report.reused == 0 and report.failed == []
    expected, got = _masks(masks_dir), _masks(out)
    assert sorted(got) == sorted(expected) == sorted(ids)
    for sample_id in ids:
        assert np.array_equal(got[sample_id], expected[sample_id]), sample_id
        maps, class_ids = load_maps(out / "maps" / f"{sample_id}.npz")
        ref_maps, ref_ids = load_maps(cams_dir / f"{sample_id}.npz")
        # the map actor runs torch on 2 threads, the reference on 1: float rounding differs
        assert class_ids == ref_ids and np.allclose(maps, ref_maps, atol=2e-3), sample_id
    # --eval merges per-block confusion matrices into the same score as scoring the files
    assert report.extra["miou"] == pytest.approx(ref_extra["miou"], abs=1e-12)
    client = mlflow.MlflowClient(_tracking(tmp_path).uri)
    (run,) = client.search_runs([client.get_experiment_by_name("wsss").experiment_id],
                                "tags.stage = 'pseudo-label'")
    assert run.data.metrics["images_done"] == len(ids)
    assert run.data.metrics["miou"] == pytest.approx(ref_extra["miou"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"samples.png", "report.json", "scores.txt"} <= artifacts


@pytest.mark.slow
def test_resume_after_interruption_writes_each_mask_once(ray_session, synth_root, checkpoint,
                                                         reference, tmp_path, monkeypatch,
                                                         capsys, restart_ray):
    import wsss.pipeline.report as pl

    _, masks_dir, _ = reference
    ids, out = _ids(synth_root), tmp_path / "out"
    args = ["pseudo-label", "--checkpoint", str(checkpoint), "--data", synth_root.as_uri(),
            "--out", str(out), "--batch-size", "2", "--kind", "gradcam", "--scales", "1",
            "0.5", "--flip", "--tracking-uri", _tracking(tmp_path).uri]
    real_count, seen = pl._count, []

    def interrupt_after_first_mask(*a):
        seen.append(a)
        if len(seen) == 2:  # one image counted at both stages: the driver dies here
            raise KeyboardInterrupt
        real_count(*a)

    monkeypatch.setattr(pl, "_count", interrupt_after_first_mask)
    with pytest.raises(KeyboardInterrupt):
        main(args)
    monkeypatch.undo()
    restart_ray()  # the interrupted run's tasks die with their Ray: no write is still to come
    first = {p.name for p in out.glob("*.png")}
    assert 0 < len(first) < len(ids), "the run was not interrupted half-way"
    stale = out / f".{ids[0]}.png.x1y2.tmp"  # what a write cut short leaves behind
    stale.write_bytes(b"partial")
    capsys.readouterr()
    assert main(args) == 0
    assert f"{len(ids) - len(first)} done" in capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert report["reused"] == len(first) and report["done"] == len(ids) - len(first)
    assert report["failed"] == [] and not stale.exists()
    got, expected = _masks(out), _masks(masks_dir)
    assert sorted(got) == sorted(ids)
    assert all(np.array_equal(got[i], expected[i]) for i in ids)
    assert not list(out.glob(".*.tmp"))


@pytest.mark.slow
def test_bad_images_are_listed_and_the_rest_done(ray_session, broken_train_set, checkpoint,
                                                 tmp_path):
    out = tmp_path / "out"
    report = run_pseudo_label(checkpoint, broken_train_set, "train", out,
                              CamConfig(batch_size=4), RefineConfig(crf=False),
                              _tracking(tmp_path))
    failed = json.loads((out / "report.json").read_text())["failed"]
    reasons = {entry["id"]: entry["reason"] for entry in failed}
    assert set(reasons) == {"broken_jpeg", "missing_image"}
    assert "cannot read image" in reasons["broken_jpeg"]
    assert "JPEGImages/broken_jpeg.jpg" in reasons["broken_jpeg"]
    assert "image not found for id 'missing_image'" in reasons["missing_image"]
    good = [i for i in _ids(broken_train_set) if i not in reasons]
    assert report.done == len(good) and sorted(_masks(out)) == sorted(good)


# -- a simulated two-node cluster -------------------------------------------------------------
def _record_inodes(out: Path, inodes: dict, stop: threading.Event) -> None:
    """Until ``stop``, record the inodes each mask file had: every atomic write is a new file,
    so a mask written twice shows up with two inodes."""
    while not stop.is_set():
        for path in out.glob("*.png"):
            try:
                inodes.setdefault(path.name, set()).add(path.stat().st_ino)
            except FileNotFoundError:
                continue
        time.sleep(0.05)


@pytest.mark.slow
def test_two_nodes_share_the_work_and_a_killed_actor_loses_nothing(two_node_cluster, synth_root,
                                                                   checkpoint, tmp_path):
    import ray

    from wsss.faults import FAULT_ENV

    nodes = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    assert len(nodes) == 2
    ids, cam = _ids(synth_root), CamConfig(batch_size=2)
    options = PipelineOptions(cam_workers=2)
    clean = run_pseudo_label(checkpoint, synth_root, "train", tmp_path / "clean", cam,
                             RefineConfig(), _tracking(tmp_path), options)
    assert clean.done == len(ids) and clean.failed == []
    assert set(clean.nodes["cam"]) == nodes, clean.nodes  # a map actor on each node
    assert set(clean.nodes["cam"]) | set(clean.nodes["masks"]) == nodes

    # A new job on the same cluster whose map actors carry the fault: the first actor to
    # finish its second batch is SIGKILLed before it hands the batch on.
    marker = tmp_path / "fault-fired"
    ray.shutdown()
    ray.init(address=two_node_cluster.address, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1",
                                       FAULT_ENV: f"map_batch:2:{marker}"}})
    out, inodes, stop = tmp_path / "killed", {}, threading.Event()
    out.mkdir()
    recorder = threading.Thread(target=_record_inodes, args=(out, inodes, stop))
    recorder.start()
    try:
        report = run_pseudo_label(checkpoint, synth_root, "train", out, cam, RefineConfig(),
                                  _tracking(tmp_path), options)
    finally:
        stop.set()
        recorder.join()
    assert marker.read_text().startswith("map_batch 2"), "no map actor was killed"
    assert report.done == len(ids) and report.failed == []  # each image reported once
    saved = json.loads((out / "report.json").read_text())
    assert saved["done"] == len(ids) and saved["reused"] == 0
    assert sum(saved["nodes"]["masks"].values()) == len(ids)
    written_twice = {name for name, seen in inodes.items() if len(seen) > 1}
    assert not written_twice, f"masks written more than once: {sorted(written_twice)}"
    assert not list(out.glob(".*.tmp"))  # no write was left half-done
    got, expected = _masks(out), _masks(tmp_path / "clean")
    assert sorted(got) == sorted(expected) == sorted(ids)
    assert all(np.array_equal(got[i], expected[i]) for i in ids)


def _file_scores(masks_dir: Path, root: Path, ids: list[str]) -> float:
    """mIoU of the single-process masks of ``ids`` against ground truth."""
    from wsss.core.scoring import ConfusionMatrix
    from wsss.data.dataset import VOCDataset

    dataset = VOCDataset(root, ids=ids)
    confusion = ConfusionMatrix(dataset.info.num_classes)
    for sample_id, mask in _masks(masks_dir).items():
        if sample_id in ids:
            confusion.update(mask, dataset.sample(sample_id).gt)
    return confusion.compute(list(dataset.info.class_names), background=0).miou


def test_rescored_saved_maps_score_like_the_single_process_path(ray_session, synth_root,
                                                                 reference, tmp_path):
    """Re-refining saved maps through Ray Data (the CRF sweep's trials) gives, chunk by chunk
    in id order, the scores of the single-process masks; a missing map file is listed."""
    import shutil

    from wsss.pipeline.pseudo_label import rescore_maps

    cams_dir, masks_dir, _ = reference
    ids = _ids(synth_root)[:9]
    maps = tmp_path / "maps"
    shutil.copytree(cams_dir, maps)
    (maps / f"{ids[-1]}.npz").unlink()
    chunks = list(rescore_maps(maps, synth_root, "train", ids, RefineConfig(), "cam",
                               chunks=2, batch_size=2))
    assert [c.images for c in chunks] == [6, 9]  # blocks of 2 ids; chunk bounds 5 and 9
    assert chunks[0].failed == [] and len(chunks[1].failed) == 1
    failed_id, reason = chunks[1].failed[0]
    assert failed_id == ids[-1] and f"{ids[-1]}.npz" in reason
    assert chunks[0].scores.miou == pytest.approx(_file_scores(masks_dir, synth_root, ids[:6]))
    assert chunks[1].scores.miou == pytest.approx(_file_scores(masks_dir, synth_root, ids[:-1]))


def test_rescoring_inside_a_placement_group_uses_its_cpus(ray_session, synth_root, reference):
    """Called from a Tune trial, the refine tasks run in the trial's placement group: here the
    group holds every CPU of the cluster, so tasks scheduled outside it would never start."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from wsss.pipeline.pseudo_label import rescore_maps

    cams_dir, masks_dir, _ = reference
    ids = _ids(synth_root)[:4]

    @ray.remote(num_cpus=0)
    def trial() -> float:
        return list(rescore_maps(cams_dir, synth_root, "train", ids, RefineConfig(),
                                 "cam"))[-1].scores.miou

    cpus = int(ray.cluster_resources()["CPU"])
    group = placement_group([{"memory": 2**20}] + [{"CPU": 1}] * cpus)
    ray.get(group.ready(), timeout=600)
    try:
        strategy = PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=0,
                                                    placement_group_capture_child_tasks=True)
        miou = ray.get(trial.options(scheduling_strategy=strategy).remote(), timeout=900)
    finally:
        remove_placement_group(group)
    assert miou == pytest.approx(_file_scores(masks_dir, synth_root, ids))


@pytest.mark.slow
def test_another_checkpoint_into_the_same_out_is_refused(ray_session, synth_root, checkpoint,
                                                         other_checkpoint, tmp_path):
    """OUT/manifest.json: another classifier's masks never join this one's; --overwrite
    recomputes them all. The checkpoints are read from fsspec's memory:// and a file:// URI."""
    import fsspec

    from wsss.pipeline.manifest import JobConflict
    from wsss.train.checkpoint import open_checkpoint

    other = other_checkpoint
    first = "memory:///pseudo-label-test/model.pt"
    fsspec.filesystem("memory").pipe(first[len("memory://"):], checkpoint.read_bytes())
    ids, out = _ids(synth_root)[:4], tmp_path / "out"
    options = PipelineOptions(save_maps=True)
    args = (synth_root, "train", out, CamConfig(batch_size=2), RefineConfig(crf=False),
            _tracking(tmp_path))
    assert run_pseudo_label(first, *args, options, ids=ids).done == len(ids)
    written = {p.name: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    with pytest.raises(JobConflict, match=f"{out} holds the outputs of another"):
        run_pseudo_label(other.as_uri(), *args, options, ids=ids)
    assert {p.name: p.stat().st_mtime_ns for p in out.rglob("*.png")} == written
    report = run_pseudo_label(other.as_uri(), *args,
                              PipelineOptions(save_maps=True, overwrite=True), ids=ids)
    assert report.done == len(ids) and report.reused == 0
    saved = json.loads((out / "report.json").read_text())
    assert saved["job"]["job"]["checkpoint"] == open_checkpoint(other, "classifier").sha256
    maps = json.loads((out / "maps/manifest.json").read_text())
    assert maps["job"]["checkpoint"] == saved["job"]["job"]["checkpoint"]
