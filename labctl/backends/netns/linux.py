"""Thin Linux primitives for the namespace lab: namespaces, mounts, interface ioctls, processes.

Everything here talks to the kernel directly (ctypes/ioctl) so that bringing up a node costs one
``fork`` and one ``exec`` (sshd), not a chain of ``ip netns exec``/``unshare``/``mount``/``ethtool``.
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import signal
import socket
import struct
import time
from collections.abc import Iterable
from pathlib import Path

NETNS_RUN_DIR = Path("/run/netns")

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWNET = 0x40000000
MS_BIND = 4096
MS_REC = 16384
MS_SLAVE = 1 << 19
MNT_DETACH = 2

SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
SIOCSIFADDR = 0x8916
SIOCSIFNETMASK = 0x891C
SIOCETHTOOL = 0x8946
ETHTOOL_GTXCSUM = 0x16
ETHTOOL_STXCSUM = 0x17
IFF_UP = 0x1

RTM_NEWROUTE = 24
NLMSG_ERROR = 2
NLM_F_REQUEST, NLM_F_ACK, NLM_F_REPLACE, NLM_F_CREATE = 0x1, 0x4, 0x100, 0x400
RT_TABLE_MAIN, RTPROT_BOOT, RT_SCOPE_LINK, RTN_UNICAST = 254, 3, 253, 1
RTA_DST, RTA_OIF, RTA_METRICS = 1, 4, 8
RTAX_QUICKACK = 15

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def setns(path: Path | str, nstype: int) -> None:
    """Move the calling process into the namespace file ``path`` (e.g. /run/netns/NAME)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        _check(_libc.setns(fd, nstype), f"setns {path}")
    finally:
        os.close(fd)


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), "unshare")


def mount(source: str, target: str, fstype: str | None, flags: int) -> None:
    _check(_libc.mount(source.encode(), target.encode(), fstype.encode() if fstype else None,
                       ctypes.c_ulong(flags), None), f"mount {source} on {target}")


def umount_lazy(target: str) -> None:
    _check(_libc.umount2(target.encode(), MNT_DETACH), f"umount {target}")


def sethostname(name: str) -> None:
    raw = name.encode()
    _check(_libc.sethostname(raw, len(raw)), "sethostname")


# --- interfaces, by ioctl on a socket of the current network namespace -------------------------------

def _ifreq(name: str, payload: bytes = b"") -> bytes:
    return struct.pack("16s", name.encode()) + payload.ljust(24, b"\0")


def set_up(sock: socket.socket, name: str) -> None:
    """``ip link set NAME up``."""
    res = fcntl.ioctl(sock.fileno(), SIOCGIFFLAGS, _ifreq(name))
    flags = struct.unpack_from("H", res, 16)[0]
    fcntl.ioctl(sock.fileno(), SIOCSIFFLAGS, _ifreq(name, struct.pack("H", flags | IFF_UP)))


def set_ipv4(sock: socket.socket, name: str, address: str, prefixlen: int) -> None:
    """``ip addr add ADDRESS/PREFIXLEN dev NAME`` (the kernel adds the connected route)."""
    def sockaddr(addr: str) -> bytes:
        return struct.pack("HH4s8x", socket.AF_INET, 0, socket.inet_aton(addr))

    mask = socket.inet_ntoa(struct.pack("!I", (0xFFFFFFFF << (32 - prefixlen)) & 0xFFFFFFFF))
    fcntl.ioctl(sock.fileno(), SIOCSIFADDR, _ifreq(name, sockaddr(address)))
    fcntl.ioctl(sock.fileno(), SIOCSIFNETMASK, _ifreq(name, sockaddr(mask)))


