"""Starting or joining Ray, and choosing devices."""

from __future__ import annotations

import os
import socket
from typing import Any


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
    else:
        start_local_ray(num_cpus=num_cpus, log_to_driver=True)


def start_local_ray(**kwargs: Any) -> None:
    """Start a new local Ray (never join another one found on this machine) whose processes
    all know its address.

    Ray's state API, which Ray Train uses to release the resources of a trial that Tune stopped
    (``PlacementGroupCleaner``), otherwise guesses the cluster and fails when several Ray
    instances run on one machine; so the GCS port is chosen here and ``RAY_ADDRESS`` is given to
    every worker. ``kwargs`` go to ``ray.init`` (a ``runtime_env`` is merged).
    """
    import ray
    from ray._private.services import get_node_ip_address

    port = _free_port()
    os.environ["RAY_GCS_SERVER_PORT"] = str(port)
    try:
        runtime_env = dict(kwargs.pop("runtime_env", None) or {})
        env_vars = {**runtime_env.get("env_vars", {}),
                    "RAY_ADDRESS": f"{get_node_ip_address()}:{port}"}
        ray.init(address="local", runtime_env={**runtime_env, "env_vars": env_vars}, **kwargs)
    finally:
        del os.environ["RAY_GCS_SERVER_PORT"]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def gpus_available() -> bool:
    """Whether the Ray cluster (or, without Ray, this machine) has at least one GPU."""
    import ray

    if ray.is_initialized():
        return ray.cluster_resources().get("GPU", 0) >= 1
    import torch

    return torch.cuda.is_available()
