"""benchmarks/gpu_check.py --quick runs on the CPU with Ray, MLflow, Optuna and pydensecrf
unimportable (the GPU check machine has none of them) and writes its results under $OUT."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"
BLOCKED = ("ray", "mlflow", "optuna", "pydensecrf")
# sys.modules[name] = None makes `import name` (and `import name.sub`) raise ImportError
RUN_BLOCKED = ("import runpy, sys\n"
               f"for name in {BLOCKED!r}:\n"
               "    sys.modules[name] = None\n"
               "sys.argv = [sys.argv[1], *sys.argv[2:]]\n"
               "runpy.run_path(sys.argv[0], run_name='__main__')\n")


@pytest.mark.slow
def test_quick_run_on_cpu_without_ray_mlflow_optuna_pydensecrf(tmp_path):
    out = tmp_path / "out"
    written = tmp_path / "results" / "gpu.md"
    before = sorted((REPO / "benchmarks" / "results").iterdir())
    env = {**os.environ, "OUT": str(out), "OMP_NUM_THREADS": "2", "PYTHONPATH": ""}
    done = subprocess.run([sys.executable, "-c", RUN_BLOCKED, str(SCRIPT), "--quick",
                           "--device", "cpu", "--write-results", str(written)],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "gpu_check.json").read_text())
    assert results["environment"]["quick"] and results["environment"]["device"] == "cpu"
    checks = {r["check"]: r for r in results["correctness"]}
    assert "maps gradcam bf16 vs CPU float64" in checks and "random walk fp32 vs CPU float64" \
        in checks
    # CPU against CPU: every check that ran passes (pytorch-grad-cam may be skipped)
    assert all(r["pass"] is not False for r in results["correctness"]), results["correctness"]
    assert sum(r["pass"] is True for r in results["correctness"]) >= 15
    variants = {r["variant"] for r in results["speed"]}
    assert {"forward fp32", "cam bf16", "gradcam bf16+cl", "train-cls bf16+cl",
            "train-seg fp32"} <= variants
    assert all(r["per_s"] > 0 and r["peak_gib"] is None for r in results["speed"])
    assert len(results["targets"]) == 3
    # the markdown names the device and says it is not a measurement; the table comes last
    report = written.read_text()
    assert report == (out / "gpu_check.md").read_text() and "Quick mode" in report
    assert results["environment"]["torch"] in report
    assert "quick mode" in done.stdout.strip().splitlines()[-1]
    assert sorted((REPO / "benchmarks" / "results").iterdir()) == before  # nothing else written
