"""The remote layer, shaped like Fabric 2: a :class:`Connection` per host and a :class:`Group` fan-out.

``Connection(host).run(["tcpdump", "-i", "eth0"])`` reads like a sentence; ``Group(hosts).run(...)``
runs it everywhere at once and returns per-host results *and* per-host failures, so one dead node never
loses the others' results. Unlike Fabric, host keys are pinned: the inventory carries each host's public
key and paramiko's ``RejectPolicy`` refuses anything else. Every command given as a list is quoted with
``shlex.join``; no agent, no forwarding. Before connecting, the route to the host must leave by the
lab's bridge (:mod:`labctl.safety`).
"""
from __future__ import annotations

import base64
import logging
import select
import shlex
import socket
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Generic, TypeVar, Union

# paramiko imports `invoke` only for ssh_config's `Match exec`, which labctl never uses; skipping it
# saves ~40 ms per labctl process.
sys.modules.setdefault("invoke", None)  # type: ignore[arg-type]

import paramiko  # noqa: E402

from labctl.errors import LabctlError  # noqa: E402
from labctl.inventory import Host  # noqa: E402
from labctl.safety import check_host, unsafe_hosts  # noqa: E402

if TYPE_CHECKING:
    from labctl.remote_process import RemoteProcess

# paramiko's transport thread logs a failed handshake with its traceback; without a handler of its own
# that reaches stderr through logging's last resort. The failure reaches the caller as one RemoteError.
logging.getLogger("paramiko").addHandler(logging.NullHandler())

T = TypeVar("T")
Command = Union[str, Sequence[str]]


class RemoteError(LabctlError):
    """A host could not be reached, refused us, or a remote operation failed."""


class HostKeyError(RemoteError):
    """The host's key is not the pinned one (or none is pinned): refuse, never auto-accept."""


@dataclass(frozen=True)
class Result:
    """What one remote command did."""

    host: str
    command: str
    exited: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.exited == 0


class CommandFailed(RemoteError):
    """A remote command exited non-zero (with ``check=True``)."""

    def __init__(self, result: Result) -> None:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        detail = f": {' / '.join(tail)}" if tail else ""
        super().__init__(f"{result.host}: `{result.command}` exited {result.exited}{detail}")
        self.result = result


def command_line(cmd: Command, *, sudo: bool = False, user: str = "root") -> str:
    """The shell line for ``cmd``: a list is quoted word by word; a str is taken as already quoted."""
    line = cmd if isinstance(cmd, str) else shlex.join([str(c) for c in cmd])
    if sudo and user != "root":
        line = "sudo -n -- sh -c " + shlex.quote(line)
    return line


def pinned_host_keys(host: Host) -> paramiko.HostKeys:
    """A known_hosts holding only ``host``'s pinned key, under the name paramiko will look it up by."""
    keys = paramiko.HostKeys()
    fields = host.host_key.split()
    if len(fields) < 2:
        raise HostKeyError(f"{host.name}: no pinned host key in the inventory; refusing to connect "
                           "(labctl never accepts an unknown host key)")
    try:
        key = paramiko.PKey.from_type_string(fields[0], base64.b64decode(fields[1]))
    except (ValueError, paramiko.SSHException) as exc:
        raise HostKeyError(f"{host.name}: pinned host key is not readable: {exc}") from None
    keys.add(host.known_hosts_name, key.get_name(), key)
    return keys


