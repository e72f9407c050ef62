"""The embedded lab: one network namespace per node on a Linux bridge, each node with its own sshd.

Topology for the default lab.yml (lab name ``lab``)::

    host ── lab-br 192.168.20.1/24 ──┬── lab-srv ══ eth0 192.168.20.2  (netns lab-server, sshd)
                                     ├── lab-c1  ══ eth0 192.168.20.3  (netns lab-client1, sshd)
                                     └── ...

Namespaces have no default route: nothing they send can leave the lab. ``up`` writes the plan (every
name it will create) to the state directory before creating anything, so ``down``/``clean`` remove
exactly what is theirs, and a Ctrl-C or SIGTERM during ``up`` rolls back what was made so far.
"""
from __future__ import annotations

import fcntl
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from labctl.backends import forward_guard
from labctl.backends.base import NODE_NOT_UP, NOT_UP, Backend, BackendError, Check, NodeStatus, Progress
from labctl.backends.keys import generate_keypair
from labctl.backends.netns import links as netns_links
from labctl.backends.netns import linux
from labctl.backends.netns.state import NODE_INTERFACE, LabPlan, NodePlan, StateDir, plan
from labctl.backends.probes import subnet_users, tcp_accepting
from labctl.inventory import Host, Inventory, LabNotUp
from labctl.lab import Lab
from labctl.statefiles import check_outside_node_mounts, secure_dir, write_file

SSH_PORT = 22
READY_TIMEOUT = 10.0     # seconds for every sshd to listen
STATUS_TCP_TIMEOUT = 0.5  # seconds for a node's port 22 to accept a TCP connection in `status`
VETH_GRACE = 2.0          # seconds for the kernel to destroy a deleted namespace's veths


class SubnetInUse(BackendError):
    """The lab's subnet is already routed on this host by something that is not this lab."""


class NodeFailed(BackendError):
    """A node did not come up; the message names it and says why."""


def _quiet(progress: Progress | None) -> Progress:
    return progress or (lambda _msg: None)


