"""Deploy: a program's server to the server node, its client to every client node.

Written against :class:`~labctl.remote.Group` and the inventory only: it works the same on network
namespaces, VMs and plain SSH hosts. :func:`ensure` is the one way to bring nodes up to date: ``labctl
deploy`` calls it, and so does ``labctl run`` before it triggers the clients.

Files go to ``~/labctl/`` on each node (SFTP and ``ssh`` commands start in the remote user's home, so
a relative path is that): the launcher ``startat.py`` (+ its parts ``startat_*.py``) everywhere,
``serverctl.py`` on the server, the built-in ``timeserver.py``/``timeclient.py`` or the program's own
files under ``programs/NAME/``. Only files whose SHA-256 differs are copied, with their mode (the
executable bit stays what it is here). The server runs as a managed process of ``serverctl.py``
(see its docstring): it is started only when it is not running with exactly this command line, and
starting it first stops, by PID, any managed server that holds its ports, and says so.
"""
from __future__ import annotations

import hashlib
import json
import shlex
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from labctl.errors import LabctlError
from labctl.inventory import Host, Inventory
from labctl.lab import Ports
from labctl.programs import LocalFile, Program, ProgramSpec, builtin, find, resolve
from labctl.remote import Connection, Group, reason

REMOTE_DIR = "labctl"  # relative: under the remote user's home (each netns node has its own /root)
SCRIPTS_DIR = Path(__file__).resolve().parent.parent / "scripts"
SERVER_PROGRAM = "timeserver.py"
SERVER_FILES = (SERVER_PROGRAM, "timeserver_protocol.py", "timeserver_limits.py",  # it imports the others
                "timeserver_lines.py")
CLIENT_PROGRAM = "timeclient.py"
LAUNCHER = "startat.py"
LAUNCHER_FILES = (LAUNCHER, "startat_check.py", "startat_output.py", "startat_hold.py")
SERVERCTL = "serverctl.py"
SERVERCTL_FILES = (SERVERCTL, "listening.py")  # it imports listening.py (and startat.py, for its checks)
SERVERS_DIR = "servers"
LEGACY_PID = "timeserver.pid"
# Our node programs are standard library only, so they run without the site module: `python3 -S`
# starts in 14 ms where a plain start took 80 here (a .pth file of the system's imports certifi),
# and a client's start is on the critical path of every run.
PYTHON = ("python3", "-S")  # where deploy used to record the built-in server (before serverctl)


class DeployError(LabctlError):
    """The programs could not be put in place or the server did not start."""


@dataclass
class NodeState:
    """What a probe found on one node: file hashes, and whether (and how) the managed server runs."""

    hashes: dict[str, str] = field(default_factory=dict)
    server_pid: int | None = None
    server_cmd: str = ""   # the command line the running server was started with
    legacy_pid: int | None = None


@dataclass
class NodeDeploy:
    """What deploy did on one node."""

    node: str
    role: str
    address: str
    copied: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    server: str = ""  # "started pid N", "restarted pid N", "running pid N" (server node only)
    stopped: list[str] = field(default_factory=list)  # servers stopped because they held our ports
    listening: list[str] = field(default_factory=list)
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
        if self.stopped:
            parts.append("stopped " + ", ".join(self.stopped))
        if self.copied:
            parts.append("copied " + ", ".join(self.copied))
        if self.unchanged:
            parts.append(f"{len(self.unchanged)} file{'s' if len(self.unchanged) != 1 else ''} unchanged")
        if self.server:
            on = f" ({', '.join(self.listening)})" if self.listening else ""
            parts.append(f"server {self.server}{on}")
        return "; ".join(parts)

    def to_json(self) -> dict:
        return {"node": self.node, "role": self.role, "address": self.address, "ok": self.ok,
                "copied": self.copied, "unchanged": self.unchanged, "server": self.server,
                "stopped": self.stopped, "listening": self.listening, "error": self.error}


@dataclass
class DeployReport:
    """Deploy's outcome, node by node (a failed node never hides the others)."""

    program: str
    nodes: list[NodeDeploy]
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return all(n.ok for n in self.nodes)

    def to_json(self) -> dict:
        return {"program": self.program, "ok": self.ok, "seconds": round(self.seconds, 3),
                "nodes": [n.to_json() for n in self.nodes]}


