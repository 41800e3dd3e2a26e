"""A "remote" head for the cluster launcher: sshd on 127.0.0.1 in its own PID and mount namespaces.

Everything the launcher starts over ssh (Ray, the MLflow server, the submitted sweep) runs inside
that PID namespace, so ``ray stop`` there stops only the head's Ray, ``ray.init(address="auto")``
finds only the head's Ray, and killing sshd (the namespace's first process) ends all of it. In the
mount namespace the head gets a fresh home (``/root`` bound to a test folder, like a new machine)
and its own ``/tmp/ray``, so nothing is written to this machine's home or Ray folders.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

PACKAGES = {"sshd": ("/usr/sbin/sshd", "openssh-server"), "rsync": ("rsync", "rsync"),
            "nc": ("nc", "netcat-openbsd")}


@dataclasses.dataclass
class SshHead:
    """How to reach the test head and where its files are on this machine."""

    port: int
    key: Path          # the client's private key
    home: Path         # the head's home folder (``~`` over ssh)
    ray_tmp: Path      # the head's /tmp/ray
    log: Path          # sshd's log
    pid: int           # sshd, first process of the head's PID namespace

    def ssh(self, command: str, timeout: float = 300) -> subprocess.CompletedProcess:
        """Run ``command`` on the head the way the launcher does (login shell)."""
        return subprocess.run(
            ["ssh", "-i", str(self.key), "-o", "StrictHostKeyChecking=no",
             "-o", f"UserKnownHostsFile={os.devnull}", "-o", "IdentitiesOnly=yes",
             "-o", f"ProxyCommand=nc 127.0.0.1 {self.port}", "root@127.0.0.1",
             f"bash --login -c {command!r}"],
            capture_output=True, text=True, timeout=timeout)


def ensure_packages() -> None:
    """Install openssh-server, rsync and netcat with apt-get when they are missing."""
    missing = [pkg for tool, pkg in PACKAGES.values() if shutil.which(tool) is None]
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.fail(f"the launcher test needs {', '.join(missing)} (root with apt-get installs them)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing]
    if subprocess.run(cmd, env=env, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=True, capture_output=True)
        subprocess.run(cmd, env=env, check=True, capture_output=True)


def _free_port() -> int:
    """A TCP port nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def free_port() -> Callable[[], int]:
    """A function returning a TCP port nothing listens on now."""
    return _free_port


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "wsss-test",
                    "-f", str(path)], check=True)


def _sshd_config(root: Path, port: int) -> Path:
    config = root / "sshd_config"
    config.write_text(f"""ListenAddress 127.0.0.1
Port {port}
HostKey {root / 'host_key'}
PidFile {root / 'sshd.pid'}
AuthorizedKeysFile {root / 'authorized_keys'}
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
AllowUsers root
MaxStartups 100
MaxSessions 100
""")
    return config


def _fresh_home(home: Path) -> None:
    """A home like a new machine's: Debian's skeleton (``.profile`` sources ``.bashrc``)."""
    home.mkdir()
    for name in (".profile", ".bashrc"):
        if Path("/etc/skel", name).is_file():
            shutil.copyfile(Path("/etc/skel", name), home / name)


def _keep_from_home(home: Path) -> list[str]:
    """Mounts that keep this Python visible in the fresh home when it lives in the real one
    (e.g. ``/root/.pyenv``): the head reuses this machine's interpreter and virtual environment."""
    python = Path(os.path.realpath(sys.executable))
    real_home = Path("/root")
    if not python.is_relative_to(real_home):
        return []
    top = python.relative_to(real_home).parts[0]
    return [f"mkdir -p {home / top}", f"mount --bind {real_home / top} {home / top}"]


def _pid_namespace(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None


def _processes_in(namespace: str) -> list[int]:
    """Pids (as seen here) of the processes still in PID namespace ``namespace``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and _pid_namespace(int(entry.name)) == namespace:
            pids.append(int(entry.name))
    return pids


def _wait_for_ssh(head: SshHead, proc: subprocess.Popen, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"sshd exited ({proc.returncode}): {head.log.read_text()}")
        try:
            if head.ssh("true", timeout=60).returncode == 0:
                return
        except subprocess.TimeoutExpired:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"sshd on 127.0.0.1:{head.port} did not answer: {head.log.read_text()}")


def _stop(proc: subprocess.Popen, namespace: str | None) -> None:
    """Stop sshd and with it every process of the head's namespace; fail if one survives."""
    if proc.poll() is None:
        # To the whole group: unshare's parent ignores SIGTERM while it waits for its child, so
        # sshd (the namespace's init) must get it; its end ends every process of the namespace.
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
    if namespace is None:
        return
    deadline = time.monotonic() + 120  # a hang guard, generous for a loaded machine
    while _processes_in(namespace) and time.monotonic() < deadline:
        time.sleep(0.5)
    survivors = _processes_in(namespace)
    for pid in survivors:
        os.kill(pid, signal.SIGKILL)
    assert not survivors, f"head processes outlived sshd: {survivors}"


@pytest.fixture
def ssh_head(tmp_path_factory) -> Iterator[SshHead]:
    """sshd on 127.0.0.1 (a free port, reached through ``nc``) with a host key and a client key
    made here; the head's processes, keys and folders are removed afterwards, also on failure."""
    ensure_packages()
    root = tmp_path_factory.mktemp("ssh-head")
    _keygen(root / "host_key")
    _keygen(root / "client_key")
    shutil.copyfile(root / "client_key.pub", root / "authorized_keys")
    home, ray_tmp = root / "home", root / "ray-tmp"
    _fresh_home(home)
    ray_tmp.mkdir()
    port = _free_port()
    config = _sshd_config(root, port)
    Path("/run/sshd").mkdir(exist_ok=True)
    Path("/tmp/ray").mkdir(exist_ok=True)
    inner = " && ".join([*_keep_from_home(home), f"mount --rbind {home} /root",
                         f"mount --bind {ray_tmp} /tmp/ray", f"exec /usr/sbin/sshd -D -e -f {config}"])
    log = root / "sshd.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(["unshare", "--pid", "--fork", "--kill-child", "--mount-proc",
                                 "--mount", "--propagation", "private", "sh", "-c", inner],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    head = SshHead(port, root / "client_key", home, ray_tmp, log, proc.pid)
    namespace = None
    try:
        for _ in range(100):
            children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
            child = children.read_text().split() if children.exists() else []
            if child:
                namespace = _pid_namespace(int(child[0]))
                break
            time.sleep(0.1)
        _wait_for_ssh(head, proc)
        yield head
    finally:
        _stop(proc, namespace)
        shutil.rmtree(root, ignore_errors=True)
