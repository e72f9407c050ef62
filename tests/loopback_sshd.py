"""A real OpenSSH sshd on loopback for tests that need SSH but no lab (no lock needed)."""
from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.requires import require_file, require_root, require_tool

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def keygen(path: Path) -> str:
    """A new ed25519 key at ``path``; returns its public key as ``TYPE BASE64``."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return " ".join(path.with_suffix(".pub").read_text().split()[:2])


def free_port() -> int:
    """A port free on 127.0.0.1 for both TCP and UDP."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s, \
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
            try:
                u.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


@dataclass(frozen=True)
class LoopbackSshd:
    dir: Path
    port: int
    key_file: Path     # the client's private key
    host_key: str      # the sshd's public host key, to pin


@contextmanager
def loopback_sshd(directory: Path, addresses: Sequence[str] = ("127.0.0.1",),
                  extra_config: str = "") -> Iterator[LoopbackSshd]:
    """Run sshd on ``addresses`` accepting one generated client key; stop it by PID on exit.

    Needs root and OpenSSH's sshd: skipped visibly without them, a failure under CI (tests/requires.py).
    """
    require_root()
    require_file(SSHD, "apt-get install openssh-server")
    require_tool("ssh-keygen", "apt-get install openssh-client")
    directory.chmod(0o700)
    host_pub = keygen(directory / "host")
    client_pub = keygen(directory / "client")
    (directory / "authorized_keys").write_text(client_pub + "\n")
    Path("/run/sshd").mkdir(exist_ok=True)
    port = free_port()
    listen = "".join(f"ListenAddress {a}:{port}\n" for a in addresses)
    config = directory / "sshd_config"
    config.write_text(f"""{listen}HostKey {directory / 'host'}
PidFile {directory / 'sshd.pid'}
AuthorizedKeysFile {directory / 'authorized_keys'}
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
AllowAgentForwarding no
AllowTcpForwarding no
X11Forwarding no
Subsystem sftp internal-sftp
{extra_config}""")
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stderr=subprocess.DEVNULL)
    try:
        for _ in range(300):
            with socket.socket() as s:
                if s.connect_ex((addresses[-1], port)) == 0:
                    break
            time.sleep(0.01)
        yield LoopbackSshd(directory, port, directory / "client", host_pub)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=5)
