"""labctl: a network lab to see what TCP and UDP put on the wire."""

__version__ = "0.1.0"
