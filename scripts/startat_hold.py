"""startat_hold.py: startat.py's hold, a seccomp filter that hands a program's first network call to
the launcher (stdlib only: ctypes; Linux >= 5.6 on x86-64 or aarch64).

startat.py works without this file (it then sleeps until the instant and execs the program); with it,
the program is exec'd at once and runs its start-up early, stopped at its first network call
(`connect`, `sendto` with an address, `sendmsg`, `sendmmsg`) or its `exit_group`, until the instant:

  child (before exec)   install_filter(): the filter, with a listener fd (SECCOMP_FILTER_FLAG_NEW_LISTENER);
                        every thread and exec after it inherit the filter
  launcher              Holder: takes the listener from the child (pidfd_getfd), receives each
                        filtered call (SECCOMP_IOCTL_NOTIF_RECV), holds it while the instant is ahead,
                        and lets it go on (SECCOMP_USER_NOTIF_FLAG_CONTINUE)

A send on a connected socket is not filtered (its connect was held), so a client's first packet costs
one release. Calls on AF_UNIX and netlink sockets (name lookups, syslog) are let go at once.
"""
from __future__ import annotations

import contextlib
import os
import select
import struct
import time

# per machine: (AUDIT_ARCH, seccomp's nr, [connect, sendmsg, sendmmsg, exit_group], sendto's nr). Held:
# those calls, and a sendto that names an address; a send on a connected socket is not (its connect was).
ARCHES = {"x86_64": (0xC000003E, 317, [42, 46, 307, 231], 44),
          "aarch64": (0xC00000B7, 277, [203, 211, 269, 94], 206)}
NATIVE_ELF = {"x86_64": 62, "aarch64": 183}
SYS_PIDFD_GETFD = 438  # the same on every architecture
NOTIF_RECV, NOTIF_SEND = 0xC0502100, 0xC0182101  # SECCOMP_IOCTL_NOTIF_RECV/SEND (struct sizes 80, 24)
NOTIF_SIZE = 80


def why_not(machine: int | None) -> str | None:
    """None when a program of ELF `machine` can be exec'd early and held here, else why not."""
    here, release = os.uname().machine, os.uname().release
    try:
        new_enough = tuple(int(x) for x in release.split("-")[0].split(".")[:2]) >= (5, 6)
    except ValueError:
        new_enough = False
    if not new_enough or not hasattr(os, "pidfd_open"):
        return f"kernel {release} or Python too old (Linux >= 5.6, Python >= 3.9)"
    if here not in ARCHES or machine != NATIVE_ELF[here]:
        return f"not a native {here} program"
    try:
        import ctypes  # noqa: F401
    except ImportError:
        return "no ctypes"
    return None


def libc():
    import ctypes

    return ctypes.CDLL(None, use_errno=True)


def install_filter() -> int:
    """In the child: the filter (every later thread and exec inherits it); returns its listener fd."""
    import ctypes

    arch, nr_seccomp, calls, sendto = ARCHES[os.uname().machine]
    ld, jeq = 0x20, 0x15  # BPF_LD|W|ABS, BPF_JMP|JEQ|K; then a tiny assembler for the jump offsets
    asm = [(ld, 4, None, None), (jeq, arch, None, "allow"), (ld, 0, None, None)]  # another arch: allow
    asm += [(jeq, nr, "notify", None) for nr in calls]
    asm += [(jeq, sendto, None, "allow"), (ld, 48, None, None), (jeq, 0, None, "notify"),  # its address
            (ld, 52, None, None), (jeq, 0, "allow", "notify")]
    labels = {None: None, "allow": len(asm), "notify": len(asm) + 1}  # RET ALLOW, RET USER_NOTIF
    prog = [(code, labels[t] - i - 1 if t else 0, labels[f] - i - 1 if f else 0, k)
            for i, (code, k, t, f) in enumerate(asm)]
    prog += [(0x06, 0, 0, 0x7FFF0000), (0x06, 0, 0, 0x7FC00000)]
    code = b"".join(struct.pack("HBBI", *ins) for ins in prog)
    buf = ctypes.create_string_buffer(code)
    fprog = struct.pack("HxxxxxxP", len(prog), ctypes.addressof(buf))
    c = libc()
    if os.geteuid() != 0:
        c.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS: what an unprivileged filter needs
    fd = c.syscall(nr_seccomp, 1, 1 << 3, ctypes.c_char_p(fprog))  # SET_MODE_FILTER, NEW_LISTENER
    if fd < 0:
        raise OSError(ctypes.get_errno(), "seccomp: " + os.strerror(ctypes.get_errno()))
    return fd


class Holder:
    """The launcher's end of the filter: receives the program's network calls and lets them go."""

    def __init__(self, pid: int, pidfd: int, child_fd: int) -> None:
        import ctypes
        import fcntl

        self.ioctl = fcntl.ioctl
        fd = libc().syscall(SYS_PIDFD_GETFD, pidfd, child_fd, 0)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "pidfd_getfd: " + os.strerror(ctypes.get_errno()))
        self.fd = fd
        self.pid = pid
        self.pidfd = pidfd
        self.held: list[int] = []
        self.exit_nr = ARCHES[os.uname().machine][2][-1]
        self.first_call: float | None = None  # when the first network call arrived

    def pending(self, timeout: float = 0.0) -> bool:
        p = select.poll()
        p.register(self.fd, select.POLLIN)
        return any(ev & select.POLLIN for _, ev in p.poll(max(0.0, timeout) * 1000.0))

    def receive(self) -> tuple[int, int, int] | None:
        """One notification: (id, syscall nr, first argument), or None when it vanished."""
        buf = bytearray(NOTIF_SIZE)
        try:
            self.ioctl(self.fd, NOTIF_RECV, buf)
        except OSError:
            return None
        nid, _pid, _flags, nr, _arch, _ip, arg0 = struct.unpack_from("QIIiIQQ", buf)
        return nid, nr, arg0

    def release(self, nid: int) -> None:
        with contextlib.suppress(OSError):  # (an interrupted call comes again; or the program is gone)
            self.ioctl(self.fd, NOTIF_SEND, bytearray(struct.pack("QqiI", nid, 0, 0, 1)))  # FLAG_CONTINUE

    def is_local(self, sock_fd: int) -> bool:
        """True for an AF_UNIX or netlink socket (name lookups, logging): never held."""
        import socket

        fd = libc().syscall(SYS_PIDFD_GETFD, self.pidfd, sock_fd & 0xFFFFFFFF, 0)
        if fd < 0:
            return False
        try:
            family = socket.socket(fileno=fd).family  # (closed with the socket object)
        except OSError:
            os.close(fd)
            family = None
        return family in (socket.AF_UNIX, getattr(socket, "AF_NETLINK", -1))

    def serve(self, before: float | None) -> None:
        """Answer every pending call: hold the network calls (and the exit) while the instant is ahead."""
        while self.pending():
            got = self.receive()
            if got is None:
                return
            nid, nr, arg0 = got
            ahead = before is not None and time.time() < before
            local = (ahead or self.first_call is None) and nr != self.exit_nr and self.is_local(arg0)
            if not local and self.first_call is None:
                self.first_call = time.time()  # ready: the program reached its first network call
            if ahead and not local:
                self.held.append(nid)
            else:
                self.release(nid)

    def close(self) -> None:
        os.close(self.fd)