def file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def ports_of(inventory: Inventory) -> Ports:
    return inventory.lab.ports if inventory.lab is not None else Ports()


def program_for(inventory: Inventory, name: str | ProgramSpec | None = None) -> Program:
    """The program ``name`` (a lab file's, or built-in; default ``tcp``) resolved for this lab."""
    lab = inventory.lab
    spec = name if isinstance(name, ProgramSpec) else find(lab.programs if lab else {}, name or "tcp")
    base = lab.source.parent if lab is not None and lab.source is not None else None
    return resolve(spec, ports_of(inventory), lab_base=base)


def _scripts(names: Iterable[str], scripts_dir: Path | None) -> list[LocalFile]:
    files = [LocalFile((scripts_dir or SCRIPTS_DIR) / n, n) for n in names]
    for f in files:
        if not f.local.is_file():
            raise DeployError(f"{f.local} is missing: the node programs must be in scripts/ of the project")
    return files


def files_for(host: Host, program: Program, scripts_dir: Path | None = None) -> list[LocalFile]:
    """What a host gets: the launcher everywhere; serverctl and the server's files on the server,
    the client's files on the clients (the built-in ones from scripts/)."""
    if host.role == "server":
        files = _scripts((*SERVERCTL_FILES, *LAUNCHER_FILES), scripts_dir)
        own = _scripts(SERVER_FILES, scripts_dir) if program.server is None \
            else list(program.server.local_files)
    else:
        files = _scripts(LAUNCHER_FILES, scripts_dir)
        own = _scripts((CLIENT_PROGRAM,), scripts_dir) if program.client is None \
            else list(program.client.local_files)
    return files + own + (list(program.extra) if program.extra else [])


def builtin_server_argv(address: str, ports: Ports, remote_dir: str = REMOTE_DIR) -> list[str]:
    """The built-in server's command line: bound to its lab address only, RFC 868 on ``ports.time``."""
    return ["python3", f"{remote_dir}/{SERVER_PROGRAM}", "--bind", address, "--port", str(ports.tcp),
            "--proto-port", str(ports.proto), "--time-port", str(ports.time), "--quiet"]


server_argv = builtin_server_argv  # (the name older callers use)


def server_ports(program: Program, ports: Ports) -> list[str]:
    """The ports the server must listen on before it counts as started (N, N/tcp or N/udp)."""
    if program.server is None:
        wanted = [f"{ports.tcp}/tcp", f"{ports.tcp}/udp", f"{ports.proto}/tcp"]
        return wanted + ([f"{ports.time}/tcp", f"{ports.time}/udp"] if ports.time else [])
    return [] if program.spec.ready else [str(program.port)]


def serverctl_argv(program: Program, host: Host, ports: Ports, remote_dir: str = REMOTE_DIR) -> list[str]:
    """``serverctl.py start`` for this program's server on ``host`` (see scripts/serverctl.py)."""
    if program.server is None:
        argv = builtin_server_argv(host.address, ports, remote_dir)
    else:
        argv = program.server.argv(remote_dir, server=host.address, port=program.port, node=host.name,
                                   address=host.address)
    out = [*PYTHON, f"{remote_dir}/{SERVERCTL}", "--dir", f"{remote_dir}/{SERVERS_DIR}", "start",
           "--id", program.server_id, "--node", host.name,
           "--ready-timeout", f"{program.spec.ready_timeout:g}"]
    for port in server_ports(program, ports):
        out += ["--port", port]
    if program.server is not None and program.spec.ready:
        out += ["--ready", program.spec.ready]
    return [*out, "--cmd", shlex.join(argv), "--", *argv]