def load_private_key(path: Path) -> paramiko.PKey:
    """Load the client key, refusing one that others may read (it must be 0600)."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise RemoteError(f"private key {path} not found (is the lab up? run labctl up)") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise RemoteError(f"private key {path} is readable by others (mode {stat.S_IMODE(mode):o}); "
                          f"run: chmod 600 {shlex.quote(str(path))}")
    try:
        return paramiko.PKey.from_path(path)
    except (OSError, paramiko.SSHException) as exc:
        raise RemoteError(f"private key {path}: {exc}") from None


# Seconds for the SSH handshake (banner, key exchange, auth) and for opening a channel, once the TCP
# connection is up: an sshd that accepted is alive, but one in a VM under QEMU without KVM on a busy
# machine can take many seconds to fork and answer (too short a wait lost client1 of the VM test).
HANDSHAKE_TIMEOUT = 30.0


class Connection:
    """One SSH connection to one host, opened on first use and kept until :meth:`close`.

    ``connect_timeout`` bounds the TCP connect (a dead or absent node); the handshake and each channel
    get at least :data:`HANDSHAKE_TIMEOUT`.
    """

    def __init__(self, host: Host, *, connect_timeout: float = 5.0, route_checked: bool = False) -> None:
        self.host = host
        self.connect_timeout = connect_timeout
        self.handshake_timeout = max(connect_timeout, HANDSHAKE_TIMEOUT)
        self._route_checked = route_checked
        self._client: paramiko.SSHClient | None = None
        self._sftp: paramiko.SFTPClient | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<Connection {self.host.user}@{self.host.name} ({self.host.address}:{self.host.port})>"

    def __enter__(self) -> Connection:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def is_open(self) -> bool:
        transport = self._client.get_transport() if self._client else None
        return bool(transport and transport.is_active())

    def open(self) -> Connection:
        """Connect and authenticate; refuse unpinned keys and addresses outside the lab."""
        with self._lock:
            if self.is_open:
                return self
            host = self.host
            if not self._route_checked:
                check_host(host)
                self._route_checked = True
            if host.key_file is None:
                raise RemoteError(f"{host.name}: the inventory names no private key")
            pkey = load_private_key(Path(host.key_file))
            client = paramiko.SSHClient()
            client._host_keys = pinned_host_keys(host)  # only the pinned key, never ~/.ssh/known_hosts
            client.set_missing_host_key_policy(paramiko.RejectPolicy())
            try:
                # TCP_NODELAY: without it each SSH request waits out a delayed ACK (~40 ms)
                sock = socket.create_connection((host.address, host.port), timeout=self.connect_timeout)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                client.connect(host.address, port=host.port, username=host.user, pkey=pkey, sock=sock,
                               timeout=self.handshake_timeout, banner_timeout=self.handshake_timeout,
                               auth_timeout=self.handshake_timeout, allow_agent=False, look_for_keys=False)
            except paramiko.BadHostKeyException:
                client.close()
                # `up` keeps the pins of a lab it finds running (a changed key is what pinning is there
                # to catch), so only a fresh build pins anew; an inventory's pins are the user's own
                raise HostKeyError(f"{host.name} ({host.address}): host key does not match the pinned key; "
                                   "refusing (if the node was rebuilt on purpose: labctl down, then "
                                   "labctl up makes and pins fresh keys; with --backend ssh, put its new "
                                   "key, checked out of band, in the inventory)") from None
            except paramiko.AuthenticationException:
                client.close()
                raise RemoteError(f"{host.name} ({host.address}): the node refused labctl's key") from None
            except paramiko.SSHException as exc:
                client.close()
                if "not found in known_hosts" in str(exc):
                    raise HostKeyError(f"{host.name}: unknown host key; refusing") from None
                raise RemoteError(f"{host.name} ({host.address}): SSH failed: {exc}") from None
            except (OSError, EOFError) as exc:
                client.close()
                reason = "connection refused (is its sshd running?)" \
                    if isinstance(exc, ConnectionRefusedError) or "Unable to connect" in str(exc) \
                    else "timed out" if isinstance(exc, socket.timeout) else str(exc) or type(exc).__name__
                raise RemoteError(f"{host.name} ({host.address}:{host.port}): {reason}") from None
            self._client = client
            return self

    def close(self) -> None:
        with self._lock:
            if self._sftp is not None:
                self._sftp.close()
                self._sftp = None
            if self._client is not None:
                self._client.close()
                self._client = None

    def run(self, cmd: Command, *, timeout: float | None = None, check: bool = True, sudo: bool = False,
            stdin: bytes | str | None = None) -> Result:
        """Run a command, wait for it, return its :class:`Result` (raise :class:`CommandFailed` if check)."""
        line = command_line(cmd, sudo=sudo, user=self.host.user)
        self.open()
        assert self._client is not None
        try:
            chan = self._client.get_transport().open_session(timeout=self.handshake_timeout)
            chan.exec_command(line)
            if stdin is not None:
                chan.sendall(stdin.encode() if isinstance(stdin, str) else stdin)
            chan.shutdown_write()
            out, err = _drain(chan, timeout)
            exited = chan.recv_exit_status()
        except socket.timeout:
            raise RemoteError(f"{self.host.name}: `{line}` did not finish within {timeout} s") from None
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise RemoteError(f"{self.host.name}: lost the connection running `{line}`: {exc}") from None
        result = Result(self.host.name, line, exited, out.decode(errors="replace"),
                        err.decode(errors="replace"))
        if check and not result.ok:
            raise CommandFailed(result)
        return result

    def launch(self, cmd: Command, *, sudo: bool = False) -> RemoteProcess:
        """Start a command and return at once; its stdin stays open (see :mod:`labctl.remote_process`)."""
        from labctl.remote_process import RemoteProcess

        line = command_line(cmd, sudo=sudo, user=self.host.user)
        self.open()
        assert self._client is not None
        try:
            chan = self._client.get_transport().open_session(timeout=self.handshake_timeout)
            chan.exec_command(line)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise RemoteError(f"{self.host.name}: lost the connection starting `{line}`: {exc}") from None
        return RemoteProcess(self.host.name, line, chan)

    def sftp(self) -> paramiko.SFTPClient:
        self.open()
        if self._sftp is None:
            assert self._client is not None
            self._sftp = self._client.open_sftp()
        return self._sftp

    def put(self, local: str | Path, remote: str, *, mode: int | None = None) -> str:
        """Copy a local file to the host over SFTP; return the remote path."""
        try:
            self.sftp().put(str(local), remote)
            if mode is not None:
                self.sftp().chmod(remote, mode)
        except OSError as exc:
            raise RemoteError(f"{self.host.name}: cannot copy {local} to {remote}: {exc}") from None
        return remote

    def get(self, remote: str, local: str | Path) -> Path:
        """Copy a remote file home over SFTP; return the local path."""
        try:
            self.sftp().get(remote, str(local))
        except OSError as exc:
            raise RemoteError(f"{self.host.name}: cannot fetch {remote}: {exc}") from None
        return Path(local)

    def start(self, cmd: Command, *, log: str, ready: str | None = None, timeout: float = 10.0,
              sudo: bool = False) -> int:
        """Start ``cmd`` detached (own session, output to ``log``); wait for ``ready`` (an ERE) in the log.

        Returns the remote PID, which :meth:`stop` takes. If the process dies or ``ready`` does not
        appear within ``timeout``, the process is killed and :class:`RemoteError` carries its log.
        """
        inner = command_line(cmd)
        q_log = shlex.quote(log)
        steps = max(1, int(timeout / 0.02))
        script = (f": > {q_log}; setsid {inner} > {q_log} 2>&1 < /dev/null & pid=$!; echo $pid; ")
        if ready is not None:
            script += (f"i=0; while ! grep -qE -- {shlex.quote(ready)} {q_log}; do "
                       f"if ! kill -0 $pid 2>/dev/null; then echo DIED; exit 3; fi; "
                       f"i=$((i+1)); if [ $i -gt {steps} ]; then kill -9 $pid; echo TIMEOUT; exit 4; fi; "
                       f"sleep 0.02; done")
        result = self.run(["sh", "-c", script], check=False, sudo=sudo, timeout=timeout + 10)
        lines = result.stdout.split()
        if result.exited != 0 or not lines or not lines[0].isdigit():
            log_tail = self.run(["tail", "-n", "5", log], check=False, sudo=sudo).stdout.strip()
            why = {3: "exited before it was ready", 4: f"was not ready within {timeout} s"}.get(
                result.exited, f"could not be started ({result.stderr.strip()})")
            suffix = f"; its log: {log_tail}" if log_tail else ""
            raise RemoteError(f"{self.host.name}: `{inner}` {why}{suffix}")
        return int(lines[0])

    def stop(self, pid: int, *, sig: str = "TERM", timeout: float = 5.0, sudo: bool = False) -> bool:
        """Signal the process ``pid`` and wait until it is gone (SIGKILL after ``timeout``).

        A zombie counts as gone: a detached process is an orphan of PID 1, and an init that reaps
        lazily (this Firecracker VM's takes ~1.5 s) would otherwise make every stop wait that long.
        Returns True if it ended from ``sig``, False if it had to be killed or was already gone.
        """
        steps = max(1, int(timeout / 0.01))
        p = int(pid)
        alive = f"[ -e /proc/{p} ] && [ \"$(sed 's/.*) //' /proc/{p}/stat 2>/dev/null | cut -c1)\" != Z ]"
        script = (f"if ! {{ {alive}; }}; then echo GONE; exit 0; fi; "
                  f"kill -{shlex.quote(sig)} {p} 2>/dev/null || {{ echo GONE; exit 0; }}; i=0; "
                  f"while {alive}; do i=$((i+1)); "
                  f"if [ $i -gt {steps} ]; then kill -9 {p}; echo KILLED; exit 0; fi; sleep 0.01; done; "
                  f"echo STOPPED")
        result = self.run(["sh", "-c", script], sudo=sudo, timeout=timeout + 10)
        return result.stdout.strip() == "STOPPED"

    def stream(self, cmd: Command, *, sudo: bool = False) -> Stream:
        """Start ``cmd`` and return at once: its output is read as it comes with :meth:`Stream.pump`
        (``tcpdump -w -``); :meth:`Stream.close` ends the channel, not the remote process."""
        line = command_line(cmd, sudo=sudo, user=self.host.user)
        self.open()
        assert self._client is not None
        try:
            chan = self._client.get_transport().open_session(timeout=self.handshake_timeout)
            chan.exec_command(line)
            chan.shutdown_write()
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise RemoteError(f"{self.host.name}: could not start `{line}`: {exc}") from None
        return Stream(self.host.name, line, chan)


class Stream:
    """A remote command whose stdout and stderr are handed on as they arrive."""

    def __init__(self, host: str, line: str, chan: paramiko.Channel) -> None:
        self.host, self.line, self._chan = host, line, chan

    def pump(self, on_stdout: Callable[[bytes], None], on_stderr: Callable[[bytes], None]) -> int:
        """Pass every piece of output to the callbacks until the command ends; return its exit status
        (-1 if the connection was lost before it said). Either callback may raise to stop early."""
        chan = self._chan
        fd = chan.fileno()
        try:
            while True:
                got = False
                while chan.recv_ready():
                    on_stdout(chan.recv(65536))
                    got = True
                while chan.recv_stderr_ready():
                    on_stderr(chan.recv_stderr(65536))
                    got = True
                if chan.eof_received and chan.exit_status_ready() and not got \
                        and not chan.recv_ready() and not chan.recv_stderr_ready():
                    return chan.recv_exit_status()
                if chan.closed and not got:
                    return -1
                if not got:
                    select.select([fd], [], [], 0.5)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise RemoteError(f"{self.host}: lost the connection running `{self.line}`: {exc}") from None

    def close(self) -> None:
        self._chan.close()


def _drain(chan: paramiko.Channel, timeout: float | None) -> tuple[bytes, bytes]:
    """Read a channel's stdout and stderr to the end, neither starving the other."""
    out, err = bytearray(), bytearray()
    deadline = None if timeout is None else time.monotonic() + timeout
    fd = chan.fileno()  # readable whenever stdout or stderr has data, or at EOF
    while True:
        while chan.recv_ready():
            out += chan.recv(65536)
        while chan.recv_stderr_ready():
            err += chan.recv_stderr(65536)
        if chan.eof_received and chan.exit_status_ready() \
                and not chan.recv_ready() and not chan.recv_stderr_ready():
            return bytes(out), bytes(err)
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            raise socket.timeout()
        select.select([fd], [], [], 0.5 if left is None else min(left, 0.5))


@dataclass
class GroupResult(Generic[T]):
    """Per-host results and per-host failures of one fanned-out call."""

    results: dict[str, T] = field(default_factory=dict)
    failures: dict[str, BaseException] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failures

    def __getitem__(self, name: str) -> T:
        if name in self.failures:
            raise self.failures[name]
        return self.results[name]


class Group:
    """Many connections; every call fans out in threads and returns a :class:`GroupResult`."""

    def __init__(self, hosts: Iterable[Host], *, connect_timeout: float = 5.0, check_route: bool = True,
                 max_workers: int = 64) -> None:
        hosts = list(hosts)
        if check_route:  # one `ip -batch` call for the whole group
            refused = unsafe_hosts(hosts)
            if refused:
                raise next(iter(refused.values()))
        self._adopt([Connection(h, connect_timeout=connect_timeout, route_checked=check_route)
                     for h in hosts], max_workers)

    @classmethod
    def from_connections(cls, connections: Iterable[Connection], *, max_workers: int = 64) -> Group:
        """A group over connections that already exist, sharing them (Fabric's ``Group.from_connections``)."""
        group = cls([], check_route=False)
        group._adopt(list(connections), max_workers)
        return group

    def subset(self, names: Iterable[str]) -> Group:
        """The group of the hosts called ``names``, sharing this group's (open) connections."""
        try:
            return Group.from_connections([self.connections[n] for n in names], max_workers=self.max_workers)
        except KeyError as exc:
            raise RemoteError(f"no host {exc.args[0]!r} in this group "
                              f"({', '.join(self.connections)})") from None

    def _adopt(self, connections: list[Connection], max_workers: int) -> None:
        self.connections: dict[str, Connection] = {c.host.name: c for c in connections}
        self.max_workers = max(1, min(max_workers, len(connections)))

    def __enter__(self) -> Group:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self):
        return iter(self.connections.values())

    def __len__(self) -> int:
        return len(self.connections)

    def __getitem__(self, name: str) -> Connection:
        return self.connections[name]

    def map(self, fn: Callable[[Connection], T]) -> GroupResult[T]:
        """Call ``fn(connection)`` for every host at once; collect results and failures per host."""
        outcome: GroupResult[T] = GroupResult()
        if not self.connections:
            return outcome

        todo = list(self.connections.values())
        left = [len(todo)]
        done = threading.Condition()

        def worker() -> None:
            while True:
                with done:
                    if not todo:
                        return
                    conn = todo.pop(0)
                try:
                    outcome.results[conn.host.name] = fn(conn)
                except Exception as exc:  # a failed host must not lose the others
                    outcome.failures[conn.host.name] = exc
                with done:
                    left[0] -= 1
                    done.notify_all()

        # Daemon threads, and a wait in slices: Ctrl-C reaches the caller at once instead of after
        # every host's call has returned (a pool's exit joins its workers), and a process that exits
        # then is not held up by calls still blocked on a dead host.
        for _ in range(self.max_workers):
            threading.Thread(target=worker, daemon=True, name="labctl-group").start()
        with done:
            while left[0]:
                done.wait(0.2)
        order = list(self.connections)
        outcome.results = {n: outcome.results[n] for n in order if n in outcome.results}
        outcome.failures = {n: outcome.failures[n] for n in order if n in outcome.failures}
        return outcome

    def open(self) -> GroupResult[Connection]:
        return self.map(lambda c: c.open())

    def run(self, cmd: Command, **kwargs) -> GroupResult[Result]:
        return self.map(lambda c: c.run(cmd, **kwargs))

    def put(self, local: str | Path, remote: str, **kwargs) -> GroupResult[str]:
        return self.map(lambda c: c.put(local, remote, **kwargs))

    def close(self) -> None:
        for conn in self.connections.values():
            conn.close()


def reason(exc: BaseException) -> str:
    """A host's failure as one line, without the host-name prefix the remote layer puts first
    (for tables that show the host in a column of its own)."""
    text = str(exc) or type(exc).__name__
    if isinstance(exc, RemoteError) and ": " in text:
        head, rest = text.split(": ", 1)
        if " " not in head.strip() or head.endswith(")"):
            return rest
    return text
