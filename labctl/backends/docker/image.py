"""The lab node's image, built here (no registry needed) and cached by a hash of its recipe.

The recipe is four files: ``provision/rootfs.sh`` (the minimal Debian step shared with the Vagrant box),
``provision/node/image.sh`` (packages, labctl's sshd settings, the entrypoint, the tarball),
``provision/node/entrypoint.sh`` and ``provision/node/sshd.conf``. Their SHA-256 names the image,
``labctl-node:<12 hex digits>``, so an image is rebuilt only when the recipe changes. Three levels:

1. the daemon has the tag: nothing to do;
2. the cache directory has ``labctl-node-<hash>.tar``: ``docker import`` it (seconds);
3. otherwise run ``image.sh`` (mmdebstrap or debootstrap, 1.5-3 minutes; needs root), keep the tarball,
   import it.

Every import also tags ``labctl-node:latest``, the image ``docker-compose.yml`` names.

    python -m labctl.backends.docker.image       # build (or find) the image, print its tag
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from labctl.backends.base import BackendError, Progress

PROJECT_DIR = Path(__file__).resolve().parents[3]
RECIPE = ("provision/rootfs.sh", "provision/node/image.sh", "provision/node/entrypoint.sh",
          "provision/node/sshd.conf")
REPOSITORY = "labctl-node"
ENTRYPOINT = '["/usr/local/sbin/labctl-entrypoint"]'
COMMAND = '["/usr/sbin/sshd", "-D", "-e"]'
BUILD_TIMEOUT = 900  # s: a bootstrap from a slow mirror


class ImageError(BackendError):
    """The node image could not be built or imported; the message says why and what to do."""


def recipe_hash(project_dir: Path = PROJECT_DIR) -> str:
    """12 hex digits of SHA-256 over the recipe's paths and contents."""
    digest = hashlib.sha256()
    for name in RECIPE:
        try:
            data = (project_dir / name).read_bytes()
        except OSError as exc:
            raise ImageError(f"the node image's recipe is incomplete: {name}: {exc.strerror}") from None
        digest.update(name.encode() + b"\0" + data + b"\0")
    return digest.hexdigest()[:12]


def image_tag(project_dir: Path = PROJECT_DIR) -> str:
    """``labctl-node:<recipe hash>``."""
    return f"{REPOSITORY}:{recipe_hash(project_dir)}"


def cache_dir() -> Path:
    """Where tarballs (and debootstrap's downloads) are kept: ``LABCTL_CACHE``, else /var/cache/labctl
    as root, else ``$XDG_CACHE_HOME/labctl`` (``~/.cache/labctl``)."""
    if os.environ.get("LABCTL_CACHE"):
        return Path(os.environ["LABCTL_CACHE"])
    if os.geteuid() == 0:
        return Path("/var/cache/labctl")
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "labctl"


def tarball(tag: str, directory: Path | None = None) -> Path:
    return (directory or cache_dir()) / f"{tag.replace(':', '-')}.tar"


def build_tarball(out: Path, progress: Progress, project_dir: Path = PROJECT_DIR) -> Path:
    """Run ``provision/node/image.sh OUT`` (as root), passing its progress lines on."""
    if os.geteuid() != 0:
        raise ImageError(f"the node image is not built yet, and building it needs root (a bootstrap in a "
                         f"chroot): run sudo .venv/bin/python -m labctl.backends.docker.image once (it "
                         f"caches {out})")
    env = dict(os.environ, LABCTL_DEBOOTSTRAP_CACHE=str(out.parent / "debootstrap"))
    script = project_dir / "provision/node/image.sh"
    try:
        proc = subprocess.Popen(["bash", str(script), str(out)], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, env=env, cwd=project_dir)
    except OSError as exc:
        raise ImageError(f"cannot run {script}: {exc}") from None
    lines: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line.rstrip())
        progress(line.rstrip())
    if proc.wait(BUILD_TIMEOUT) != 0 or not out.is_file():
        raise ImageError(f"building the node image failed: {' / '.join(lines[-3:]) or 'no output'}")
    return out


def import_tarball(client: Any, path: Path, tag: str) -> None:
    """``docker import`` with the node's entrypoint and command, tagged ``tag`` and ``:latest``."""
    from labctl.backends.docker.daemon import short_error

    repository, _, version = tag.partition(":")
    changes = [f"ENTRYPOINT {ENTRYPOINT}", f"CMD {COMMAND}", f"LABEL labctl.recipe={version}"]
    try:
        client.api.import_image_from_file(str(path), repository=repository, tag=version, changes=changes)
        client.images.get(tag).tag(repository, "latest")
    except Exception as exc:  # the SDK raises APIError, ImageNotFound, requests' errors
        raise ImageError(f"docker import of {path} failed: {short_error(exc)}") from None


def has_image(client: Any, tag: str) -> bool:
    from docker.errors import ImageNotFound

    try:
        client.images.get(tag)
    except ImageNotFound:
        return False
    return True


def ensure_image(client: Any, progress: Progress | None = None, project_dir: Path = PROJECT_DIR) -> str:
    """The node image's tag, in the daemon: found, imported from the cache, or built and imported."""
    say = progress or (lambda _m: None)
    tag = image_tag(project_dir)
    if has_image(client, tag):
        return tag
    path = tarball(tag)
    if not path.is_file():
        say(f"building the node image {tag} (a minimal Debian, 1.5-3 minutes, once)")
        path.parent.mkdir(parents=True, exist_ok=True)
        build_tarball(path, say, project_dir)
        for old in path.parent.glob(f"{REPOSITORY}-*.tar"):  # an older recipe's: never used again
            if old != path:
                old.unlink(missing_ok=True)
    say(f"docker import {path.name} as {tag}")
    import_tarball(client, path, tag)
    remove_older(client, tag)
    return tag


def remove_older(client: Any, tag: str) -> list[str]:
    """Remove the node images of older recipes (not ``tag``), unless a container still uses one."""
    removed = []
    for image in client.images.list(name=REPOSITORY):
        for old in image.tags:
            if old in (tag, f"{REPOSITORY}:latest"):
                continue
            try:
                client.images.remove(old)  # the tag; the image goes with its last tag
                removed.append(old)
            except Exception:  # in use by a container (or removed by another client meanwhile): leave it
                continue
    return removed


def main(argv: list[str] | None = None) -> int:
    """Build (or find) the node image in the daemon DOCKER_HOST names; print its tag."""
    from labctl.backends.docker.daemon import connect
    from labctl.errors import LabctlError

    try:
        tag = ensure_image(connect(), lambda msg: print(f"labctl: {msg}", file=sys.stderr))
    except LabctlError as exc:
        print(f"labctl: {exc}", file=sys.stderr)
        return 1
    print(tag)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
