"""SSH key pairs labctl makes for the nodes it creates: ed25519, in-process (no ``ssh-keygen`` per node),
the private half written 0600 from its first byte (netns and docker share them)."""
from __future__ import annotations

import os
from pathlib import Path


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
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)
