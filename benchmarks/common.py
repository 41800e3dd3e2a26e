"""What every benchmark script shares: the default dataset, the results file's closing
sections (command, code, machine) and writing it.

A results file must say what made it: the command, the commit (and whether the working tree
held uncommitted changes), the machine and its load. Scripts import this module by name (the
``benchmarks`` folder is on ``sys.path`` when a script in it runs).
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "msrc21"


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else ``platform.processor()``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def code_version() -> str:
    """The commit of the code that runs (``git rev-parse``), with ``+ uncommitted changes``
    when the working tree differs from it; ``unknown`` outside a git checkout."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True,
                              check=True).stdout.strip()

    try:
        commit = git("rev-parse", "--short=10", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", "wsss", "benchmarks",
                    "configs", "sweeps")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + (" + uncommitted changes" if dirty else "")


def machine_lines(command: str, load: tuple[tuple[float, ...], tuple[float, ...]]) -> list[str]:
    """Markdown 'Command' and 'Machine' sections: the command, the code's commit, the CPU,
    torch and Python versions and the load average at the start and the end."""
    return ["## Command", "", "```", command, "```", "", "## Machine", "",
            f"- code: commit {code_version()}",
            f"- nproc: {len(os.sched_getaffinity(0))}", f"- CPU: {cpu_model()}",
            f"- torch {torch.__version__}, Python {platform.python_version()}",
            f"- load average (1, 5, 15 min) at start: {', '.join(f'{v:.2f}' for v in load[0])};"
            f" at end: {', '.join(f'{v:.2f}' for v in load[1])}"]


def publish(report: str, out: Path | None) -> None:
    """Print the markdown ``report``; also write it to ``out`` (atomically) unless None."""
    print(report)
    if out is None:
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(report)
    tmp.replace(out)
    print(f"wrote {out}", file=sys.stderr)
