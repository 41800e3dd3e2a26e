"""Starting or joining Ray, and choosing devices.

A Ray instance started here must be the one its own processes find. Ray's processes that look
up "their" cluster without being told its address (Ray Train's placement-group cleaner asks
the state API through ``ray.util.state``) resolve it like ``ray.init(address=None)`` does: the
``RAY_ADDRESS`` variable, else the address in ``<ray temp dir>/ray_current_cluster``, which names
the newest cluster started by ``ray start`` on the machine. When other Ray instances run on the
machine (another user's job, another test process), that file names one of them: the cleaner
then asks the wrong cluster whether its Train controller is alive, hears "no such actor", and
removes the live run's placement group, which kills its workers mid-run ("Destroying worker
since its placement group was removed"). :func:`start_local_ray` therefore gives each local
instance its own lookup folder (``$RAY_TMPDIR``, inherited by every process of the instance)
whose ``ray/ray_current_cluster`` names that instance; session files and logs stay in Ray's
usual temp folder.

That lookup still lists every running GCS process (``pgrep``) first, and warns "Found multiple
active Ray instances" whenever it finds more than one; the cleaner of every Ray Train run looks
up its cluster every few seconds, so with another Ray on the machine a sweep printed that
warning (or, when the lookup failed, its traceback) hundreds of times. A lookup with
``$RAY_ADDRESS`` set takes that address without looking further, so every worker process of a
job started by :func:`init_ray` sets it to its own cluster's address first thing
(:func:`setup_worker`, Ray's ``worker_process_setup_hook``).

Ray starts its worker processes (training workers, map actors, tasks) at niceness 15 (its
``worker_niceness`` setting). On a machine shared with other work, any normal-priority process
then takes nearly all the CPU from them (beside 4 busy processes on 2 cores a niceness-15
worker gets about 2 % of a core) and a training run crawls. A local instance started here runs
its workers at normal priority, as a plain PyTorch script runs (``RAY_worker_niceness=0``
unless the variable is already set).

This module is the worker setup hook's, imported by every Ray worker process before its first
task, so it must not import torch: torch fixes its thread count from ``$OMP_NUM_THREADS`` when
first imported, and Ray sets that variable to the CPUs it assigned only when the task starts.
Imported earlier, torch ran a 1-CPU training worker on every core of the machine, and two
trials side by side on 2 cores took 5-10 times longer per epoch than one alone.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import ray
import ray.train

# Ray's temp root for sessions and logs, as it was before this process pointed $RAY_TMPDIR at a
# lookup folder of its own (children inherit it, so nested starts keep the same root).
SESSION_ROOT_ENV = "WSSS_RAY_SESSION_ROOT"
ADDRESS_FILE = "ray_current_cluster"  # Ray's own name (ray._private.utils.get_ray_address_file)
WORKER_NICENESS_ENV = "RAY_worker_niceness"  # Ray's config override (ray_constants)
# Ray gives its raylet a fixed 30 s to register with the GCS (ray._private.node); on a machine
# whose CPUs are all busy that can run out. Such a start is retried, up to START_ATTEMPTS.
STARTUP_TIMEOUT = "timed out during startup"
SETUP_HOOK = f"{__name__}.setup_worker"
TRAIN_REPORT_MODULE = "ray.train.v2._internal.execution.context"  # logs every report at INFO  # each worker process of a job init_ray starts
VERBOSE_ENV = "WSSS_VERBOSE"  # "1": Ray Train's and Tune's own progress lines are shown
START_ATTEMPTS = 3


def init_ray(address: str | None = None, num_cpus: int | None = None,
             log_to_driver: bool = True) -> None:
    """Join the cluster at ``address`` (``auto`` under ``ray submit``), else start a local Ray.
    ``log_to_driver``: print the worker processes' output here (else it stays in Ray's
    session logs).

    A no-op when Ray is already initialised (a sweep trial, a test fixture). Quiet by default:
    every Ray worker of the job logs warnings and errors only (Ray's ``LoggingConfig``);
    with ``$WSSS_VERBOSE`` it logs INFO too, and the variable reaches every worker (a job-wide
    runtime environment), so a verbose run is verbose on every node.
    """
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    runtime_env: dict[str, Any] = {"worker_process_setup_hook": SETUP_HOOK}
    if verbose():
        runtime_env["env_vars"] = {VERBOSE_ENV: "1"}
    env: dict[str, Any] = {"runtime_env": runtime_env}
    if not verbose():
        env["logging_config"] = ray.LoggingConfig(log_level="WARNING")  # every worker's logs
    if address:
        ray.init(address=address, log_to_driver=log_to_driver, **env)
    else:
        start_local_ray(num_cpus=num_cpus, log_to_driver=log_to_driver, **env)


def setup_worker() -> None:
    """Ray worker setup hook.

    ``$RAY_ADDRESS`` = the address of the cluster this worker belongs to, so that Ray's own
    lookups in the worker (Ray Train's placement-group cleaner asking the state API) go there
    directly instead of listing every Ray on the machine.

    Unless :func:`verbose`, Ray Train's per-report line ("Reporting training result N: ...",
    one per worker and epoch) is dropped: its logger is named by its module's file path, not
    ``ray.train...``, so Ray Train's ``LoggingConfig`` level does not reach it.
    """
    os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
    if not verbose():
        logging.getLogger(_train_report_logger()).setLevel(logging.WARNING)


def _train_report_logger() -> str:
    """Name of the logger of Ray Train's report lines: the file path of
    ``ray.train.v2._internal.execution.context``."""
    spec = importlib.util.find_spec(TRAIN_REPORT_MODULE)
    if spec is None or spec.origin is None:
        raise ImportError(f"{TRAIN_REPORT_MODULE} not found: Ray Train's layout changed")
    return spec.origin


def verbose() -> bool:
    """Whether Ray Train's and Tune's own progress lines are wanted (``$WSSS_VERBOSE=1``, set
    by ``--verbose``); quiet by default: warnings and errors only."""
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def train_logging() -> ray.train.LoggingConfig:
    """Ray Train's console logging: its INFO lines (worker group start, every report and
    checkpoint) only when :func:`verbose`."""
    return ray.train.LoggingConfig(log_level="INFO" if verbose() else "WARNING")


def start_local_ray(**init_args: Any) -> str:
    """Start a new local Ray instance that its own processes can find; returns its address.

    ``init_args`` go to ``ray.init`` (``address`` is always ``"local"``: never join another
    instance found on this machine). Sets ``$RAY_TMPDIR`` of this process (and so of every Ray
    process it starts) to a fresh lookup folder whose ``ray/ray_current_cluster`` holds the new
    instance's GCS address, and runs its workers at normal priority (``$RAY_worker_niceness``
    0 unless set); see the module docstring for why. A start that times out while the raylet
    registers (a machine under heavy load) is retried, :data:`START_ATTEMPTS` in all.
    """
    lookup = prepare_local_ray()
    for attempt in range(1, START_ATTEMPTS + 1):
        try:
            ray.init(address="local", _temp_dir=os.environ[SESSION_ROOT_ENV], **init_args)
            break
        except Exception as err:  # Ray raises a bare Exception for this timeout
            if STARTUP_TIMEOUT not in str(err) or attempt == START_ATTEMPTS:
                raise
            ray.shutdown()  # what the timed-out start left running
    address = ray.get_runtime_context().gcs_address
    (lookup / ADDRESS_FILE).write_text(address)
    return address


def prepare_local_ray() -> Path:
    """Prepare this process's environment, inherited by every Ray instance it starts afterwards
    (``ray.init`` or ``ray.cluster_utils.Cluster``): ``$RAY_TMPDIR`` points at a fresh lookup
    folder, and ``$RAY_worker_niceness`` is 0 unless set (see the module docstring). Returns the
    folder's ``ray/`` subfolder, where Ray's address lookup reads ``ray_current_cluster``, so
    that the instance's processes never look in the machine-wide folder other Ray users share.
    """
    os.environ.setdefault(SESSION_ROOT_ENV, _default_ray_temp_dir())
    os.environ.setdefault(WORKER_NICENESS_ENV, "0")
    lookup = Path(tempfile.mkdtemp(prefix="wsss-ray-"))
    os.environ["RAY_TMPDIR"] = str(lookup)
    (lookup / "ray").mkdir()
    return lookup / "ray"


def _default_ray_temp_dir() -> str:
    """Ray's default temp root (``$RAY_TMPDIR``, else ``$TMPDIR``, else /tmp, + ``/ray``), as
    ``ray._common.utils.get_default_ray_temp_dir`` computes it."""
    base = os.environ.get("RAY_TMPDIR") or os.environ.get("TMPDIR") or "/tmp"
    return os.path.join(base, "ray")


def gpus_available() -> bool:
    """Whether the Ray cluster this process joined (:func:`init_ray`) has at least one GPU.

    Raises:
        ray.exceptions.RaySystemError: Ray is not initialised.
    """
    return ray.cluster_resources().get("GPU", 0) >= 1
