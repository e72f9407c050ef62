"""The ``netns`` backend, the embedded default: one network namespace per node on a Linux bridge, each
node with its own sshd, on this machine.

Only this backend uses the files here: ``backend.py`` (up, down, status, inventory), ``state.py``
(what a lab is made of, by name, and its state directory), ``sshd.py`` (keys, sshd configs, starting
a node), ``linux.py`` (namespaces, mounts, ioctls, processes) and ``preflight.py`` (root and the
programs it needs). It shares ``backends/probes.py`` (routes, ports) and ``backends/keys.py`` with docker.
"""
from labctl.backends.netns.backend import NetnsBackend

__all__ = ["NetnsBackend"]