class NetnsBackend(netns_links.NetnsLinks, Backend):
    """The default backend: real namespaces, a real bridge and a real sshd per node, on this machine."""

    name = "netns"

    def __init__(self, lab: Lab, state_dir: Path) -> None:
        super().__init__(lab, state_dir)
        self.state = StateDir(state_dir)
        self._spawned: list[int] = []  # node processes this object started: rollback kills them too

    # --- up ------------------------------------------------------------------------------------------

    def up(self, progress: Progress | None = None, check: Check | None = None) -> Inventory:
        """Build the lab (or repair it: restart dead sshds); return its inventory once every sshd listens."""
        from labctl.backends.netns import preflight

        say = _quiet(progress)
        preflight.require_netns()
        check_outside_node_mounts(self.state.root)
        made_root = not self.state.root.exists()
        secure_dir(self.state.root)  # 0700 and ours, before anything is built (or removed) for it
        try:
            with self._exclusive():
                return self._up(say, check or (lambda _inventory: None))
        except BaseException:
            if made_root:  # refused before anything was built (a conflict, a subnet in use): no leftover
                _remove_if_empty(self.state.root)
            raise

    def _up(self, say: Progress, check: Check) -> Inventory:
        wanted = plan(self.lab)
        current = self.state.read_plan()
        if current is not None and current.complete and current.same_shape(wanted) \
                and self._structure_intact(current):
            with self._rollback_on_interrupt(None):
                forward_guard.install(current.lab, current.bridge)  # repair: idempotent
                self._restart_dead(current, say)
                inventory = self._inventory(current)
                check(inventory)
        else:
            if current is not None:
                say("removing the previous, different or incomplete lab")
                self._teardown(current)
            self._refuse_conflicts(wanted)  # refused: up() removes the state dir it made
            with self._rollback_on_interrupt(wanted):
                self._build(wanted, say)
                inventory = self._inventory(wanted)
                check(inventory)
                self.state.write_plan(_completed(wanted))
        self._spawned.clear()  # they run now; from here on down finds them by pid file and namespace
        netns_links.on_up(self.state.read_plan(), self.state.root, self.lab)  # probe the kernel, apply links:
        return inventory

    def _build(self, lab_plan: LabPlan, say: Progress) -> None:
        from labctl.backends.netns import sshd

        self.state.write_plan(lab_plan)  # before anything exists: down/clean can always find it
        self.state.client_key.unlink(missing_ok=True)
        n = len(lab_plan.nodes)
        say(f"keys and sshd configs for {n} nodes")
        private, public = generate_keypair(f"labctl@{lab_plan.lab}")
        write_file(self.state.client_key, private)
        write_file(f"{self.state.client_key}.pub", public + "\n", 0o644)
        write_file(self.state.authorized_keys, public + "\n")
        host_keys = {node.name: sshd.prepare_node(node, self.state, f"labctl@{lab_plan.lab}")
                     for node in lab_plan.nodes}
        write_file(self.state.known_hosts, "".join(f"{node.address} {host_keys[node.name]}\n"
                                                   for node in lab_plan.nodes), 0o644)
        say(f"bridge {lab_plan.bridge} and {n} namespaces")
        _ip_batch(_create_commands(lab_plan))
        forward_guard.install(lab_plan.lab, lab_plan.bridge)  # before any node runs: nothing leaves the lab
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for node in lab_plan.nodes:
                linux.tx_checksum(sock, node.veth, False)
        say(f"starting {n} sshds")
        sshd.PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
        pids = {node.name: sshd.start_sshd(node, self.state, lab_plan, self._spawned.append)
                for node in lab_plan.nodes}
        self._wait_listening(lab_plan, pids)

    def _restart_dead(self, lab_plan: LabPlan, say: Progress) -> None:
        from labctl.backends.netns import sshd

        dead = [node for node in lab_plan.nodes if self._sshd_pid(node) is None]
        if not dead:
            return
        say(f"restarting sshd on {', '.join(n.name for n in dead)}")
        for node in dead:
            self.state.pid_file(node.name).unlink(missing_ok=True)
        pids = {node.name: sshd.start_sshd(node, self.state, lab_plan, self._spawned.append)
                for node in dead}
        self._wait_listening(lab_plan, pids)

    def _wait_listening(self, lab_plan: LabPlan, pids: dict[str, int]) -> None:
        """Wait until every started sshd has written its pid file (it does so once it listens)."""
        waiting = {node.name: node for node in lab_plan.nodes if node.name in pids}
        deadline = time.monotonic() + READY_TIMEOUT
        delay = 0.002
        while waiting:
            for name in list(waiting):
                if self.state.read_pid(name) == pids[name]:
                    del waiting[name]
                elif not linux.process_alive(pids[name]):
                    why = self.state.log_tail(name) or "it exited without a word"
                    raise NodeFailed(f"node {name} did not come up: its sshd exited ({why})")
            if not waiting:
                return
            if time.monotonic() > deadline:
                names = ", ".join(waiting)
                raise NodeFailed(f"node(s) {names} did not come up: sshd not listening after "
                                 f"{READY_TIMEOUT:.0f} s (log: {self.state.log_tail(next(iter(waiting)))})")
            time.sleep(delay)
            delay = min(delay * 1.5, 0.02)

    def _refuse_conflicts(self, lab_plan: LabPlan) -> None:
        """Refuse names that exist without being ours, and a subnet something else routes."""
        taken = [f"network namespace {n.netns}" for n in lab_plan.nodes if linux.netns_exists(n.netns)]
        taken += [f"interface {name}" for name in [lab_plan.bridge, *(n.veth for n in lab_plan.nodes)]
                  if linux.link_exists(name)]
        if taken:
            raise BackendError(f"{', '.join(taken[:4])}{' ...' if len(taken) > 4 else ''} already "
                               f"exist(s) but {self.state.manifest} does not list them, so labctl will not "
                               f"touch them: remove them (ip netns del NAME / ip link del NAME) or rename "
                               f"the lab (name: in the lab file)")
        users = subnet_users(lab_plan.subnet, exclude_dev=lab_plan.bridge)
        if users:
            raise SubnetInUse(f"subnet {lab_plan.subnet} is already in use on this host "
                              f"({'; '.join(users)}): choose another private subnet in the lab file "
                              f"(subnet, host_address, server_address), or remove that network")

    @contextmanager
    def _rollback_on_interrupt(self, lab_plan: LabPlan | None) -> Iterator[None]:
        """Turn SIGTERM into KeyboardInterrupt; on any failure remove what ``lab_plan`` made."""
        in_main = threading.current_thread() is threading.main_thread()
        previous_term = signal.signal(signal.SIGTERM, _raise_interrupt) if in_main else None
        previous_int = signal.getsignal(signal.SIGINT) if in_main else None
        try:
            yield
        except BaseException:
            if lab_plan is not None:
                if in_main:
                    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not stop the undo
                    signal.signal(signal.SIGTERM, signal.SIG_IGN)
                self._teardown(lab_plan)
            raise
        finally:
            if in_main:  # getsignal() says None for a handler set outside Python: leave that one
                signal.signal(signal.SIGTERM, previous_term if previous_term is not None else signal.SIG_DFL)
                if previous_int is not None:
                    signal.signal(signal.SIGINT, previous_int)

    # --- down / clean --------------------------------------------------------------------------------

    def down(self, progress: Progress | None = None) -> str | None:
        with self._exclusive():
            current = self.state.read_plan()
            if current is None:
                return NOT_UP
            self._teardown(current)
            return None

    def clean(self, progress: Progress | None = None) -> list[str]:
        """Remove whatever the manifest names and still exists (after a crash or a kill -9)."""
        with self._exclusive():
            current = self.state.read_plan()
            if current is None:
                removed = netns_links.remove(self.lab.name, self.state.root)
                if forward_guard.remove(self.lab.name):
                    removed.append(f"nft table inet {forward_guard.table_name(self.lab.name)}")
                if self.state.root.exists():  # state without a manifest: only files, all ours
                    shutil.rmtree(self.state.root)
                    removed.append(f"state directory {self.state.root}")
                return removed
            return self._teardown(current)

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        """One up/down/clean at a time on this machine (flock on the state root, released on exit)."""
        root = self.state.root.parent
        try:
            root.mkdir(mode=0o755, parents=True, exist_ok=True)
            fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except PermissionError:
            raise BackendError(f"cannot use {root}: the namespace lab needs root "
                               "(e.g. sudo .venv/bin/python labctl.py ...)") from None
        except OSError as exc:  # a file where the directory should be, a name too long, ...
            raise BackendError(f"cannot use the state directory {root}: {exc.strerror or exc} "
                               "(choose another with --state-dir)") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _teardown(self, lab_plan: LabPlan) -> list[str]:
        """Kill every process in the lab's namespaces, delete its namespaces and links, drop its state.

        Namespaces go first, with the bridge, in one ``ip -batch``: the kernel then destroys all their
        veths in one batched cleanup (~50 ms for 32 nodes) instead of one RCU wait per ``link del``
        (~20 ms each). Veths still there after ``VETH_GRACE`` (a namespace kept alive from outside)
        are deleted one by one.
        """
        removed: list[str] = netns_links.remove(lab_plan.lab, self.state.root)  # first: its sockets pin netns
        namespaces = [nsid for n in lab_plan.nodes if (nsid := linux.netns_id(n.netns)) is not None]
        pids = {pid for n in lab_plan.nodes if (pid := self._owned_sshd_pid(n)) is not None}
        pids.update(self._spawned)  # started by this run, maybe before joining their namespace
        self._spawned.clear()
        killed: list[int] = []
        for _ in range(3):  # again, in case a dying session forked just before it was signalled
            pids.update(linux.pids_in_netns(namespaces))
            if not pids:
                break
            killed += linux.kill_and_wait(pids)
            pids = set()
        if killed:
            removed.append(f"{len(killed)} process(es)")
        netns = [n.netns for n in lab_plan.nodes if linux.netns_exists(n.netns)]
        veths = [n.veth for n in lab_plan.nodes if linux.link_exists(n.veth)]
        bridge = [lab_plan.bridge] if linux.link_exists(lab_plan.bridge) else []
        commands = [f"netns del {name}" for name in netns] + [f"link del {name}" for name in bridge]
        if commands:
            _ip_batch(commands, force=True)
        deadline = time.monotonic() + VETH_GRACE
        while (left := [v for v in veths if linux.link_exists(v)]) and time.monotonic() < deadline:
            time.sleep(0.002)
        if left:
            _ip_batch([f"link del {name}" for name in left], force=True)
        left = [name for name in (*bridge, *veths) if linux.link_exists(name)] + \
               [name for name in netns if linux.netns_exists(name)]
        if left:
            raise BackendError(f"could not remove {', '.join(left)} (see `ip link` / `ip netns list`); "
                               f"the manifest {self.state.manifest} is kept for labctl clean")
        removed += [_names("namespace", netns), _names("interface", [*bridge, *veths])]
        if forward_guard.remove(lab_plan.lab):
            removed.append(f"nft table {forward_guard.FAMILY} {forward_guard.table_name(lab_plan.lab)}")
        if self.state.root.exists():
            shutil.rmtree(self.state.root)
            removed.append(f"state directory {self.state.root}")
        return [item for item in removed if item]

    # --- status / inventory --------------------------------------------------------------------------

    def status(self) -> list[NodeStatus]:
        """Per node: up means its sshd (pid file) runs in the node's namespace and port 22 accepts TCP."""
        current = self.state.read_plan()
        if current is None:
            return [NodeStatus(n.name, n.role, n.address, False, NODE_NOT_UP) for n in self.lab.nodes]
        if not current.complete:
            return [NodeStatus(n.name, n.role, n.address, False, "incomplete (interrupted up? run labctl "
                               "clean, or labctl up)") for n in current.nodes]
        from labctl.routes import route_devices

        routes = route_devices([n.address for n in current.nodes])
        running = {n.name: self._sshd_pid(n) for n in current.nodes}
        reachable = [n for n in current.nodes if running[n.name] and routes.get(n.address) == current.bridge]
        accepting = tcp_accepting([(n.address, SSH_PORT) for n in reachable], STATUS_TCP_TIMEOUT)
        result = []
        for n in current.nodes:
            if not linux.netns_exists(n.netns):
                up, detail = False, f"namespace {n.netns} is missing"
            elif running[n.name] is None:
                up, detail = False, "sshd is not running"
            elif routes.get(n.address) != current.bridge:
                up, detail = False, f"{n.address} does not route via {current.bridge}"
            elif (n.address, SSH_PORT) not in accepting:
                up, detail = False, f"sshd (pid {running[n.name]}) does not accept TCP on port {SSH_PORT}"
            else:
                up, detail = True, f"sshd pid {running[n.name]}"
            result.append(NodeStatus(n.name, n.role, n.address, up, detail))
        return result

    def guard_status(self) -> str | None:
        current = self.state.read_plan()
        return forward_guard.describe(current.lab) if current is not None else None

    def node_log(self, name: str) -> str:
        return self.state.log_tail(name)

    def inventory(self) -> Inventory:
        current = self.state.read_plan()
        if current is None or not current.complete:
            why = "its last up did not finish" if current is not None else f"no manifest in {self.state.root}"
            raise LabNotUp(f"lab is not up: run labctl up (lab {self.lab.name}: {why})")
        return self._inventory(current)

    def _inventory(self, lab_plan: LabPlan) -> Inventory:
        hosts = []
        for node in lab_plan.nodes:
            try:
                host_key = " ".join(Path(f"{self.state.host_key(node.name)}.pub").read_text().split()[:2])
            except OSError:
                raise LabNotUp(f"lab {lab_plan.lab}: node {node.name} has no host key in {self.state.root}: "
                               f"run labctl up") from None
            hosts.append(Host(name=node.name, role=node.role, address=node.address, port=SSH_PORT,
                              user="root", key_file=self.state.client_key, host_key=host_key,
                              interface=lab_plan.bridge, lab_interface=NODE_INTERFACE))
        return Inventory(backend=self.name, hosts=tuple(hosts), lab=self.lab)

    # --- helpers -------------------------------------------------------------------------------------

    def _structure_intact(self, lab_plan: LabPlan) -> bool:
        return linux.link_exists(lab_plan.bridge) and all(
            linux.netns_exists(n.netns) and linux.link_exists(n.veth) for n in lab_plan.nodes)

    def _sshd_pid(self, node: NodePlan) -> int | None:
        """The node's sshd pid if it runs in the node's namespace (guards against a reused pid)."""
        pid = self.state.read_pid(node.name)
        nsid = linux.netns_id(node.netns)
        if pid is None or nsid is None or not linux.process_alive(pid) or linux.process_netns(pid) != nsid:
            return None
        return pid

    def _owned_sshd_pid(self, node: NodePlan) -> int | None:
        """The pid in the node's pid file if that process is our sshd (its command line names our config)."""
        pid = self.state.read_pid(node.name)
        if pid is None or not linux.process_alive(pid):
            return None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return None
        return pid if str(self.state.sshd_config(node.name)).encode() in cmdline else None