def tx_checksum(sock: socket.socket, name: str, on: bool | None = None) -> bool:
    """Read (``on=None``) or set TX checksum offload, as ``ethtool -K NAME tx on|off`` does.

    With it off the kernel fills in checksums before a packet reaches tcpdump, so captures show
    no bogus "incorrect checksum"; TSO goes off with it, so segments on the wire are MTU-sized.
    """
    value = (ctypes.c_uint32 * 2)(ETHTOOL_GTXCSUM if on is None else ETHTOOL_STXCSUM, int(bool(on)))
    ifr = struct.pack("16sP", name.encode(), ctypes.addressof(value)).ljust(40, b"\0")
    fcntl.ioctl(sock.fileno(), SIOCETHTOOL, ifr)
    return bool(value[1])


def add_quickack_route(address: str, ifname: str) -> None:
    """``ip route replace ADDRESS/32 dev IFNAME scope link quickack 1``, by rtnetlink.

    Route metrics (quickack) cannot be set by ioctl, so this speaks rtnetlink directly: one
    RTM_NEWROUTE with RTA_DST, RTA_OIF and RTA_METRICS{RTAX_QUICKACK}, then read the kernel's ack.
    """
    def attr(kind: int, payload: bytes) -> bytes:
        raw = struct.pack("HH", 4 + len(payload), kind) + payload
        return raw + b"\0" * (-len(raw) % 4)

    metrics = attr(RTAX_QUICKACK, struct.pack("I", 1))
    body = struct.pack("BBBBBBBBI", socket.AF_INET, 32, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT, RT_SCOPE_LINK,
                       RTN_UNICAST, 0)
    body += attr(RTA_DST, socket.inet_aton(address))
    body += attr(RTA_OIF, struct.pack("I", socket.if_nametoindex(ifname)))
    body += attr(RTA_METRICS, metrics)
    flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE
    message = struct.pack("IHHII", 16 + len(body), RTM_NEWROUTE, flags, 1, 0) + body
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as nl:
        nl.sendto(message, (0, 0))
        reply = nl.recv(4096)
    kind = struct.unpack_from("H", reply, 4)[0]
    if kind == NLMSG_ERROR:
        err = -struct.unpack_from("i", reply, 16)[0]
        if err:
            raise OSError(err, f"route {address}/32 dev {ifname} quickack 1: {os.strerror(err)}")


def link_exists(name: str) -> bool:
    return os.path.exists(f"/sys/class/net/{name}")


def netns_path(name: str) -> Path:
    return NETNS_RUN_DIR / name


def netns_exists(name: str) -> bool:
    return netns_path(name).exists()


def netns_id(name: str) -> tuple[int, int] | None:
    """(dev, inode) of a named network namespace, or None when it does not exist."""
    try:
        st = os.stat(netns_path(name))
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


# --- processes ---------------------------------------------------------------------------------------

def process_alive(pid: int) -> bool:
    """True when ``pid`` runs and is not a zombie (PID 1 does not always reap orphans)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rindex(b")") + 2:][:1] not in (b"Z", b"X")


def process_netns(pid: int) -> tuple[int, int] | None:
    try:
        st = os.stat(f"/proc/{pid}/ns/net")
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def pids_in_netns(namespaces: Iterable[tuple[int, int]]) -> list[int]:
    """Every live process whose network namespace is one of ``namespaces`` ((dev, inode) pairs)."""
    wanted = set(namespaces)
    if not wanted:
        return []
    me = os.getpid()
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != me and process_netns(int(entry)) in wanted:
            found.append(int(entry))
    return found


def kill_and_wait(pids: Iterable[int], timeout: float = 1.0) -> list[int]:
    """SIGTERM ``pids``, SIGKILL whatever still runs after ``timeout``; return the pids that were alive."""
    alive = [p for p in set(pids) if p > 1 and process_alive(p)]
    for pid in alive:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    pending = list(alive)
    delay = 0.001
    while pending:
        pending = [p for p in pending if process_alive(p)]
        if not pending:
            break
        if time.monotonic() > deadline:
            for pid in pending:
                _signal(pid, signal.SIGKILL)
            deadline = time.monotonic() + 5.0
        time.sleep(delay)
        delay = min(delay * 2, 0.02)
    return alive


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except OSError as exc:
        if exc.errno != errno.ESRCH:
            raise
