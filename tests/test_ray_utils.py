"""A local Ray started by ``wsss.ray_utils.start_local_ray`` is the one its own processes find.

Ray Train's placement-group cleaner (a detached actor) looks up its cluster like
``ray.init(address=None)`` does. When the machine-wide lookup file names another live cluster,
a plain ``ray.init`` instance's processes find *that* cluster: the cleaner then hears that its
controller does not exist and removes the live run's placement group, killing its workers. The
negative control shows the lookup going wrong without the fix, so the test can fail.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OTHER_CLUSTER = "203.0.113.7:6379"  # what the machine-wide file names: another instance

PROBE = """
import json, sys, ray
from wsss.ray_utils import init_ray, start_local_ray

args = dict(num_cpus=1, include_dashboard=False, log_to_driver=False)
if sys.argv[1] == "wsss":
    start_local_ray(**args)
elif sys.argv[1] == "init_ray":
    init_ray(num_cpus=1)
else:
    ray.init(address="local", **args)

@ray.remote(num_cpus=0)
def lookup():
    import os
    from ray._private.services import canonicalize_bootstrap_address
    import logging
    import ray.train.v2._internal.execution.context as train_context
    # the cleaner's lookup (ray.util.state), the worker's niceness and $RAY_ADDRESS, and
    # whether Ray Train's per-report line ("Reporting training result N") would print
    return (canonicalize_bootstrap_address(None), os.nice(0), os.environ.get("RAY_ADDRESS"),
            train_context.logger.level)

@ray.remote(num_cpus=1)
def torch_threads():
    import torch
    return torch.get_num_threads()

found, niceness, env, report_level = ray.get(lookup.remote())
print(json.dumps({"own": ray.get_runtime_context().gcs_address, "found": found,
                  "niceness": niceness, "ray_address": env, "report_level": report_level,
                  "torch_threads": ray.get(torch_threads.remote())}))
ray.shutdown()
"""


@pytest.fixture
def machine_tmp():
    """Stands for /tmp: the machine-wide folder whose ``ray/ray_current_cluster`` names the
    newest cluster (short: Ray's socket paths under it must stay within 107 bytes)."""
    shared = Path(tempfile.mkdtemp(prefix="m-", dir="/tmp"))
    (shared / "ray").mkdir()
    (shared / "ray" / "ray_current_cluster").write_text(OTHER_CLUSTER)
    yield shared
    shutil.rmtree(shared, ignore_errors=True)


def _probe(kind: str, shared: Path, tmp_path: Path) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "WSSS_RAY_SESSION_ROOT", "RAY_worker_niceness",
                        "OMP_NUM_THREADS")}  # Ray sets it in each worker: that is tested
    env.update(RAY_TMPDIR=str(shared), PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", PROBE, kind], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_processes_of_a_local_ray_find_their_own_cluster(machine_tmp, tmp_path):
    """... and run at the priority of the command that started them (Ray's default, niceness
    15, lets any normal-priority process on the machine starve them)."""
    plain = _probe("plain", machine_tmp, tmp_path)
    assert plain["found"] == OTHER_CLUSTER  # the fault: a plain instance's workers look away
    base = os.nice(0)  # this test's own niceness (a run under `nice` starts higher)
    assert plain["niceness"] == min(base + 15, 19)
    assert plain["report_level"] == logging.NOTSET  # Ray Train's report lines would print
    ours = _probe("wsss", machine_tmp, tmp_path)
    assert ours["found"] == ours["own"] != OTHER_CLUSTER
    assert ours["niceness"] == base
    # the session files stay in the usual Ray folder; the machine-wide file is left alone
    sessions = sorted((machine_tmp / "ray").glob("session_2*"))
    assert len(sessions) == 2, sessions
    assert (machine_tmp / "ray" / "ray_current_cluster").read_text() == OTHER_CLUSTER


@pytest.mark.slow
def test_workers_of_init_ray_name_their_cluster_in_ray_address(machine_tmp, tmp_path):
    """A lookup with ``$RAY_ADDRESS`` set goes straight there: Ray's own lookups in a worker
    (the placement-group cleaner's, every few seconds) never list the other Ray instances on
    the machine, so they never print "Found multiple active Ray instances"."""
    ours = _probe("init_ray", machine_tmp, tmp_path)
    assert ours["ray_address"] == ours["found"] == ours["own"] != OTHER_CLUSTER
    # Ray Train's report lines (a logger named by a file path, which Ray Train's own level
    # filter does not reach) are dropped in every worker of a quiet job (a plain Ray keeps
    # them: see the test above)
    assert ours["report_level"] == logging.WARNING
    assert (machine_tmp / "ray" / "ray_current_cluster").read_text() == OTHER_CLUSTER
    # a 1-CPU task runs torch on one thread, as Ray means it to ($OMP_NUM_THREADS=1), though
    # the setup hook ran in its process first (a hook that imported torch left it on every
    # core: two trials side by side on 2 cores then ran 5-10 times slower per epoch)
    assert os.cpu_count() < 2 or ours["torch_threads"] == 1


def test_a_local_start_that_times_out_under_load_is_retried(monkeypatch, tmp_path):
    """Ray's raylet has 30 s to register; on a saturated machine the start is tried again
    (what the failed start left is shut down first); other errors are raised at once."""
    import types

    import ray

    from wsss import ray_utils

    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    monkeypatch.setenv(ray_utils.SESSION_ROOT_ENV, str(tmp_path / "sessions"))
    calls = []

    def init(**kwargs):
        calls.append("init")
        if calls.count("init") == 1:
            raise Exception("The current node timed out during startup. This could happen ...")

    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(ray, "shutdown", lambda: calls.append("shutdown"))
    monkeypatch.setattr(ray, "get_runtime_context",
                        lambda: types.SimpleNamespace(gcs_address="127.0.0.1:6379"))
    assert ray_utils.start_local_ray() == "127.0.0.1:6379"
    assert calls == ["init", "shutdown", "init"]

    def broken(**kwargs):
        raise Exception("something else")

    monkeypatch.setattr(ray, "init", broken)
    with pytest.raises(Exception, match="something else"):
        ray_utils.start_local_ray()


def test_ray_progress_lines_are_quiet_unless_verbose(monkeypatch):
    """Ray Train logs warnings only by default; --verbose (``$WSSS_VERBOSE``) brings back its
    per-report and per-checkpoint lines, on every worker of the job."""
    from wsss.cli import build_parser, main
    from wsss.ray_utils import VERBOSE_ENV, train_logging, verbose

    monkeypatch.delenv(VERBOSE_ENV, raising=False)
    assert not verbose() and train_logging().log_level == "WARNING"
    monkeypatch.setenv(VERBOSE_ENV, "1")
    assert verbose() and train_logging().log_level == "INFO"
    monkeypatch.delenv(VERBOSE_ENV)
    assert build_parser().parse_args(["train-cls", "--verbose"]).verbose
    main(["eval", "--masks", "/nonexistent/masks", "--data", "/nonexistent", "--verbose"])
    assert verbose()  # the flag set it for this process and the Ray workers it starts
