"""The docker backend: the lab file's nodes as containers on an internal Docker network, one sshd each.

Topology for a lab named ``lab`` (the daemon ``DOCKER_HOST`` names, on this machine)::

    host ── lab-dk 192.168.20.1/24 (network labctl-lab, internal) ──┬── lab-server  eth0 192.168.20.2 (sshd)
                                                                     ├── lab-client1 eth0 192.168.20.3 (sshd)
                                                                     └── ...

The network is ``internal`` (no NAT), each node's entrypoint deletes the default route Docker gives
it, and labctl's forwarding guard (an nft table per lab) drops anything routed into or out of the
bridge, which matters where dockerd runs with ``--iptables=false`` and so enforces nothing itself:
nothing a node sends can leave the lab. Each container makes its own SSH host key at first
start; labctl reads it through ``docker exec`` (the daemon's channel, never the lab network) and pins
it. From then on everything above the backends reaches the nodes over SSH exactly as it reaches
namespaces or VMs: ``inventory()`` reads only the state directory, so ``run`` and ``capture`` never
pay for the Docker SDK. (The SSH check that ends ``up`` is made above the backends, by
:mod:`labctl.bringup`; a lab this ``up`` built that fails it is removed again.)
"""
from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from labctl.backends import forward_guard
from labctl.backends.base import NODE_NOT_UP, NOT_UP, Backend, BackendError, Check, NodeStatus, Progress
from labctl.backends.docker import containers
from labctl.backends.docker.daemon import DockerUnavailable, connect, endpoint
from labctl.backends.docker.plan import NODE_INTERFACE, DockerPlan, DockerState, plan
from labctl.backends.remote_links import RemoteLinks
from labctl.errors import LabctlError
from labctl.inventory import Host, Inventory, LabNotUp
from labctl.lab import Lab
from labctl.statefiles import secure_dir, write_file

SSH_PORT = 22
STATUS_TCP_TIMEOUT = 0.5


class SubnetInUse(BackendError):
    """The lab's subnet is already routed on this host by something that is not this lab."""


def _quiet(progress: Progress | None) -> Progress:
    return progress or (lambda _msg: None)


