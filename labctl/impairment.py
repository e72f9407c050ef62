"""Changing a running lab's links (``labctl impair``, ``links:`` at ``up``), above the backends.

The backend says what to do and reads back what is in force (``Backend.impair``,
``Backend.link_reports``). The namespace lab shapes its links in this machine's kernel; the backends
whose nodes are reached only over SSH (``vagrant``, ``ssh``) get ``run``: a root shell script per node,
run here through :class:`labctl.remote.Group` (pinned host keys, the route check, ``sudo -n`` for a
non-root user), so that no backend ever opens SSH itself.
"""
from __future__ import annotations

from collections.abc import Mapping

from labctl.backends.base import Backend, BackendError, LinkReport, NodeScripts, Progress
from labctl.errors import LabctlError
from labctl.links import ALL, LinkSettings, resolve, update

SCRIPT_TIMEOUT = 30.0


def node_scripts(backend: Backend) -> NodeScripts:
    """``run`` for ``backend``: each named node runs its script as root, all at once; their stdout."""
    def run(scripts: Mapping[str, str]) -> dict[str, str]:
        from labctl.remote import Group

        hosts = [h for h in backend.inventory().hosts if h.name in scripts]
        with Group(hosts, connect_timeout=getattr(backend, "ssh_timeout", 5.0)) as group:
            outcome = group.map(lambda c: c.run(["sh", "-c", scripts[c.host.name]], sudo=True,
                                                timeout=SCRIPT_TIMEOUT, check=True).stdout)
        if outcome.failures:
            lines = "; ".join(f"{name}: {exc}" for name, exc in outcome.failures.items())
            raise BackendError(f"links: {len(outcome.failures)} node(s) failed: {lines}")
        return outcome.results
    return run


def _run_for(backend: Backend) -> NodeScripts | None:
    return node_scripts(backend) if backend.shapes_over_ssh else None


def change(backend: Backend, node: str, settings: LinkSettings, *, clear: bool = False) -> list[LinkReport]:
    """``labctl impair``: ``settings`` on ``node`` (or ``all``), over what is in force there."""
    if node != ALL and node not in {n.name for n in backend.lab.nodes}:
        raise BackendError(f"no node named {node!r} (nodes: {', '.join(n.name for n in backend.lab.nodes)}; "
                           "or all)")
    wanted = update(backend.link_settings(), node, settings, clear=clear)
    return backend.impair(wanted, _run_for(backend))


def reports(backend: Backend) -> list[LinkReport]:
    """What is in force on each link. Reading fails (a node is down)? Then each report says why."""
    try:
        return backend.link_reports(_run_for(backend))
    except LabctlError as exc:
        wanted = backend.link_settings()
        return [LinkReport(name, imp, (), (f"cannot read the link: {exc}",)) for name, imp in wanted.items()
                if imp.active]


def after_up(backend: Backend, progress: Progress | None = None) -> None:
    """At ``up``, for backends that shape over SSH: make the links what the lab file's ``links:`` says.

    (The namespace lab does this inside its own ``up``.) A lab without ``links:`` that labctl never
    shaped costs nothing here.
    """
    if not backend.shapes_over_ssh:
        return
    backend.forget_link_kernels()
    wanted = resolve(backend.lab.links, [n.name for n in backend.lab.nodes])
    if any(imp.active for imp in wanted.values()) or any(i.active for i in backend.link_settings().values()):
        if progress:
            progress("links: " + "; ".join(f"{name} {imp.describe()}" for name, imp in wanted.items()
                                           if imp.active) or "links: clearing labctl's shaping")
        backend.impair(wanted, node_scripts(backend))


def before_down(backend: Backend, progress: Progress | None = None) -> None:
    """Before ``down`` of machines that stay (the ``ssh`` backend): remove labctl's shaping from them."""
    if not (backend.shapes_over_ssh and getattr(backend, "links_survive_down", False)):
        return
    shaped = [name for name, imp in backend.link_settings().items() if imp.active]
    if shaped:
        if progress:
            progress(f"removing labctl's tc shaping from {', '.join(shaped)}")
        backend.impair({}, node_scripts(backend))
