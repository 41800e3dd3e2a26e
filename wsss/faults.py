"""Fault injection points: a named place in the code where a test can kill the process.

Fault-tolerance claims (a killed Ray Train worker resumes without logging an epoch twice or
losing one) are tested by killing a worker at an exact point rather than at a random moment.
Set ``$WSSS_FAULT`` to ``<point>:<step>:<marker file>`` in the environment of the process (for
Ray workers: of the process that starts Ray); the first time the code passes ``<point>`` at
``<step>`` it creates the marker file and SIGKILLs its own process. A marker that exists
disarms the fault, so the restarted process runs on (and of several processes passing the
point, only the one that created the marker dies). Without the variable a point costs one lookup.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

FAULT_ENV = "WSSS_FAULT"


def fault_point(point: str, step: int) -> None:
    """Kill this process (SIGKILL, no clean-up) if ``$WSSS_FAULT`` arms ``point`` at ``step``.

    Raises ValueError when the variable is set but not ``<point>:<step>:<marker file>``.
    """
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    try:
        name, at, marker = spec.split(":", 2)
        armed_step = int(at)
    except ValueError as err:
        raise ValueError(f"${FAULT_ENV}={spec!r}: expected <point>:<step>:<marker file>") from err
    if name != point or armed_step != step:
        return
    Path(marker).parent.mkdir(parents=True, exist_ok=True)
    try:  # exclusive creation: of several processes passing the point, one dies
        with open(marker, "x", encoding="utf-8") as handle:
            handle.write(f"{point} {step} pid {os.getpid()}\n")
    except FileExistsError:
        return
    os.kill(os.getpid(), signal.SIGKILL)