class DockerBackend(RemoteLinks, Backend):
    """One container per node (image ``labctl-node``, built here), reached over SSH on the lab network.

    Links are shaped inside each container (``tc`` there, CAP_NET_ADMIN) as on VMs, over SSH: what the
    host's kernel offers, probed once per ``up``."""

    name = "docker"

    def __init__(self, lab: Lab, state_dir: Path) -> None:
        super().__init__(lab, Path(state_dir) / "docker")  # `labctl ssh` reads known_hosts here
        self.state = DockerState(self.state_dir)

    # --- up ------------------------------------------------------------------------------------------

    def up(self, progress: Progress | None = None, check: Check | None = None) -> Inventory:
        """Make the network and the containers (or keep a running, identical lab whose nodes pass
        ``check``); return the inventory once ``check`` (every node accepts SSH) passed."""
        from labctl.backends.docker.image import ensure_image

        say = _quiet(progress)
        check = check or (lambda _inventory: None)
        secure_dir(self.state.root)  # 0700 and ours, before anything is built (or removed) for it
        client = connect()
        wanted = plan(self.lab, ensure_image(client, say), endpoint())
        with self._exclusive():
            current = self.state.read_plan()
            self._same_daemon(current)
            if current is not None and current.complete and current.same_shape(wanted) \
                    and self._all_running(client, current):
                forward_guard.install(current.lab, current.bridge)  # repair: idempotent
                inventory = self._inventory(current)
                try:
                    check(inventory)
                    return inventory
                except LabctlError as exc:
                    say(f"{exc}: making the lab anew")
            if current is not None or containers.node_states(client, self.lab.name):
                say("removing the previous, different or incomplete lab")
                self._teardown(client)
            self._refuse_conflicts(client, wanted)
            with self._rollback_on_failure(client):
                pinned = self._build(client, wanted, say)
                inventory = self._inventory(pinned)
                check(inventory)
                self.state.write_plan(pinned)
            return inventory

    def _build(self, client: Any, lab_plan: DockerPlan, say: Progress) -> DockerPlan:
        from labctl.backends.keys import generate_keypair, write_private

        self.state.write_plan(lab_plan)  # before anything exists: down/clean can always find it
        private, public = generate_keypair(f"labctl@{lab_plan.lab}")
        write_private(self.state.client_key, private)
        write_file(f"{self.state.client_key}.pub", public + "\n", 0o644)
        say(f"network {lab_plan.network} (internal, bridge {lab_plan.bridge}, {lab_plan.subnet})")
        containers.create_network(client, lab_plan)
        if not _link_exists(lab_plan.bridge):
            raise DockerUnavailable(f"the daemon at {lab_plan.daemon} made bridge {lab_plan.bridge} "
                                    "somewhere else: the docker backend needs a daemon on this machine "
                                    "(labctl reaches the nodes on the lab network)")
        # dockerd --iptables=false enforces nothing on its bridges: the guard does, before any node runs
        forward_guard.install(lab_plan.lab, lab_plan.bridge)
        _quickack_routes(lab_plan)
        n = len(lab_plan.nodes)
        say(f"starting {n} containers ({lab_plan.image})")
        pool = ThreadPoolExecutor(max_workers=min(8, n), thread_name_prefix="docker-node")
        futures = {node.name: pool.submit(containers.start_node, client, lab_plan, node, public)
                   for node in lab_plan.nodes}
        try:
            host_keys = {name: future.result() for name, future in futures.items()}
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)  # none may still be making a container
            raise
        pool.shutdown()
        return lab_plan.pinned(host_keys)

    def _all_running(self, client: Any, lab_plan: DockerPlan) -> bool:
        states = containers.node_states(client, lab_plan.lab)
        return all(states.get(n.name) == "running" for n in lab_plan.nodes)

    def _refuse_conflicts(self, client: Any, lab_plan: DockerPlan) -> None:
        from labctl.backends.probes import subnet_users

        taken = containers.foreign_names(client, lab_plan)
        if _link_exists(lab_plan.bridge):
            taken.append(f"interface {lab_plan.bridge}")
        if taken:
            raise BackendError(f"{', '.join(taken)} already exist(s) but are not lab {lab_plan.lab}'s, so "
                               "labctl will not touch them: remove them or rename the lab (name: in the lab "
                               "file)")
        users = subnet_users(lab_plan.subnet, exclude_dev=lab_plan.bridge)
        if users:
            raise SubnetInUse(f"subnet {lab_plan.subnet} is already in use on this host "
                              f"({'; '.join(users)}): choose another private subnet in the lab file, or "
                              "remove that network")

    @contextmanager
    def _rollback_on_failure(self, client: Any) -> Iterator[None]:
        """SIGTERM becomes KeyboardInterrupt; on any failure remove what this ``up`` made."""
        in_main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, _raise_interrupt) if in_main else None
        try:
            yield
        except BaseException:
            if in_main:  # a second Ctrl-C must not stop the undo
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
            try:
                self._teardown(client)
            finally:
                if in_main:
                    signal.signal(signal.SIGINT, signal.default_int_handler)
            raise
        finally:
            if in_main:
                signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)

    # --- down / clean --------------------------------------------------------------------------------

    def down(self, progress: Progress | None = None) -> str | None:
        """Remove the lab's containers, network and state; a lab that is not up is not an error."""
        was_planned = self.state.plan_file.exists()
        removed = self._remove(_quiet(progress))
        return None if was_planned or removed else NOT_UP

    def clean(self, progress: Progress | None = None) -> list[str]:
        """Remove whatever carries the lab's label in the daemon, and its state, plan or no plan."""
        return self._remove(_quiet(progress))

    def _remove(self, say: Progress) -> list[str]:
        current = self.state.read_plan()
        self._same_daemon(current)
        try:
            client = connect()
        except DockerUnavailable:
            if current is None:  # never up here, and no daemon to hold anything of it
                self.state.remove()
                return []
            raise
        with self._exclusive():
            if current is not None:  # without a plan, only leftovers by label (said if there are any)
                say(f"removing lab {self.lab.name}'s containers and network")
            return self._teardown(client)

    def _same_daemon(self, current: DockerPlan | None) -> None:
        """Refuse to act on a lab that another daemon holds (its containers and bridge are there)."""
        if current is not None and current.daemon != endpoint():
            raise BackendError(f"lab {self.lab.name} runs in the daemon at {current.daemon}, and "
                               f"DOCKER_HOST names {endpoint()}: run again with DOCKER_HOST={current.daemon} "
                               "(e.g. to take it down first)")

    def _teardown(self, client: Any) -> list[str]:
        removed = containers.remove_lab(client, self.lab.name)
        if forward_guard.remove(self.lab.name):
            removed.append(f"nft table {forward_guard.FAMILY} {forward_guard.table_name(self.lab.name)}")
        if self.state.root.exists():
            self.state.remove()
            removed.append(f"state directory {self.state.root}")
        return removed

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        """One up/down/clean at a time on this machine (flock on the state root, released on exit)."""
        root = self.state.root.parent.parent
        try:
            root.mkdir(mode=0o755, parents=True, exist_ok=True)
            fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise BackendError(f"cannot use the state directory {root}: {exc.strerror} (choose another with "
                               "--state-dir, or run as root)") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    # --- status / inventory --------------------------------------------------------------------------

    def status(self) -> list[NodeStatus]:
        """Per node: up means its container runs and its sshd accepts TCP on the lab network."""
        current = self.state.read_plan()
        if current is None:
            return [NodeStatus(n.name, n.role, n.address, False, NODE_NOT_UP) for n in self.lab.nodes]
        if not current.complete:
            return [NodeStatus(n.name, n.role, n.address, False, "incomplete (interrupted up? run labctl "
                               "clean, or labctl up)") for n in current.nodes]
        try:
            states = containers.node_states(connect(), current.lab)
        except DockerUnavailable as exc:
            return [NodeStatus(n.name, n.role, n.address, False, str(exc)[:80]) for n in current.nodes]
        from labctl.backends.probes import tcp_accepting
        from labctl.routes import route_devices

        routes = route_devices([n.address for n in current.nodes])
        probe = [(n.address, SSH_PORT) for n in current.nodes
                 if states.get(n.name) == "running" and routes.get(n.address) == current.bridge]
        accepting = tcp_accepting(probe, STATUS_TCP_TIMEOUT)
        result = []
        for n in current.nodes:
            state = states.get(n.name)
            if state is None:
                up, detail = False, f"container {n.container} is missing"
            elif state != "running":
                up, detail = False, f"container {n.container} is {state}"
            elif routes.get(n.address) != current.bridge:
                up, detail = False, f"{n.address} does not route via {current.bridge}"
            elif (n.address, SSH_PORT) not in accepting:
                up, detail = False, f"container {n.container} runs, but sshd refuses TCP on {SSH_PORT}"
            else:
                up, detail = True, f"container {n.container}"
            result.append(NodeStatus(n.name, n.role, n.address, up, detail))
        return result

    def guard_status(self) -> str | None:
        current = self.state.read_plan()
        return forward_guard.describe(current.lab) if current is not None else None

    def node_log(self, name: str) -> str:
        """The end of the node's container log (its sshd logs to stderr), for a failed SSH check."""
        try:
            return containers.log_tail(connect(timeout=10), f"{self.lab.name}-{name}")
        except LabctlError:
            return ""

    def inventory(self) -> Inventory:
        current = self.state.read_plan()
        if current is None or not current.complete:
            why = "its last up did not finish" if current is not None else f"no plan in {self.state.root}"
            raise LabNotUp(f"lab is not up: run labctl --backend docker up (lab {self.lab.name}: {why})")
        return self._inventory(current)

    def _inventory(self, lab_plan: DockerPlan) -> Inventory:
        hosts = tuple(Host(name=n.name, role=n.role, address=n.address, port=SSH_PORT, user="root",
                           key_file=self.state.client_key, host_key=n.host_key, interface=lab_plan.bridge,
                           lab_interface=NODE_INTERFACE) for n in lab_plan.nodes)
        return Inventory(backend=self.name, hosts=hosts, lab=self.lab)


def _link_exists(name: str) -> bool:
    return os.path.exists(f"/sys/class/net/{name}")


def _quickack_routes(lab_plan: DockerPlan) -> None:
    """This host ACKs each node at once (a /32 route with quickack via the bridge, gone with it), so the
    nodes' sshd replies are not held back by Nagle for a delayed ACK, as in the netns lab. Node-to-node
    TCP, what the exercise captures, keeps Linux's defaults."""
    batch = "".join(f"route replace {n.address}/32 dev {lab_plan.bridge} scope link quickack 1\n"
                    for n in lab_plan.nodes)
    proc = subprocess.run(["ip", "-batch", "-"], input=batch, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise BackendError(f"cannot add the lab's routes via {lab_plan.bridge}: {proc.stderr.strip()}")


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")
