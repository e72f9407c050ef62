"""Bringing a lab up, above the backends: the backend realises it, and every node must accept SSH.

The check is made here, the same for every backend, and handed to ``backend.up`` so that a lab it
built and that fails the check (or is interrupted meanwhile) is rolled back as a whole. It is one
authenticated SSH session per node, all at once, through :class:`labctl.remote.Group` with the
inventory's pinned host keys, after one route check for all of them (a node whose address would
leave by the wrong interface is refused, the others are still checked).
``status`` asks the backend, and opens SSH sessions only for the nodes the backend cannot judge
(the ``ssh`` backend's hosts).
"""
from __future__ import annotations

import importlib
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, TypeVar

from labctl.backends.base import Backend, NodeStatus, Progress
from labctl.errors import LabctlError
from labctl.inventory import Inventory

if TYPE_CHECKING:
    from labctl.remote import Connection

T = TypeVar("T")


class NodesUnreachable(LabctlError):
    """Some nodes of a lab that is up do not accept SSH; the message names each and says why."""


def up(backend: Backend, progress: Progress | None = None) -> Inventory:
    """``backend.up()``, which ends with the check that every node accepts an SSH session."""
    say = progress or (lambda _msg: None)

    def check(inventory: Inventory) -> None:
        say(f"checking SSH on {len(inventory)} nodes")
        check_ssh(inventory, backend)

    _prewarm_remote()
    inventory = backend.up(say, check)
    from labctl import impairment

    impairment.after_up(backend, say)  # the lab file's links: where they are set over SSH (VMs, hosts)
    return inventory


def check_ssh(inventory: Inventory, backend: Backend) -> None:
    """Raise :class:`NodesUnreachable` unless every host accepts an authenticated SSH session."""
    _, failures = _on_every_host(inventory, backend.ssh_timeout, lambda conn: conn.open())
    if not failures:
        return
    lines = []
    for name, exc in failures.items():
        log = backend.node_log(name)
        lines.append(f"{name}: {exc}" + (f" (sshd log: {log})" if log else ""))
    raise NodesUnreachable(f"{len(failures)} of {len(inventory)} nodes do not accept SSH: {'; '.join(lines)}"
                           " (labctl status shows each node; labctl up again retries, labctl down removes "
                           "what labctl made)")


def status(backend: Backend) -> list[NodeStatus]:
    """Each node, up or not: the backend's view, and an SSH session where the backend cannot tell."""
    nodes = backend.status()
    unknown = {n.name for n in nodes if n.up is None}
    if not unknown:
        return nodes
    inventory = backend.inventory()
    asked = Inventory(inventory.backend, tuple(h for h in inventory if h.name in unknown))
    timeout = backend.ssh_timeout
    answers, failures = _on_every_host(asked, timeout,
                                       lambda c: c.run(["uname", "-n"], timeout=timeout).stdout.strip())
    hosts = {h.name: h for h in asked}
    result = []
    for n in nodes:
        if n.up is None:
            h = hosts[n.name]
            where = f"{h.user}@{h.address}:{h.port}"
            n = replace(n, up=n.name in answers, detail=f"{where} ({answers[n.name]})" if n.name in answers
                        else f"{where}: {failures.get(n.name)}")
        result.append(n)
    return result


def _on_every_host(inventory: Inventory, timeout: float, fn: Callable[[Connection], T]
                   ) -> tuple[dict[str, T], dict[str, BaseException]]:
    """``fn(connection)`` on every host at once: (results, failures) per host name, in inventory order.

    One route check for all hosts first; a host it refuses is that host's failure, never a connection.
    """
    from labctl.remote import Connection, Group
    from labctl.safety import unsafe_hosts

    refused = unsafe_hosts(inventory.hosts)
    connections = [Connection(h, connect_timeout=timeout, route_checked=True)
                   for h in inventory if h.name not in refused]
    with Group.from_connections(connections) as group:
        outcome = group.map(fn)
    failures: dict[str, BaseException] = {**refused, **outcome.failures}
    return outcome.results, {h.name: failures[h.name] for h in inventory if h.name in failures}


def _prewarm_remote() -> None:
    """Import labctl.remote (paramiko, ~100 ms) in a thread while the backend brings the nodes up."""
    prewarm("labctl.remote")


def prewarm(*modules: str) -> None:
    """Import ``modules`` in a thread while this one waits for something else (a lab's sshds, the
    nodes' answers): the import's CPU is then off the wall-clock path. A module already there is
    skipped; whoever imports it meanwhile waits for the import under way (the import lock)."""
    todo = [m for m in modules if m not in sys.modules]
    if not todo:
        return
    # The thread inherits the signal mask: blocked there, Ctrl-C always lands in the main thread.
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        threading.Thread(target=_import_quietly, args=(todo,), daemon=True, name="prewarm").start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _import_quietly(modules: list[str]) -> None:
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception:  # (whoever needs it imports it again and says what is wrong)
            return
