"""Fixtures for tests against the real embedded lab (namespaces, bridge, sshd, paramiko).

* ``lab_lock`` holds ``/run/labctl-test.lock`` (fcntl.flock) for the whole test: every test that builds
  a lab or touches a lab subnet must use it (directly or through the fixtures below).
* ``make_lab(clients=3)`` writes a lab file with a unique name (``t`` + 6 hex digits) on a test subnet
  (192.168.120.0/24 and up, never the default 192.168.20.0/24) and returns a :class:`LabUnderTest`;
  ``.up()`` brings it up. Every lab it made is taken down after the test, even when the test failed,
  and the test then fails if anything is left (namespace, link, process, mount, state).
* ``netns_lab`` is a running 3-client lab: ``netns_lab.inventory``, ``netns_lab.backend``, ...

The lab is reached with labctl.remote (paramiko, RejectPolicy, pinned host keys), like users do.
"""
from __future__ import annotations

import fcntl
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from labctl import bringup
from labctl.backends import forward_guard
from labctl.backends.netns import NetnsBackend
from labctl.backends.netns.preflight import problems
from labctl.inventory import Inventory
from labctl.lab import load_lab
from tests.procs import live_processes
from tests.requires import missing, require_root

REPO = Path(__file__).resolve().parents[2]
LOCK_FILE = "/run/labctl-test.lock"
STATE_ROOT = Path("/run/labctl")
TEST_SUBNET_BASE = 120  # labs get 192.168.120.0/24, 192.168.121.0/24, ... one per lab in a test


def _lab_ready_or_skip() -> None:
    """The lab preflight (root, sshd, ip, tcpdump): a visible skip here, a failure under CI."""
    found = problems()
    if found:
        missing("what the namespace lab needs", "; ".join(found))


