"""The ``vagrant`` backend: the lab as Vagrant VMs. ``backend.py`` drives Vagrant and pins the VMs' host
keys; ``preflight.py`` checks the provider first (VirtualBox's networks.conf, a running libvirtd)."""
from labctl.backends.vagrant.backend import VagrantBackend

__all__ = ["VagrantBackend"]
