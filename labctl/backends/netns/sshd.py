"""One OpenSSH server per lab node: keys, config, and starting it inside the node's namespaces.

A node's sshd is started by ``fork`` + ``exec``, with no helper programs: the child joins the node's
network namespace, makes its own mount and UTS namespaces (hostname = node name, a fresh /sys for the
node's interfaces, the node's private /root and /tmp bind-mounted), configures ``lo`` and ``eth0``,
and execs ``sshd -D``. The mounts exist only in that sshd's mount namespace, so they vanish with it;
nothing is ever mounted on the host.
"""
from __future__ import annotations

import os
import signal
import socket
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from labctl.backends.base import BackendError
from labctl.backends.keys import generate_keypair, write_private
from labctl.backends.netns import linux
from labctl.backends.netns.state import NODE_INTERFACE, LabPlan, NodePlan, StateDir
from labctl.statefiles import secure_dir, write_file

SSHD = "/usr/sbin/sshd"  # sshd refuses to run from a relative path (it re-executes itself)
PRIVSEP_DIR = Path("/run/sshd")
SSHD_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}

# A node's /root: kept minimal so every remote command starts fast (Debian's bash reads ~/.bashrc
# even for `ssh node CMD`); the prompt shows the node's name.
NODE_BASHRC = """\
# labctl lab node: kept minimal so remote commands start fast
case $- in *i*) PS1='\\u@\\h:\\w\\$ ' ;; esac
"""
NODE_PROFILE = "[ -f ~/.bashrc ] && . ~/.bashrc\n"


def sshd_config(node: NodePlan, state: StateDir, port: int = 22) -> str:
    """The node's sshd_config: its own key, address and pid file; key-only root login; no forwarding."""
    return f"""\
# labctl lab {state.root.name}, node {node.name}
ListenAddress {node.address}:{port}
HostKey {state.host_key(node.name)}
HostKeyAlgorithms ssh-ed25519
PidFile {state.pid_file(node.name)}
AuthorizedKeysFile {state.authorized_keys}
StrictModes yes
PermitRootLogin prohibit-password
AllowUsers root
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
AllowAgentForwarding no
AllowTcpForwarding no
AllowStreamLocalForwarding no
X11Forwarding no
PermitTunnel no
PermitUserEnvironment no
UseDNS no
PrintMotd no
PrintLastLog no
MaxStartups 64:30:256
MaxSessions 32
LoginGraceTime 20
ClientAliveInterval 30
ClientAliveCountMax 4
Subsystem sftp internal-sftp
LogLevel INFO
"""


def prepare_node(node: NodePlan, state: StateDir, authorized_key_comment: str, port: int = 22) -> str:
    """Write the node's directory (host key, config, private /root and /tmp); return its host key line."""
    node_dir = state.node_dir(node.name)
    secure_dir(node_dir)
    secure_dir(state.node_root(node.name))
    tmp = state.node_tmp(node.name)
    tmp.mkdir(exist_ok=True)
    if tmp.is_symlink() or not tmp.is_dir():
        raise BackendError(f"{tmp} is not a directory (labctl made it one); remove it and run labctl up")
    os.chmod(tmp, 0o1777)
    write_file(state.node_root(node.name) / ".bashrc", NODE_BASHRC, 0o644)
    write_file(state.node_root(node.name) / ".profile", NODE_PROFILE, 0o644)
    private, public = generate_keypair(f"{authorized_key_comment}-{node.name}")
    write_private(state.host_key(node.name), private)
    write_file(f"{state.host_key(node.name)}.pub", public + "\n", 0o644)
    write_file(state.sshd_config(node.name), sshd_config(node, state, port), 0o644)
    return " ".join(public.split()[:2])


def start_sshd(node: NodePlan, state: StateDir, lab_plan: LabPlan,
               on_spawn: Callable[[int], None] | None = None) -> int:
    """Start the node's sshd detached (reparented away from us); return its pid.

    The pid is known before sshd listens (``on_spawn`` gets it at once), so an interrupted ``up``
    can still kill it. Readiness is sshd writing its PidFile, which it does after binding its socket.
    """
    read_end, write_end = os.pipe()
    # Signals wait until the pid is ours: a Python handler run inside os.fork()'s at-fork hooks has
    # its KeyboardInterrupt swallowed and leaves logging's lock held (paramiko threads then hang),
    # and one run before we read the pid would leave an sshd nobody knows about.
    with blocked_signals():
        child = os.fork()
        if child == 0:  # intermediate child: fork the node process, report its pid, exit at once
            try:
                os.close(read_end)
                grandchild = os.fork()
                if grandchild == 0:
                    os.close(write_end)
                    _exec_node(node, state, lab_plan)  # never returns
                os.write(write_end, str(grandchild).encode())
            finally:
                os._exit(0)
        os.close(write_end)
        try:
            data = b""
            while chunk := os.read(read_end, 32):
                data += chunk
        finally:
            os.close(read_end)
            os.waitpid(child, 0)
        if not data:
            raise OSError(f"could not fork the sshd of {node.name}")
        pid = int(data)
        if on_spawn is not None:
            on_spawn(pid)
        return pid


@contextmanager
def blocked_signals(signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)) -> Iterator[None]:
    """Hold back ``signals`` for the calling thread (and threads it starts) inside the block."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _exec_node(node: NodePlan, state: StateDir, lab_plan: LabPlan) -> None:
    """In the forked child: become the node, then exec sshd. Any failure goes to the node's log."""
    try:
        os.setsid()  # out of our session: a Ctrl-C at the terminal is labctl's to handle, not sshd's
        log = os.open(state.log_file(node.name), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGPIPE, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)  # Python ignores SIGPIPE; sshd's shells must not
        signal.pthread_sigmask(signal.SIG_SETMASK, set())  # exec keeps the mask: unblock everything
        linux.setns(linux.netns_path(node.netns), linux.CLONE_NEWNET)
        linux.unshare(linux.CLONE_NEWNS | linux.CLONE_NEWUTS)
        linux.mount("none", "/", None, linux.MS_REC | linux.MS_SLAVE)  # nothing we mount leaks out
        linux.umount_lazy("/sys")  # a /sys that shows the node's interfaces, as `ip netns exec` does
        linux.mount("sysfs", "/sys", "sysfs", 0)
        linux.mount(str(state.node_root(node.name)), "/root", None, linux.MS_BIND)
        linux.mount(str(state.node_tmp(node.name)), "/tmp", None, linux.MS_BIND)
        linux.sethostname(node.name)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:  # a socket of the node's netns
            linux.set_up(sock, "lo")
            linux.set_ipv4(sock, NODE_INTERFACE, node.address, lab_plan.prefixlen)
            linux.tx_checksum(sock, NODE_INTERFACE, False)
            linux.set_up(sock, NODE_INTERFACE)
        # The node ACKs the host (labctl's SSH) at once, so a client's Nagle never waits 40 ms for a
        # delayed ACK. Node-to-node TCP, what the exercise captures, keeps the default behaviour.
        linux.add_quickack_route(lab_plan.host_address, NODE_INTERFACE)
        os.chdir("/")
        os.execve(SSHD, [SSHD, "-D", "-f", str(state.sshd_config(node.name)),
                         "-E", str(state.log_file(node.name))], SSHD_ENV)
    except BaseException as exc:  # the child must never return into labctl's code
        try:
            os.write(2, f"labctl: cannot start node {node.name}: {exc}\n".encode())
        finally:
            os._exit(127)
    sys.exit(127)  # unreachable: execve does not return
