"""The ``docker`` backend: one container per node on an internal Docker network, each with its own sshd.

``backend`` (up, down, status, inventory), ``containers`` (the daemon side: network, containers, host
keys), ``plan`` (names and state), ``image`` (the node image, built locally and cached), ``daemon``
(the client for ``DOCKER_HOST``, and a private dockerd for tests and CI), ``compose`` (docker-compose.yml
from the lab file).
"""
from labctl.backends.docker.backend import DockerBackend

__all__ = ["DockerBackend"]