@pytest.fixture
def lab_lock() -> Iterator[None]:
    """Exclusive use of the lab machinery for the duration of one test."""
    require_root()
    with open(LOCK_FILE, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@dataclass
class LabUnderTest:
    """One test lab: its file, name and state, and helpers to drive it through the CLI or in-process."""

    name: str
    lab_file: Path
    clients: int
    state_root: Path = STATE_ROOT
    _backends: list[NetnsBackend] = field(default_factory=list)

    @property
    def state_dir(self) -> Path:
        return self.state_root / self.name

    def backend(self, clients: int | None = None) -> NetnsBackend:
        backend = NetnsBackend(load_lab(self.lab_file, clients=clients), self.state_dir)
        self._backends.append(backend)
        return backend

    def up(self, clients: int | None = None) -> Inventory:
        """What `labctl up` does: the backend brings the lab up, then every node must accept SSH."""
        return bringup.up(self.backend(clients))

    @property
    def inventory(self) -> Inventory:
        return self.backend().inventory()

    def cli(self, *args: str, timeout: float = 60, check: bool = False,
            input: str | None = None) -> subprocess.CompletedProcess:
        """Run ``python labctl.py --lab FILE ARGS...`` and return the finished process."""
        return subprocess.run(self.cli_argv(*args), capture_output=True, text=True, timeout=timeout,
                              check=check, input=input, cwd=REPO)

    def cli_argv(self, *args: str) -> list[str]:
        return [sys.executable, str(REPO / "labctl.py"), "--lab", str(self.lab_file),
                "--state-dir", str(self.state_root), *args]

    def leftovers(self) -> list[str]:
        """Anything of this lab that still exists on the machine (empty after a clean down)."""
        return leftovers(self.name, self.state_dir)


def leftovers(name: str, state_dir: Path) -> list[str]:
    """Namespaces and links named ``NAME-*``, live processes and mounts that mention ``state_dir``.

    (A node's bind mounts live only in its sshd's mount namespace: they show up in /proc/PID/mountinfo
    of that sshd and its sessions until they are gone.)
    """
    found = []
    netns_dir = Path("/run/netns")
    if netns_dir.exists():
        found += [f"netns {p.name}" for p in netns_dir.iterdir() if p.name.startswith(f"{name}-")]
    found += [f"link {p.name}" for p in Path("/sys/class/net").iterdir() if p.name.startswith(f"{name}-")]
    needle = str(state_dir).encode()
    for pid, cmdline, entry in live_processes():
        if needle in cmdline:
            found.append(f"process {pid}: {cmdline[:120]!r}")
        try:
            mounts = (entry / "mountinfo").read_bytes()
        except OSError:
            continue
        if needle + b"/" in mounts:
            found.append(f"mount in the mount namespace of pid {pid}")
    if state_dir.exists():
        found.append(f"state {state_dir}")
    return sorted(set(found))


def write_lab_file(path: Path, name: str, subnet_octet: int, clients: int) -> Path:
    path.write_text(f"name: {name}\nsubnet: 192.168.{subnet_octet}.0/24\n"
                    f"host_address: 192.168.{subnet_octet}.1\nserver_address: 192.168.{subnet_octet}.2\n"
                    f"clients: {clients}\n")
    return path


@pytest.fixture
def make_lab(lab_lock, tmp_path) -> Iterator:
    """Factory of unique test labs; all of them are taken down after the test, whatever happened."""
    _lab_ready_or_skip()
    made: list[LabUnderTest] = []

    def factory(clients: int = 3) -> LabUnderTest:
        name = "t" + secrets.token_hex(3)
        octet = TEST_SUBNET_BASE + len(made)
        lab = LabUnderTest(name, write_lab_file(tmp_path / f"{name}.yml", name, octet, clients), clients)
        made.append(lab)
        return lab

    try:
        yield factory
    finally:
        problems_left = []
        for lab in made:
            try:
                NetnsBackend(load_lab(lab.lab_file), lab.state_dir).clean()
            except Exception as exc:  # keep tearing down the others, report at the end
                problems_left.append(f"{lab.name}: clean failed: {exc}")
            left = lab.leftovers()
            if left:
                problems_left.append(f"{lab.name}: left behind {left}")
        if problems_left:
            pytest.fail("lab teardown: " + "; ".join(problems_left))


@pytest.fixture
def netns_lab(make_lab) -> LabUnderTest:
    """A running lab: server + 3 clients, taken down after the test."""
    lab = make_lab(clients=3)
    lab.up()
    return lab


os.environ.setdefault("LABCTL_STATE", str(STATE_ROOT))


# --- containers: a private Docker daemon and container labs -------------------------------------------

DOCKER_SUBNET_BASE = 140  # container labs get 192.168.140.0/24, 192.168.141.0/24, ...


@pytest.fixture
def docker_daemon(lab_lock, monkeypatch) -> Iterator:
    """A private ``dockerd`` (own data root, exec root, socket, pid file), ``DOCKER_HOST`` pointing at it.

    Stopped by PID after the test; the test then fails if any of its processes, mounts or directory is
    left. Needs root and docker.io: a visible skip here, a failure under CI.
    """
    from labctl.backends.docker.daemon import PrivateDaemon
    from tests.requires import require_root, require_tool

    require_root()
    require_tool("dockerd", "apt-get install -y --no-install-recommends docker.io")
    daemon = PrivateDaemon(Path(f"/run/labctl-dockerd-{secrets.token_hex(3)}"))
    try:
        daemon.start()
        monkeypatch.setenv("DOCKER_HOST", daemon.host)
        yield daemon
    finally:
        daemon.remove()
        left = daemon.leftovers()
        if left:
            pytest.fail(f"private dockerd left behind: {left}")


@dataclass
class ContainerLab(LabUnderTest):
    """A test lab for ``--backend docker``: every CLI call goes through that backend."""

    def cli_argv(self, *args: str) -> list[str]:
        return [sys.executable, str(REPO / "labctl.py"), "--backend", "docker", "--lab", str(self.lab_file),
                "--state-dir", str(self.state_root), *args]

    @property
    def state_dir(self) -> Path:
        return self.state_root / self.name / "docker"

    def docker_backend(self):
        from labctl.backends.docker import DockerBackend

        return DockerBackend(load_lab(self.lab_file), self.state_root / self.name)


@pytest.fixture
def make_container_lab(docker_daemon, tmp_path) -> Iterator:
    """Factory of unique container labs in the private daemon; all cleaned (and checked) after the test."""
    made: list[ContainerLab] = []

    def factory(clients: int = 3) -> ContainerLab:
        name = "t" + secrets.token_hex(3)
        octet = DOCKER_SUBNET_BASE + len(made)
        lab = ContainerLab(name, write_lab_file(tmp_path / f"{name}.yml", name, octet, clients), clients)
        made.append(lab)
        return lab

    try:
        yield factory
    finally:
        problems_left = []
        for lab in made:
            try:
                lab.docker_backend().clean()
            except Exception as exc:
                problems_left.append(f"{lab.name}: clean failed: {exc}")
            left = leftovers(lab.name, lab.state_root / lab.name)
            if forward_guard.present(lab.name):
                left.append(f"nft table inet {forward_guard.table_name(lab.name)}")
            if left:
                problems_left.append(f"{lab.name}: left behind {left}")
        if problems_left:
            pytest.fail("container lab teardown: " + "; ".join(problems_left))
