"""Two executors of the same steps: a loop in this process, or Ray Data stages.

A pipeline is a list of :class:`Step` (``wsss.pipeline.steps``) applied in order to batches
of sample references. ``LocalExecutor`` runs them one batch at a time in this process
(``wsss cam``, ``refine``, ``eval``, ``predict``); ``RayDataExecutor`` runs each as a Ray Data
stage (``wsss pseudo-label``, the CRF sweep's rescoring): plain steps as CPU tasks, model steps
in an actor pool, streaming with Ray Data's backpressure. Both yield the last step's output
batches, so the driver's bookkeeping (``wsss.pipeline.report.collect``) is the same.

The actor pool never takes every CPU: at least ``RESERVED_TASK_CPUS`` stay free for the decode
and write tasks (actors on CPU get a fractional share when needed), the known way for an actor
pool to starve its own input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import ray
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
from tqdm import tqdm

from wsss.data.reader import SampleRef
from wsss.pipeline.steps import Step, ref_columns, ref_rows

RESERVED_TASK_CPUS = 1.0
DECODERS_PER_WORKER = 2  # concurrent decode tasks per map actor: enough to keep it fed

Batch = dict[str, np.ndarray]


@dataclass(frozen=True)
class WorkerPlan:
    """Resources of the model step's actor pool: ``workers`` actors of ``cpus`` / ``gpus``
    each, ``threads`` torch threads each."""

    workers: int
    cpus: float
    gpus: float
    threads: int

    @property
    def device(self) -> str:
        return "cuda" if self.gpus > 0 else "cpu"


def plan_workers(cluster: dict[str, float], cam_workers: int | None = None,
                 gpus_per_worker: float = 1.0) -> WorkerPlan:
    """Size the actor pool from the cluster's resources (``ray.cluster_resources()``).

    ``cam_workers=None``: one actor per GPU (``gpus_per_worker`` each), or one per two CPUs.
    Raises ValueError for fewer than one worker or a cluster with too few CPUs.
    """
    cpus, gpus = float(cluster.get("CPU", 0)), float(cluster.get("GPU", 0))
    use_gpu = gpus_per_worker > 0 and gpus >= gpus_per_worker
    if cam_workers is not None:
        workers = cam_workers
    elif use_gpu:
        workers = int(gpus // gpus_per_worker)
    else:
        workers = max(1, int(cpus // 2))
    if workers < 1:
        raise ValueError(f"--cam-workers must be >= 1, got {workers}")
    spare = cpus - RESERVED_TASK_CPUS
    if spare <= 0:
        raise ValueError(f"the cluster has {cpus:g} CPU(s); pseudo-labelling needs at least "
                         f"{RESERVED_TASK_CPUS + 1:g} (map workers + decode/CRF tasks)")
    share = min(1.0 if use_gpu else max(1.0, math.floor(spare / workers)), spare / workers)
    # Torch threads: a CPU actor's fair share of all cores, the reserved one included. The
    # decode and CRF tasks need far less CPU than the forward pass, so the actor's threads
    # use that core whenever the tasks leave it idle; the reservation still keeps the tasks
    # schedulable (a scheduling guarantee, not a thread limit).
    threads = max(1, int(share if use_gpu else cpus // workers))
    return WorkerPlan(workers, round(share, 3), gpus_per_worker if use_gpu else 0.0, threads)


@dataclass(frozen=True)
class LocalExecutor:
    """Runs the steps in this process, ``batch_size`` samples at a time, with a progress bar
    named ``desc``; model steps are built once, on ``device``."""

    batch_size: int = 8
    desc: str = "images"
    device: str = "cpu"

    def run(self, refs: Sequence[SampleRef], steps: Sequence[Step]) -> Iterator[Batch]:
        """The last step's output batch of each input batch, in input order."""
        calls = [self._callable(step) for step in steps]
        with tqdm(total=len(refs), unit="img", desc=self.desc, disable=None) as progress:
            for start in range(0, len(refs), self.batch_size):
                batch = ref_columns(refs[start:start + self.batch_size])
                for call in calls:
                    batch = call(batch)
                progress.update(len(batch["id"]))
                yield batch

    def _callable(self, step: Step) -> Callable[[Batch], Batch]:
        if step.model:
            return step.fn(**step.kwargs, device=self.device)
        return lambda batch: step.fn(batch, **step.kwargs)


