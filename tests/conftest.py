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


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray (2 CPUs) shared by every test that needs it."""
    import ray

    started = not ray.is_initialized()
    if started:  # "local": never join another Ray instance found on this machine
        ray.init(address="local", num_cpus=2, **RAY_TEST_ARGS)
    yield
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def two_node_cluster():
    """A simulated two-node Ray cluster (2 CPUs per node) for the tests of one module.

    The session's local Ray, if running, is stopped for the module and started again after.
    """
    import ray
    from ray.cluster_utils import Cluster

    was_running = ray.is_initialized()
    ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, **RAY_TEST_ARGS)
    yield cluster
    ray.shutdown()
    cluster.shutdown()
    if was_running:
        ray.init(address="local", num_cpus=2, **RAY_TEST_ARGS)