def probe_script(host: Host, names: Iterable[str], remote_dir: str, server_id: str | None = None) -> str:
    """One shell line that reports the files' hashes and (on the server) the managed server's PID.

    Output lines: ``HASH  NAME`` (sha256sum), then ``SERVER PID CMDLINE`` when the server ``server_id``
    is recorded and its keeper alive, ``LEGACY PID`` for a server an older labctl started.
    """
    d = shlex.quote(remote_dir)
    names = list(names)
    dirs = sorted({shlex.quote(n.rsplit("/", 1)[0]) for n in names if "/" in n})
    files = " ".join(shlex.quote(n) for n in names)
    script = f"mkdir -p {d} && cd {d} && {{ {'mkdir -p ' + ' '.join(dirs) + '; ' if dirs else ''}"
    script += f"sha256sum -- {files} 2>/dev/null; "
    if host.role == "server" and server_id:
        rec = shlex.quote(f"{SERVERS_DIR}/{server_id}")
        mark = shlex.quote(f"{SERVERCTL} --dir ")
        who = shlex.quote(f" start --id {server_id} ")
        # /proc, not kill -0: a non-root user may not signal the (sudo-started) server, but can see it
        script += (f"p=$(cat {rec}.pid 2>/dev/null); "
                   f"if [ -n \"$p\" ] && c=$(tr '\\0' ' ' < /proc/$p/cmdline 2>/dev/null) && "
                   f"case \"$c\" in *{mark}*{who}*) true;; *) false;; esac; "
                   f"then printf 'SERVER %s ' \"$p\"; cat {rec}.cmd 2>/dev/null || echo; fi; "
                   f"p=$(cat {LEGACY_PID} 2>/dev/null); "
                   f"if [ -n \"$p\" ] && tr '\\0' ' ' < /proc/$p/cmdline 2>/dev/null "
                   f"| grep -q {SERVER_PROGRAM}; then echo LEGACY $p; fi; ")
    return script + "true; }"


def parse_probe(stdout: str) -> NodeState:
    state = NodeState()
    for line in stdout.splitlines():
        fields = line.split(None, 2)
        if len(fields) >= 2 and fields[0] == "SERVER" and fields[1].isdigit():
            state.server_pid = int(fields[1])
            state.server_cmd = fields[2].strip() if len(fields) > 2 else ""
        elif len(fields) == 2 and fields[0] == "LEGACY" and fields[1].isdigit():
            state.legacy_pid = int(fields[1])
        elif len(line) > 66 and line[64:66] == "  " and all(c in "0123456789abcdef" for c in line[:64]):
            state.hashes[line[66:]] = line[:64]
    return state


def probe(conn: Connection, program: Program, remote_dir: str = REMOTE_DIR,
          scripts_dir: Path | None = None) -> NodeState:
    """Look at one node in one round trip."""
    names = [f.remote for f in files_for(conn.host, program, scripts_dir)]
    script = probe_script(conn.host, names, remote_dir, program.server_id)
    return parse_probe(conn.run(script, timeout=30).stdout)


def start_server(conn: Connection, program: Program, ports: Ports, out: NodeDeploy,
                 remote_dir: str = REMOTE_DIR) -> None:
    """serverctl start, with sudo (a no-op for root; port 37 needs it on VMs); fills ``out``."""
    argv = serverctl_argv(program, conn.host, ports, remote_dir)
    timeout = program.spec.ready_timeout + 30
    result = conn.run(argv, sudo=True, check=False, timeout=timeout)
    reply = _last_json(result.stdout)
    if reply is None:
        why = (result.stderr.strip().splitlines() or [f"exit status {result.exited}"])[-1]
        raise DeployError(f"serverctl gave no answer: {why}")
    out.stopped = [f"{s.get('id')} (pid {s.get('pid')}" + "".join(f", {p}" for p in s.get("ports") or [])
                   + ")" for s in reply.get("stopped") or []]
    out.listening = list(reply.get("listening") or [])
    if not reply.get("ok"):
        log = " / ".join(line for line in str(reply.get("log") or "").splitlines()[-5:] if line.strip())
        raise DeployError(f"{reply.get('error')}" + (f"; its log: {log}" if log else ""))
    out.server = f"started pid {reply.get('pid')}"


def _last_json(text: str) -> dict | None:
    for line in reversed(text.strip().splitlines()):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


