"""SSH key pairs labctl makes for the nodes it creates: ed25519, in-process (no ``ssh-keygen`` per node),
the private half written 0600 from its first byte (netns and docker share them)."""
from __future__ import annotations

from pathlib import Path

from labctl.statefiles import write_file


def generate_keypair(comment: str) -> tuple[bytes, str]:
    """A fresh ed25519 key: (OpenSSH private key PEM, public key line ``ssh-ed25519 AAAA... comment``)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH).decode()
    return private, f"{public} {comment}"


def write_private(path: Path, data: bytes) -> None:
    """Write a private key, 0600 from its first byte."""
    write_file(path, data, 0o600)  # atomic, never through a planted symlink
