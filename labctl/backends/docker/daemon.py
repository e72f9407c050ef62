"""The Docker daemon: a client for the one ``DOCKER_HOST`` names, and a private daemon started by PID.

:func:`connect` talks to the daemon ``DOCKER_HOST`` names (``DOCKER_TLS_VERIFY``/``DOCKER_CERT_PATH``
too), the default socket otherwise, through the Docker SDK for Python, and turns every way of not
reaching it into one clear :class:`DockerUnavailable`.

:class:`PrivateDaemon` is for machines without systemd (tests, CI, benchmarks): ``dockerd
--iptables=false --ip6tables=false --bridge=none`` with its own data root, exec root, socket and pid
file under one directory, stopped by its PID, with nothing of it left afterwards (no process, no mount).
With ``--iptables=false`` Docker enforces nothing on its bridges: the docker backend's forwarding guard
and each node's missing default route keep the lab in.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from labctl.backends.base import BackendError
from labctl.statefiles import open_append

DEFAULT_HOST = "unix:///var/run/docker.sock"
API_TIMEOUT = 120          # s for one API call (an image import of ~180 MB takes several on a busy machine)
START_TIMEOUT = 60.0       # s for a private dockerd to answer on its socket
STOP_TIMEOUT = 30.0        # s for it to exit after SIGTERM before SIGKILL
SBIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class DockerUnavailable(BackendError):
    """No Docker daemon answers where labctl looked (or the SDK is missing); the message says what to do."""


def endpoint() -> str:
    """The daemon labctl talks to: ``DOCKER_HOST``, else the default socket."""
    return os.environ.get("DOCKER_HOST") or DEFAULT_HOST


def connect(timeout: float = API_TIMEOUT) -> Any:
    """A ``docker.DockerClient`` for :func:`endpoint`, after one round trip that proves the daemon answers."""
    try:
        import docker
        from docker.errors import DockerException
        from requests.exceptions import RequestException
    except ImportError:
        raise DockerUnavailable("the docker backend needs the Docker SDK for Python: .venv/bin/pip install "
                                "docker (./install.sh installs it)") from None
    where = endpoint()
    try:
        client = docker.from_env(timeout=int(timeout))  # version "auto": asks the daemon once
        client.ping()
    except (DockerException, RequestException, OSError) as exc:
        raise DockerUnavailable(f"no Docker daemon answers at {where} ({short_error(exc)}): start dockerd "
                                f"(without systemd: see docs/backends.md) or point DOCKER_HOST at its "
                                f"socket") from None
    return client


def short_error(exc: BaseException) -> str:
    """The useful part of an SDK exception: the daemon's explanation, else the last line of the message."""
    explanation = getattr(exc, "explanation", None)
    text = explanation.decode(errors="replace") if isinstance(explanation, bytes) else explanation
    text = str(text or exc).strip()
    return text.splitlines()[-1][:300] if text else type(exc).__name__


# --- a private daemon --------------------------------------------------------------------------------

def ping_socket(path: Path, timeout: float = 1.0) -> bool:
    """True when a Docker API on the unix socket ``path`` answers ``GET /_ping`` with OK."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(path))
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            reply = b""
            while chunk := sock.recv(4096):
                reply += chunk
    except OSError:
        return False
    return reply.startswith(b"HTTP/1.") and reply.rstrip().endswith(b"OK")


class PrivateDaemon:
    """``dockerd`` with everything of its own under ``root``, started and stopped by PID.

    ``root`` must be short (a unix socket path holds at most 107 bytes, and containerd's live under the
    exec root): e.g. ``/run/labctl-dockerd-1a2b3c``.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.process: subprocess.Popen | None = None

    @property
    def socket(self) -> Path:
        return self.root / "docker.sock"

    @property
    def host(self) -> str:
        """What ``DOCKER_HOST`` must say to reach this daemon."""
        return f"unix://{self.socket}"

    @property
    def log_file(self) -> Path:
        return self.root / "dockerd.log"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def argv(self, dockerd: str) -> list[str]:
        return [dockerd, "--iptables=false", "--ip6tables=false", "--bridge=none",
                "--data-root", str(self.root / "data"), "--exec-root", str(self.root / "exec"),
                "-H", self.host, "-p", str(self.root / "docker.pid")]

    def start(self, timeout: float = START_TIMEOUT) -> PrivateDaemon:
        """Start dockerd and wait until it answers on its socket; raise :class:`DockerUnavailable` if not."""
        dockerd = shutil.which("dockerd", path=os.environ.get("PATH", "") + ":" + SBIN_PATH)
        if dockerd is None:
            raise DockerUnavailable("dockerd is missing: apt-get install -y --no-install-recommends "
                                    "docker.io")
        with open_append(self.log_file) as log:
            self.process = subprocess.Popen(self.argv(dockerd), stdin=subprocess.DEVNULL, stdout=log,
                                            stderr=log, start_new_session=True, close_fds=True)
        deadline = time.monotonic() + timeout
        while not ping_socket(self.socket):
            if self.process.poll() is not None:
                raise DockerUnavailable(f"dockerd exited ({self.process.returncode}): {self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise DockerUnavailable(f"dockerd did not answer within {timeout:.0f} s: {self.log_tail()}")
            time.sleep(0.05)
        return self

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM dockerd by PID (SIGKILL after ``timeout``); then end and unmount whatever it left."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        for pid in self.processes():  # containerd and its shims, should a killed dockerd leave them
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while self.processes() and time.monotonic() < deadline:
            time.sleep(0.05)
        for target in sorted(self.mounts(), key=len, reverse=True):
            subprocess.run(["umount", "-l", target], capture_output=True, check=False)

    def remove(self) -> None:
        """Stop the daemon and delete its directory (data root, exec root, socket, log)."""
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def processes(self) -> list[int]:
        """Live processes whose command line names this daemon's directory (dockerd, containerd, shims)."""
        return processes_naming(self.root)

    def mounts(self) -> list[str]:
        """Mount points under this daemon's directory, in this mount namespace."""
        return mounts_under(self.root)

    def leftovers(self) -> list[str]:
        """What of this daemon still exists: processes, mounts, its directory."""
        found = [f"process {pid}" for pid in self.processes()]
        found += [f"mount {target}" for target in self.mounts()]
        if self.root.exists():
            found.append(f"directory {self.root}")
        return found

    def log_tail(self, lines: int = 3) -> str:
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return " / ".join(line.strip() for line in text.strip().splitlines()[-lines:]) or "(empty log)"


def processes_naming(path: Path) -> list[int]:
    """Live (not zombie) processes whose command line contains ``path``."""
    needle = str(path).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            stat = (entry / "stat").read_bytes()
            if stat[stat.rindex(b")") + 2:][:1] in (b"Z", b"X"):
                continue
            if needle in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def mounts_under(path: Path) -> list[str]:
    """Mount points at or under ``path`` in this process's mount namespace."""
    prefix = str(path).rstrip("/")
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return []
    targets = [line.split()[4] for line in lines if len(line.split()) > 4]
    return [t for t in targets if t == prefix or t.startswith(prefix + "/")]
