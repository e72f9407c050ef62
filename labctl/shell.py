"""``labctl ssh NODE [CMD...]``: the system ssh client on one node, with the inventory's key and pinned
host key, whatever the backend.

ssh is given a known_hosts file built from the inventory's pinned host keys and nothing else
(``StrictHostKeyChecking=yes``, no global file, no ``~/.ssh``), in a private temporary directory that
is removed when ssh exits. The command follows ssh's own rule: a single argument is a shell command
line, run as it is (``labctl ssh client1 'ip -br a; ss -tn'``); several arguments are quoted one by
one, so the node runs exactly those words.
"""
from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

from labctl.errors import LabctlError
from labctl.inventory import Host, known_hosts_text
from labctl.safety import check_host

SSH_CLIENT = "ssh"


class ShellError(LabctlError):
    """The system ssh client cannot be started for this node; the message says why."""


def remote_command(words: Sequence[str]) -> str | None:
    """What the node's shell runs: one word as a command line, several quoted and joined, none: a shell."""
    if not words:
        return None
    if len(words) == 1:
        return words[0]
    return shlex.join(words)


def ssh_argv(client: str, host: Host, *, known_hosts: Path, command: str | None) -> list[str]:
    """The system ssh command line: pinned known_hosts only, the lab key only, no agent or forwarding."""
    if not host.key_file or not host.host_key:
        raise ShellError(f"{host.name}: the inventory has no key or no pinned host key")
    argv = [client,
            "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={known_hosts}",
            "-o", "GlobalKnownHostsFile=/dev/null", "-o", "UpdateHostKeys=no",
            "-o", f"HostKeyAlgorithms={host.host_key.split()[0]}",
            "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none", "-o", "ForwardAgent=no",
            "-o", "ForwardX11=no", "-o", "ClearAllForwardings=yes", "-o", "BatchMode=yes",
            "-o", "ConnectTimeout=5", "-o", "LogLevel=ERROR", "-F", "/dev/null",
            "-i", str(host.key_file), "-p", str(host.port), "-l", host.user]
    if command is None:
        argv.append("-t")  # an interactive shell
    argv += ["--", host.address]
    if command is not None:
        argv.append(command)
    return argv


def open_shell(host: Host, words: Sequence[str]) -> int:
    """Run the system ssh client on ``host`` (a shell, or ``words``); return its exit status."""
    check_host(host)  # ip route get where it can, else the route's source address (any host system)
    client = shutil.which(SSH_CLIENT)
    if client is None:
        how = ("add Windows' OpenSSH Client (Settings > Apps > Optional features), or run labctl in WSL2"
               if os.name == "nt" else "install it with: apt-get install -y openssh-client")
        raise ShellError(f"the ssh client is missing; {how}")
    with tempfile.TemporaryDirectory(prefix="labctl-ssh-") as tmp:  # 0700, removed whatever happens
        known_hosts = Path(tmp) / "known_hosts"
        fd = os.open(known_hosts, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(known_hosts_text([host]))
        argv = ssh_argv(client, host, known_hosts=known_hosts, command=remote_command(words))
        sys.stdout.flush()
        sys.stderr.flush()
        return _wait(subprocess.Popen(argv))


def _wait(proc: subprocess.Popen) -> int:
    """Wait for ssh. Ctrl-C reaches it too (same terminal) and is its to act on; SIGTERM is passed on."""
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, lambda _sig, _frame: proc.terminate()) if in_main else None
    try:
        while True:
            try:
                code = proc.wait()
                break
            except KeyboardInterrupt:
                continue
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
    return 128 - code if code < 0 else code  # killed by signal N: 128 + N, as a shell says
