"""pydensecrf's mean-field inference, run in a warm child process so that a native crash
(segfault, abort) fails one call instead of killing the stage that made it.

pydensecrf is C++: a memory error there aborts the whole Python process, taking every other
image of a batch stage with it. :class:`NativeWorker` keeps one child process per calling
process and sends it each call over a socket (``multiprocessing.connection.Connection``: pickled
calls and results); when the child dies the call raises :class:`NativeCrash` naming the signal,
and the next call starts a new child.

The child is a fresh interpreter started by ``subprocess`` (fork + immediate exec, like
multiprocessing's "spawn" start method): it inherits no threads and no locks. The callers are
Ray workers, Ray Train workers and the ``wsss`` driver, all with threads (gRPC, Ray's I/O,
torch's pools); ``fork`` without exec would copy locks those threads hold and can deadlock the
child. multiprocessing's "spawn" and "forkserver" are not used because their children re-run the
caller's main module: a script that calls the CRF outside an ``if __name__ == "__main__"`` guard
then fails (RuntimeError), and in a Ray worker every child would import Ray again. Starting the
child costs well under a second (Python, numpy, pydensecrf), once per calling process and after a
crash; it then stays warm.

This module imports only numpy (and pydensecrf when a call runs): it is what the child loads.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Callable

import numpy as np

from wsss.errors import WsssError

# tests: a child process aborts on the call whose first array has this sha1 (of its bytes)
CRASH_ENV = "WSSS_NATIVE_CRASH_SHA1"


class NativeCrash(WsssError, RuntimeError):
    """The child process running a native call died (segfault, abort, killed)."""


@dataclass(frozen=True)
class MeanFieldJob:
    """One dense CRF: what crosses the process boundary (C-contiguous arrays, plain numbers).

    ``image`` RGB uint8 [H, W, 3]; ``unary`` float32 [K, H * W] energies (-log p);
    ``gaussian`` (sxy px, compat); ``bilateral`` (sxy px, srgb RGB units, compat).
    """

    image: np.ndarray
    unary: np.ndarray
    gaussian: tuple[float, float]
    bilateral: tuple[float, float, float]
    iterations: int


def mean_field(job: MeanFieldJob) -> np.ndarray:
    """pydensecrf's ``DenseCRF2D`` inference (Kraehenbuehl & Koltun, 2011) in this process:
    Potts Gaussian and bilateral kernels; returns float32 [K, H * W] distributions.

    No checks: callers keep to ``wsss.crf_limits`` (``wsss.core.masks.dense_crf`` does).
    """
    import pydensecrf.densecrf as dcrf

    height, width = job.image.shape[:2]
    crf = dcrf.DenseCRF2D(width, height, job.unary.shape[0])
    crf.setUnaryEnergy(job.unary)
    crf.addPairwiseGaussian(sxy=job.gaussian[0], compat=job.gaussian[1])
    crf.addPairwiseBilateral(sxy=job.bilateral[0], srgb=job.bilateral[1], rgbim=job.image,
                             compat=job.bilateral[2])
    return np.asarray(crf.inference(job.iterations), dtype=np.float32)


class NativeWorker:
    """A warm child process that runs ``fn(*args)`` calls one at a time (thread-safe).

    ``name`` names the work in crash messages: ``"<name> crashed (SIGABRT)"``.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._process: subprocess.Popen | None = None
        self._conn: Connection | None = None
        self._owner = 0  # pid that started the child (a forked copy must start its own)

    @property
    def pid(self) -> int | None:
        """The process id of the current child (None before the first call and after a crash
        or ``close``)."""
        return self._process.pid if self._process is not None else None

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` in the child (``fn`` and the arguments must pickle); raises what
        ``fn`` raised, or NativeCrash when the child died during the call."""
        with self._lock:
            conn = self._connection()
            try:
                conn.send((fn, args))
                ok, value = conn.recv()
            except (EOFError, OSError):
                raise NativeCrash(f"{self.name} crashed ({self._reap()})") from None
        if not ok:
            raise value
        return value

    def close(self) -> None:
        """Stop the child (the next call starts a new one)."""
        with self._lock:
            if self._conn is not None and self._owner == os.getpid():
                self._conn.close()  # the child reads end-of-file and returns
                try:
                    self._process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self._process.kill()
                    self._process.wait()
            self._process = self._conn = None

    def _connection(self) -> Connection:
        if self._conn is None or self._owner != os.getpid():
            ours, theirs = socket.socketpair()
            with theirs:
                fd = theirs.fileno()
                self._process = subprocess.Popen(
                    [sys.executable, "-c", f"from wsss.core.native_crf import serve; serve({fd})"],
                    pass_fds=[fd], stdin=subprocess.DEVNULL, env=_child_env())
            self._conn, self._owner = Connection(ours.detach()), os.getpid()
        return self._conn

    def _reap(self) -> str:
        """Wait for the dead child; how it ended (``SIGSEGV``, ``exit status 1``)."""
        process, self._process = self._process, None
        self._conn.close()
        self._conn = None
        try:
            code = process.wait(timeout=10)
        except subprocess.TimeoutExpired:  # the socket broke but the child lives on
            process.kill()
            process.wait()
            return "its connection broke; the worker process was stopped"
        if code < 0:
            try:
                return signal.Signals(-code).name
            except ValueError:
                return f"signal {-code}"
        return f"exit status {code}"


def _child_env() -> dict[str, str]:
    """This environment, with this copy of ``wsss`` first on the child's import path."""
    root = str(Path(__file__).resolve().parents[1])
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": root + (os.pathsep + path if path else "")}


def serve(fd: int) -> None:
    """The child's loop on the socket ``fd``: run each ``(fn, args)`` received, send
    ``(True, result)`` or ``(False, exception)`` back; return at end-of-file (the parent
    closed the socket or died)."""
    conn = Connection(fd)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    crash_sha1 = os.environ.get(CRASH_ENV)
    while True:
        try:
            fn, args = conn.recv()
        except EOFError:
            return
        except Exception as err:  # noqa: BLE001 - e.g. a function the child cannot import
            conn.send((False, RuntimeError(f"the worker process cannot load the call: {err}")))
            continue
        if crash_sha1 and _first_array_sha1(args) == crash_sha1:
            os.abort()
        try:
            reply = (True, fn(*args))
        except Exception as err:  # noqa: BLE001 - handed to the caller, who raises it
            reply = (False, err)
        try:
            conn.send(reply)
        except Exception as err:  # noqa: BLE001 - an exception or result that does not pickle
            conn.send((False, RuntimeError(f"{type(err).__name__}: {err}")))


def _first_array_sha1(args: tuple) -> str | None:
    """sha1 of the bytes of the first array among ``args`` (or among a job's fields)."""
    for arg in args:
        values = vars(arg).values() if hasattr(arg, "__dataclass_fields__") else [arg]
        for value in values:
            if isinstance(value, np.ndarray):
                return hashlib.sha1(np.ascontiguousarray(value).tobytes()).hexdigest()
    return None


CRF_WORKER = NativeWorker("dense CRF")
atexit.register(CRF_WORKER.close)  # without it the child still ends: it reads end-of-file