def _names(kind: str, names: list[str]) -> str:
    """``2 namespaces (lab-server, lab-client1)``; long lists shortened to first .. last."""
    if not names:
        return ""
    shown = ", ".join(names) if len(names) <= 4 else f"{names[0]}, {names[1]} .. {names[-1]}"
    return f"{len(names)} {kind}{'s' if len(names) > 1 else ''} ({shown})"


def _completed(lab_plan: LabPlan) -> LabPlan:
    from dataclasses import replace

    return replace(lab_plan, complete=True, owner_pid=os.getpid())


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _create_commands(lab_plan: LabPlan) -> list[str]:
    """The `ip -batch` lines that make the bridge, the namespaces and the veths (configured later)."""
    net = ipaddress.IPv4Network(lab_plan.subnet)
    cmds = [f"link add {lab_plan.bridge} type bridge",
            f"addr add {lab_plan.host_address}/{lab_plan.prefixlen} dev {lab_plan.bridge} noprefixroute",
            f"link set {lab_plan.bridge} up",
            # quickack: this host ACKs lab traffic at once, so sshd's small replies are not held back by
            # Nagle for a delayed ACK (40 ms per SSH request). Node-to-node TCP, what the exercise
            # captures, keeps Linux's default delayed ACKs: the nodes' own routes are untouched.
            f"route add {net} dev {lab_plan.bridge} src {lab_plan.host_address} quickack 1"]
    for node in lab_plan.nodes:
        cmds += [f"netns add {node.netns}",
                 f"link add {node.veth} type veth peer name {NODE_INTERFACE} netns {node.netns}",
                 f"link set {node.veth} master {lab_plan.bridge} up"]
    return cmds


def _ip_batch(commands: list[str], *, force: bool = False) -> None:
    argv = ["ip", *(["-force"] if force else []), "-batch", "-"]
    proc = subprocess.run(argv, input="\n".join(commands) + "\n", capture_output=True, text=True, check=False)
    if proc.returncode != 0 and not force:
        raise BackendError(f"ip -batch failed: {proc.stderr.strip()}")


def _remove_if_empty(path: Path) -> None:
    """Remove the directory ``path`` if nothing is in it (it was made for a lab that never came up)."""
    with suppress(OSError):
        path.rmdir()
