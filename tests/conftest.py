"""Shared fixtures: tiny seeded datasets generated once per session, and one local Ray."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

# Tiny tensors: extra intra-op threads only add contention on a 2-core machine.
torch.set_num_threads(1)
os.environ.setdefault("RAY_DEDUP_LOGS", "1")


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    """A 24-image, 64px synthetic dataset (seed 0)."""
    from wsss.data.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("synth") / "synth"
    generate_dataset(root, n=24, seed=0, image_size=64)
    return root


def _untrained_classifier(path: Path, seed: int) -> Path:
    """An untrained ResNet-18 CAM classifier for the synthetic classes, weights of ``seed``."""
    from wsss.config import ExperimentConfig
    from wsss.methods import get_method
    from wsss.train.checkpoint import save_checkpoint

    torch.manual_seed(seed)
    method = get_method("cam")(5)
    save_checkpoint(path, model=method.build_model(ExperimentConfig().model), method=method,
                    cfg=ExperimentConfig(), class_names=["background", "a", "b", "c", "d", "e"],
                    has_background=True, epoch=1)
    return path


@pytest.fixture(scope="session")
def untrained_checkpoint(tmp_path_factory) -> Path:
    """A seeded, untrained ResNet-18 CAM classifier for the synthetic classes."""
    return _untrained_classifier(tmp_path_factory.mktemp("ckpt") / "model.pt", seed=0)


@pytest.fixture(scope="session")
def other_checkpoint(tmp_path_factory) -> Path:
    """Another untrained CAM classifier for the synthetic classes (other weights): a second
    job for the same output folder."""
    return _untrained_classifier(tmp_path_factory.mktemp("other") / "model.pt", seed=1)


@pytest.fixture(scope="session")
def train_set(tmp_path_factory) -> Path:
    """A 64-image, 64px synthetic dataset a classifier can learn in a few epochs."""
    from wsss.data.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("train") / "synth"
    generate_dataset(root, n=64, seed=0, image_size=64)
    return root


@pytest.fixture
def broken_train_set(tmp_path) -> Path:
    """A small dataset whose train split lists a truncated JPEG and an id without an image."""
    from wsss.data.synthetic import generate_dataset

    root = tmp_path / "broken"
    generate_dataset(root, n=16, seed=1, image_size=64)
    split = root / "ImageSets/Segmentation/train.txt"
    ids = split.read_text().split()
    jpeg = root / "JPEGImages" / f"{ids[0]}.jpg"
    data = jpeg.read_bytes()
    (root / "JPEGImages/broken_jpeg.jpg").write_bytes(data[: len(data) // 3])
    shutil.copyfile(root / "SegmentationClass" / f"{ids[0]}.png",
                    root / "SegmentationClass/broken_jpeg.png")
    split.write_text("\n".join(ids + ["broken_jpeg", "missing_image"]) + "\n")
    return root


RAY_TEST_ARGS = {"include_dashboard": False, "log_to_driver": False,
                 "runtime_env": {"env_vars": {"OMP_NUM_THREADS": "1"}}}


def _start_test_ray() -> None:
    from wsss.ray_utils import start_local_ray

    start_local_ray(num_cpus=2, **RAY_TEST_ARGS)


@pytest.fixture(scope="module")
def ray_session():
    """A local Ray (2 CPUs) of this test module's own, shut down after its last test.

    One Ray per module: what a test leaves behind in Ray (actors, placement groups, a killed
    worker) cannot reach the tests of another module.
    """
    import ray

    started = not ray.is_initialized()
    if started:  # never join another Ray instance found on this machine
        _start_test_ray()
    yield
    if started:
        ray.shutdown()


@pytest.fixture(autouse=True, scope="module")
def _no_ray_left_behind():
    """A module that started Ray without the fixtures (a stage calling ``init_ray``) has it
    shut down at its end, so the next module starts from no Ray."""
    yield
    import ray

    if ray.is_initialized():
        ray.shutdown()


@pytest.fixture
def two_node_cluster():
    """A simulated two-node Ray cluster (2 CPUs per node) for one test.

    The module's local Ray, if running, is stopped for the test and started again after. The
    cluster gets a lookup folder of its own (``wsss.ray_utils.prepare_local_ray``), so
    ``ray.cluster_utils.Cluster`` records its address there, not in the machine's
    ``/tmp/ray/ray_current_cluster`` that other Ray users read.
    """
    import ray
    from ray.cluster_utils import Cluster

    from wsss.ray_utils import prepare_local_ray

    was_running = ray.is_initialized()
    ray.shutdown()
    prepare_local_ray()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, **RAY_TEST_ARGS)
    yield cluster
    ray.shutdown()
    cluster.shutdown()
    if was_running:
        _start_test_ray()


@pytest.fixture
def ray_with_fault():
    """``start(spec)`` starts a local Ray whose processes have ``$WSSS_FAULT=spec`` (see
    ``wsss.faults``). The module's Ray is stopped for the test and started again after."""
    import ray

    from wsss.faults import FAULT_ENV
    from wsss.ray_utils import start_local_ray

    was_running = ray.is_initialized()
    ray.shutdown()

    def start(spec: str) -> None:
        env = {**RAY_TEST_ARGS["runtime_env"]["env_vars"], FAULT_ENV: spec}
        start_local_ray(num_cpus=2, **{**RAY_TEST_ARGS, "runtime_env": {"env_vars": env}})

    yield start
    ray.shutdown()
    if was_running:
        _start_test_ray()


@pytest.fixture
def restart_ray():
    """``restart()`` stops the local Ray (every task and actor in it dies) and starts a new one;
    a test uses it to be sure that nothing of an interrupted run still works in the background."""
    import ray

    def restart() -> None:
        ray.shutdown()
        _start_test_ray()

    return restart
