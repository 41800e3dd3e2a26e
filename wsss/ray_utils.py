"""Starting or joining Ray, and choosing devices."""

from __future__ import annotations

import os


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Join the cluster at ``address`` (``auto`` under ``ray submit``), else start a local Ray.

    A no-op when Ray is already initialised (a sweep trial, a test fixture).
    """
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:  # "local": never join another Ray instance found on this machine by accident
        ray.init(address="local", num_cpus=num_cpus, log_to_driver=True)


def gpus_available() -> bool:
    """Whether the Ray cluster (or, without Ray, this machine) has at least one GPU."""
    import ray

    if ray.is_initialized():
        return ray.cluster_resources().get("GPU", 0) >= 1
    import torch

    return torch.cuda.is_available()
