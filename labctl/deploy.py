"""Deploy: the time server to the server node, the time client to every client node.

Written against :class:`~labctl.remote.Group` and the inventory only: it works the same on network
namespaces, VMs and plain SSH hosts. :func:`ensure` is the one way to bring nodes up to date: ``labctl
deploy`` calls it, and so does ``labctl run`` before it triggers the clients.

Files go to ``~/labctl/`` on each node (SFTP and ``ssh`` commands start in the remote user's home, so
a relative path is that). Only files whose SHA-256 differs are copied. The server runs as a managed
process: its PID and exact command line are kept beside it (``timeserver.pid``, ``timeserver.cmd``),
so a later deploy knows whether it is running the current program with the current ports, and
restarts it only when not.
"""
from __future__ import annotations

import hashlib
import shlex
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from labctl.errors import LabctlError
from labctl.inventory import Host, Inventory
from labctl.lab import Ports
from labctl.remote import Connection, Group, reason

REMOTE_DIR = "labctl"  # relative: under the remote user's home (each netns node has its own /root)
SCRIPTS_DIR = Path(__file__).resolve().parent.parent / "scripts"
SERVER_PROGRAM = "timeserver.py"
SERVER_FILES = (SERVER_PROGRAM, "timeserver_protocol.py", "timeserver_limits.py")  # it imports the other two
CLIENT_PROGRAM = "timeclient.py"
SERVER_PID = "timeserver.pid"
SERVER_CMD = "timeserver.cmd"
SERVER_LOG = "timeserver.log"


class DeployError(LabctlError):
    """The programs could not be put in place or the server did not start."""


@dataclass
class NodeState:
    """What a probe found on one node: file hashes, and whether (and how) the managed server runs."""

    hashes: dict[str, str] = field(default_factory=dict)
    server_pid: int | None = None
    server_cmd: str = ""  # the command line the running server was started with


@dataclass
class NodeDeploy:
    """What deploy did on one node."""

    node: str
    role: str
    address: str
    copied: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    server: str = ""  # "started pid N", "restarted pid N", "running pid N" (server node only)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def changed(self) -> bool:
        """True when deploy copied a file or (re)started the server here."""
        return bool(self.copied) or self.server.startswith(("started", "restarted"))

    def summary(self) -> str:
        if self.error:
            return self.error
        parts = []
        if self.copied:
            parts.append("copied " + ", ".join(self.copied))
        if self.unchanged:
            parts.append(", ".join(self.unchanged) + " unchanged")
        if self.server:
            parts.append("server " + self.server)
        return "; ".join(parts)

    def to_json(self) -> dict:
        return {"node": self.node, "role": self.role, "address": self.address, "ok": self.ok,
                "copied": self.copied, "unchanged": self.unchanged, "server": self.server,
                "error": self.error}


@dataclass
class DeployReport:
    """Deploy's outcome, node by node (a failed node never hides the others)."""

    nodes: list[NodeDeploy]
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return all(n.ok for n in self.nodes)

    def to_json(self) -> dict:
        return {"ok": self.ok, "seconds": round(self.seconds, 3), "nodes": [n.to_json() for n in self.nodes]}


def file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def programs_for(host: Host, scripts_dir: Path | None = None) -> dict[str, Path]:
    """The node programs a host gets: the server program on the server, the client on clients."""
    names = SERVER_FILES if host.role == "server" else (CLIENT_PROGRAM,)
    paths = {name: (scripts_dir or SCRIPTS_DIR) / name for name in names}
    for path in paths.values():
        if not path.is_file():
            raise DeployError(f"{path} is missing: the node programs must be in scripts/ of the project")
    return paths


def ports_of(inventory: Inventory) -> Ports:
    return inventory.lab.ports if inventory.lab is not None else Ports()


def server_argv(address: str, ports: Ports, remote_dir: str = REMOTE_DIR) -> list[str]:
    """The server's command line: bound to its lab address only, RFC 868 on ``ports.time``."""
    return ["python3", f"{remote_dir}/{SERVER_PROGRAM}", "--bind", address, "--port", str(ports.tcp),
            "--proto-port", str(ports.proto), "--time-port", str(ports.time), "--quiet"]


def probe_script(host: Host, names: Iterable[str], remote_dir: str) -> str:
    """One shell line that reports the files' hashes and (on the server) the managed server's PID.

    Output lines: ``HASH  NAME`` (sha256sum), then ``SERVER PID CMDLINE-MATCHES`` when a server is
    recorded and alive.
    """
    d = shlex.quote(remote_dir)
    files = " ".join(shlex.quote(n) for n in names)
    script = f"mkdir -p {d} && cd {d} && {{ sha256sum -- {files} 2>/dev/null; "
    if host.role == "server":
        # /proc, not kill -0: a non-root user may not signal the (sudo-started) server, but can see it
        script += (f"p=$(cat {SERVER_PID} 2>/dev/null); "
                   f"if [ -n \"$p\" ] && tr '\\0' ' ' < /proc/$p/cmdline 2>/dev/null "
                   f"| grep -q {SERVER_PROGRAM}; then echo SERVER $p $(cat {SERVER_CMD}); fi; ")
    return script + "true; }"