@dataclass(frozen=True)
class RayDataExecutor:
    """Runs each step as a Ray Data stage: plain steps as 1-CPU tasks, the model step in an
    actor pool sized by ``plan`` (put the checkpoint in the object store once: its
    constructor's ``state`` may be a Ray object reference).

    Inside a Ray Tune trial (``placement_group``, the trial's group), every task stays in the
    group and Ray Data plans for the group's CPUs only, so a trial never waits for CPUs it did
    not reserve. ``preserve_order`` keeps the output blocks in input order.
    """

    batch_size: int = 8
    plan: WorkerPlan | None = None
    placement_group: Any = None
    preserve_order: bool = False

    def run(self, refs: Sequence[SampleRef], steps: Sequence[Step]) -> Iterator[Batch]:
        """The output blocks of the last step as they finish (Ray must be initialised)."""
        ds = ray.data.from_items(ref_rows(refs), override_num_blocks=max(
            1, math.ceil(len(refs) / self.batch_size)))
        place = _placement_group_args(self.placement_group)
        # Without a plan (rescoring saved maps inside a sweep trial's group, which may hold a
        # single CPU) the model step's actor and the tasks take half a CPU each, so the actor
        # never leaves its own input tasks without room.
        task_cpus = 0.5 if self.plan is None and any(step.model for step in steps) else 1.0
        for index, step in enumerate(steps):
            ds = self._stage(ds, step, index, place, task_cpus)
        ds.context.execution_options.preserve_order = self.preserve_order
        if self.placement_group is not None:  # plan for the group's CPUs, not the cluster's
            cpus = sum(b.get("CPU", 0) for b in self.placement_group.bundle_specs)
            ds.context.execution_options.resource_limits = ray.data.ExecutionResources(cpu=cpus)
        yield from ds.iter_batches(batch_size=None, batch_format="numpy")

    def _stage(self, ds: Any, step: Step, index: int, place: dict[str, Any],
               task_cpus: float) -> Any:
        if step.model:
            plan = self.plan or WorkerPlan(1, 0.5, 0.0, 1)
            return ds.map_batches(step.fn, batch_size=self.batch_size,
                                  compute=ray.data.ActorPoolStrategy(size=plan.workers),
                                  fn_constructor_kwargs={**step.kwargs, "device": plan.device,
                                                         "threads": plan.threads},
                                  num_cpus=plan.cpus, num_gpus=plan.gpus or None, **place)
        extra: dict[str, Any] = {}
        if index == 0 and self.plan is not None:
            # A bounded decode pool (its size differs from the actor pool's) also keeps Ray
            # Data from fusing decoding into the map actors: they only compute maps.
            extra["compute"] = ray.data.TaskPoolStrategy(
                size=DECODERS_PER_WORKER * self.plan.workers)
        return ds.map_batches(step.fn, fn_kwargs=step.kwargs, batch_size=self.batch_size,
                              num_cpus=task_cpus, **extra, **place)


def _placement_group_args(group: Any) -> dict[str, Any]:
    """Keep the tasks in the caller's placement group (a Tune trial's), if it has one.

    Ray Data schedules tasks with its own strategy (SPREAD), which would take them out of the
    group: they would wait for CPUs outside it, which other trials may hold.
    """
    if group is None:
        return {}

    return {"scheduling_strategy": PlacementGroupSchedulingStrategy(
        group, placement_group_capture_child_tasks=True)}
