"""The one safe way to write into a lab's state directory (keys, known_hosts, manifests, pid files).

A state directory holds private keys and the pins labctl trusts, and labctl usually runs as root, so:

* :func:`secure_dir` creates missing directories 0700 and refuses an existing one that belongs to
  another user or that group or others may write (anyone who can write there could plant a symlink or
  swap a key);
* :func:`write_file` never follows a symlink: it writes a fresh temporary file in the same directory
  (``O_CREAT | O_EXCL | O_NOFOLLOW``, with its final mode from the first byte), fsyncs it and renames it
  over the target. ``rename`` replaces a planted symlink itself, never the file it points at;
* :func:`check_outside_node_mounts` refuses state directories that a namespace node cannot see.

Every backend (netns, vagrant, docker, ssh) and the link-impairment state write through here.
"""
from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path
from typing import BinaryIO

from labctl.errors import LabctlError

# Each namespace node bind-mounts its own private /root and /tmp over the host's, for its sshd too.
NODE_PRIVATE_DIRS = ("/tmp", "/root")


class StateDirError(LabctlError):
    """A state directory that is unsafe or unusable."""


def secure_dir(path: Path | str) -> Path:
    """Make ``path`` (and missing parents) 0700; refuse it when it is foreign-owned or writable by others.

    Parents that already exist are checked like the directory itself unless they are root-owned
    (``/run``, ``/var/lib``) or sticky (``/tmp``), where other users' entries cannot be swapped.
    """
    path = Path(os.path.abspath(path))
    missing: list[Path] = []
    p = path
    while not os.path.lexists(p):
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            os.mkdir(d, 0o700)
        except FileExistsError:
            pass
        except OSError as exc:
            raise StateDirError(f"cannot create state directory {d}: {exc.strerror} "
                                "(run as root, or choose another with --state-dir)") from None
    _check_dir(path)
    return path


def _check_dir(path: Path) -> None:
    try:
        st = os.lstat(path)
    except OSError as exc:
        raise StateDirError(f"cannot use state directory {path}: {exc.strerror}") from None
    if stat.S_ISLNK(st.st_mode):
        raise StateDirError(f"state directory {path} is a symlink; labctl does not follow it "
                            "(choose a real directory with --state-dir)")
    if not stat.S_ISDIR(st.st_mode):
        raise StateDirError(f"state directory {path} is not a directory")
    if st.st_uid != os.geteuid():
        raise StateDirError(f"state directory {path} belongs to uid {st.st_uid}, not to you "
                            f"(uid {os.geteuid()}); labctl will not keep keys there "
                            "(remove it, or choose another with --state-dir)")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise StateDirError(f"state directory {path} is writable by group or others "
                            f"(mode {stat.S_IMODE(st.st_mode):o}); run: chmod 700 {path}")
    parent = os.stat(path.parent)  # whoever may rename entries there could swap the whole directory
    if parent.st_uid not in (0, os.geteuid()) or (
            parent.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not parent.st_mode & stat.S_ISVTX):
        raise StateDirError(f"state directory {path} is in {path.parent}, which another user may change "
                            f"(owner uid {parent.st_uid}, mode {stat.S_IMODE(parent.st_mode):o}); "
                            "choose another with --state-dir")


def write_file(path: Path | str, data: str | bytes, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` atomically, without following symlinks, ``mode`` from the first byte.

    The directory must already be safe (:func:`secure_dir`); a missing one is created that way.
    """
    path = Path(path)
    secure_dir(path.parent)
    raw = data.encode() if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)  # a leftover of a crashed run of this pid (unlink never follows a symlink)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except OSError as exc:
        raise StateDirError(f"cannot write {path}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)  # the umask may have taken bits away
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def open_append(path: Path | str, mode: int = 0o600) -> BinaryIO:
    """A log file in a state directory, opened for appending without following a symlink."""
    path = Path(path)
    secure_dir(path.parent)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except OSError as exc:
        why = " (a symlink: labctl does not follow it)" if os.path.islink(path) else ""
        raise StateDirError(f"cannot write {path}: {exc.strerror}{why}") from None
    return os.fdopen(fd, "ab")


def check_outside_node_mounts(state_root: Path | str, backend: str = "netns") -> None:
    """Refuse a state directory under ``/tmp`` or ``/root``: a node's sshd sees its own there instead."""
    real = os.path.realpath(state_root)
    for private in NODE_PRIVATE_DIRS:
        if real == private or real.startswith(private + "/"):
            raise StateDirError(
                f"state directory {state_root} is under {private}, which every {backend} node replaces "
                f"with its own private {private} (so the node's sshd could not read its config and key); "
                "choose one elsewhere with --state-dir or LABCTL_STATE, e.g. /run/labctl or "
                "/var/tmp/labctl")