def parse_probe(stdout: str) -> NodeState:
    state = NodeState()
    for line in stdout.splitlines():
        fields = line.split(None, 2)
        if len(fields) >= 2 and fields[0] == "SERVER" and fields[1].isdigit():
            state.server_pid = int(fields[1])
            state.server_cmd = fields[2] if len(fields) > 2 else ""
        elif len(fields) == 2 and len(fields[0]) == 64:
            state.hashes[fields[1]] = fields[0]
    return state


def probe(conn: Connection, remote_dir: str = REMOTE_DIR, scripts_dir: Path | None = None) -> NodeState:
    """Look at one node in one round trip."""
    names = list(programs_for(conn.host, scripts_dir))
    return parse_probe(conn.run(probe_script(conn.host, names, remote_dir), timeout=30).stdout)


def refuse_foreign_listener(conn: Connection, ports: Ports) -> None:
    """Raise :class:`DeployError` if something not started by deploy already listens on the TCP port.

    The time server binds with SO_REUSEPORT, so a second one could share the port unnoticed (e.g. a
    VM's provisioned ``labctl-timeserver`` unit); two servers on one port is never what anyone wants.
    """
    out = conn.run(["sh", "-c", f"ss -Hltnp 'sport = :{int(ports.tcp)}' 2>/dev/null || true"],
                   sudo=True, timeout=30).stdout.strip()
    if out:
        who = " ".join(out.split()[5:]) or out
        raise DeployError(f"{conn.host.name}: port {ports.tcp} is already in use by {who}; stop that "
                          "server (e.g. systemctl disable --now labctl-timeserver) and deploy again, "
                          "so that labctl manages the server")


def deploy_node(conn: Connection, ports: Ports, *, remote_dir: str = REMOTE_DIR, force: bool = False,
                scripts_dir: Path | None = None) -> NodeDeploy:
    """Bring one node up to date in one round trip when it is: copy what changed, (re)start the server
    if it is the server and its program or command line changed or it is not running."""
    host = conn.host
    out = NodeDeploy(host.name, host.role, host.address)
    state = probe(conn, remote_dir, scripts_dir=scripts_dir)
    changed = False
    for name, path in programs_for(host, scripts_dir).items():
        if force or state.hashes.get(name) != file_hash(path):
            conn.put(path, f"{remote_dir}/{name}", mode=0o755)
            out.copied.append(name)
            changed = True
        else:
            out.unchanged.append(name)
    if host.role == "server":
        argv = server_argv(host.address, ports, remote_dir)
        cmd = shlex.join(argv)
        running = state.server_pid is not None
        if running and not changed and not force and state.server_cmd == cmd:
            out.server = f"running pid {state.server_pid}"
            return out
        if running:
            conn.stop(state.server_pid, sig="TERM", sudo=True)
        refuse_foreign_listener(conn, ports)
        # port 37 needs root: sudo (a no-op for root) on VMs where the user is not root
        pid = conn.start(argv, log=f"{remote_dir}/{SERVER_LOG}", ready="listening", timeout=10, sudo=True)
        record = f"cd \"$1\" && echo {pid} > {SERVER_PID} && printf '%s\\n' \"$2\" > {SERVER_CMD}"
        conn.run(["sh", "-c", record, "sh", remote_dir, cmd])
        out.server = f"{'restarted' if running else 'started'} pid {pid}"
    return out


def ensure(group: Group, ports: Ports, *, remote_dir: str = REMOTE_DIR, force: bool = False,
           scripts_dir: Path | None = None) -> DeployReport:
    """Bring every host of ``group`` up to date at once (``force``: copy and restart anyway).

    A node that is already current costs one round trip; a node that fails (unreachable, a copy or
    the server's start failed) is reported with its reason, and the others go on.
    """
    t0 = time.perf_counter()
    outcome = group.map(lambda conn: deploy_node(conn, ports, remote_dir=remote_dir, force=force,
                                                 scripts_dir=scripts_dir))
    nodes = []
    for conn in group:
        name = conn.host.name
        if name in outcome.results:
            nodes.append(outcome.results[name])
        else:
            nodes.append(NodeDeploy(name, conn.host.role, conn.host.address,
                                    error=reason(outcome.failures[name])))
    return DeployReport(nodes, time.perf_counter() - t0)


def stop_server(conn: Connection, remote_dir: str = REMOTE_DIR) -> bool:
    """Stop the managed server on ``conn`` by its recorded PID (tests use it for 'server down')."""
    state = probe(conn, remote_dir)
    if state.server_pid is None:
        return False
    conn.stop(state.server_pid, sig="TERM", sudo=True)
    conn.run(["rm", "-f", f"{remote_dir}/{SERVER_PID}", f"{remote_dir}/{SERVER_CMD}"])
    return True