def deploy_node(conn: Connection, program: Program, ports: Ports, *, remote_dir: str = REMOTE_DIR,
                force: bool = False, scripts_dir: Path | None = None) -> NodeDeploy:
    """Bring one node up to date in one round trip when it is: copy what changed, and on the server
    (re)start the program's server if its files or command line changed or it is not running."""
    host = conn.host
    out = NodeDeploy(host.name, host.role, host.address)
    state = probe(conn, program, remote_dir, scripts_dir=scripts_dir)
    for f in files_for(host, program, scripts_dir):
        if force or state.hashes.get(f.remote) != file_hash(f.local):
            mode = (f.local.stat().st_mode & 0o777) | 0o600   # its own mode; we must be able to replace it
            conn.put(f.local, f"{remote_dir}/{f.remote}", mode=mode)
            out.copied.append(f.remote)
        else:
            out.unchanged.append(f.remote)
    if host.role != "server":
        return out
    cmd = shlex.join(builtin_server_argv(host.address, ports, remote_dir) if program.server is None else
                     program.server.argv(remote_dir, server=host.address, port=program.port, node=host.name,
                                         address=host.address))
    running = state.server_pid is not None
    if running and not out.copied and not force and state.server_cmd == cmd:
        out.server = f"running pid {state.server_pid}"
        return out
    legacy = []
    if state.legacy_pid is not None:  # a server an older labctl started: stop it by its PID
        conn.stop(state.legacy_pid, sig="TERM", sudo=True)
        conn.run(["rm", "-f", f"{remote_dir}/{LEGACY_PID}"], check=False)
        legacy.append(f"timeserver (pid {state.legacy_pid})")
    start_server(conn, program, ports, out, remote_dir)
    # (the server it replaces is not "stopped": it is restarted)
    out.stopped = legacy + [s for s in out.stopped if not s.startswith(f"{program.server_id} (pid ")]
    if running:
        out.server = "re" + out.server
    return out


def ensure(group: Group, program: Program | Ports | None = None, *, ports: Ports | None = None,
           remote_dir: str = REMOTE_DIR, force: bool = False,
           scripts_dir: Path | None = None) -> DeployReport:
    """Bring every host of ``group`` up to date with ``program`` at once (``force``: copy and restart
    anyway). ``program`` None (or a :class:`Ports`, as older callers pass it) is the built-in server.

    A node that is already current costs one round trip; a node that fails (unreachable, a copy or
    the server's start failed) is reported with its reason, and the others go on.
    """
    if program is None or isinstance(program, Ports):
        ports = program if isinstance(program, Ports) else ports or Ports()
        program = resolve(builtin("tcp"), ports)
    ports = ports or Ports()
    t0 = time.perf_counter()
    outcome = group.map(lambda conn: deploy_node(conn, program, ports, remote_dir=remote_dir, force=force,
                                                 scripts_dir=scripts_dir))
    nodes = []
    for conn in group:
        name = conn.host.name
        if name in outcome.results:
            nodes.append(outcome.results[name])
        else:
            nodes.append(NodeDeploy(name, conn.host.role, conn.host.address,
                                    error=reason(outcome.failures[name])))
    return DeployReport(program.name, nodes, time.perf_counter() - t0)


def serverctl(conn: Connection, *args: str, remote_dir: str = REMOTE_DIR, timeout: float = 30) -> str:
    """Run ``serverctl.py ARGS`` on the server node (sudo: the servers run as root); its stdout."""
    argv = [*PYTHON, f"{remote_dir}/{SERVERCTL}", "--dir", f"{remote_dir}/{SERVERS_DIR}", *args]
    probe_line = f"[ -f {shlex.quote(remote_dir + '/' + SERVERCTL)} ] || {{ echo NOSERVERCTL; exit 0; }}; "
    result = conn.run(["sh", "-c", probe_line + 'exec "$@"', "sh", *argv], sudo=True, check=False,
                      timeout=timeout)
    if "NOSERVERCTL" in result.stdout:
        return ""
    if result.exited not in (0, 1):
        why = (result.stderr.strip().splitlines() or [f"exit status {result.exited}"])[-1]
        raise DeployError(f"{conn.host.name}: serverctl {args[0]} failed: {why}")
    return result.stdout


def stop_server(conn: Connection, remote_dir: str = REMOTE_DIR) -> bool:
    """Stop every managed server on ``conn``'s node by its PID (tests use it for 'server down')."""
    reply = _last_json(serverctl(conn, "stop", remote_dir=remote_dir)) or {}
    return bool(reply.get("stopped"))


def server_logs(conn: Connection, *, lines: int = 50, server_id: str | None = None,
                remote_dir: str = REMOTE_DIR) -> str:
    """The tail of each managed server's log on ``conn``'s node (``labctl logs server``)."""
    args = ["logs", "--lines", str(int(lines))] + (["--id", server_id] if server_id else [])
    return serverctl(conn, *args, remote_dir=remote_dir).rstrip() or "no server was deployed on this node"
