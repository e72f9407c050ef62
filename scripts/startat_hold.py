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
one release. A TCP connect on a non-blocking socket (Go's, an event loop's) is not even released: at the
instant the launcher connects the program's socket itself (a copy of it, pidfd_getfd; the address read
from the program's memory) and answers the held call with EINPROGRESS, so the SYN leaves from the
launcher, already running, without waiting for the program to be scheduled. Calls on AF_UNIX and netlink
sockets (name lookups, syslog) are let go at once. From the instant until the burst is over, the
program's writes to stdout/stderr and its exit are held too: a client done at once then neither prints,
tears down nor exits while the others still start.
"""
from __future__ import annotations

import os
import select
import struct
import time

# per machine: AUDIT_ARCH, seccomp's nr, the calls held until the instant [connect, sendmsg, sendmmsg],
# sendto's (held when it names an address: a send on a connected socket is not, its connect was), and
# the calls held until the burst after the instant is over: exit_group, and write/writev to fd 1 or 2.
ARCHES = {"x86_64": {"arch": 0xC000003E, "seccomp": 317, "net": [42, 46, 307], "sendto": 44,
                     "exit": 231, "out": [1, 20]},
          "aarch64": {"arch": 0xC00000B7, "seccomp": 277, "net": [203, 211, 269], "sendto": 206,
                      "exit": 94, "out": [64, 66]}}
NATIVE_ELF = {"x86_64": 62, "aarch64": 183}
REALTIME_AHEAD = 0.5  # seconds before the instant from which the launcher runs SCHED_FIFO
BOOST_NICE = -10  # the program's nice value from then until the burst after the instant is over
SYS_PIDFD_GETFD = 438  # the same on every architecture
NOTIF_RECV, NOTIF_SEND = 0xC0502100, 0xC0182101  # SECCOMP_IOCTL_NOTIF_RECV/SEND (struct sizes 80, 24)
NOTIF_ID_VALID = 0x40082102  # SECCOMP_IOCTL_NOTIF_ID_VALID: the call is still waiting (memory read is its)
EINPROGRESS = 115  # (the same on x86-64 and aarch64)
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


def realtime(on: bool) -> None:
    """Around the instant (hold: from REALTIME_AHEAD before it, asleep but for the held calls, until
    they are let go, one ioctl each), the launcher runs SCHED_FIFO where it may (root), so that on a
    node whose cores are busy (a namespace lab's clients all share this machine's) it wakes on time.
    The program itself never runs real-time; it gets BOOST_NICE for the burst (see `boost`)."""
    try:
        policy = os.SCHED_FIFO if on else os.SCHED_OTHER
        os.sched_setscheduler(0, policy, os.sched_param(1 if on else 0))
    except (AttributeError, OSError):
        pass


def boost(pid: int, nice: int | None) -> dict[int, int]:
    """Set the nice value of every thread of `pid` (root only; else nothing); return the old values.
    From REALTIME_AHEAD before the instant to HOLD_OUTPUT after it the program runs at BOOST_NICE, so
    that once let go it gets a core before the node's other work."""
    old: dict[int, int] = {}
    try:
        tids = list(map(int, os.listdir(f"/proc/{pid}/task")))
    except OSError:
        return old
    for tid in tids:
        try:
            old[tid] = os.getpriority(os.PRIO_PROCESS, tid)
            os.setpriority(os.PRIO_PROCESS, tid, old[tid] if nice is None else nice)
        except OSError:
            pass
    return old


def libc():
    import ctypes

    return ctypes.CDLL(None, use_errno=True)


def filter_program(a: dict) -> bytes:
    """The classic-BPF program: USER_NOTIF for the calls above, ALLOW for everything else."""
    ld, jeq = 0x20, 0x15  # BPF_LD|W|ABS, BPF_JMP|JEQ|K, with jump targets by label
    src = [(ld, 4), (jeq, a["arch"], None, "allow"), (ld, 0),  # another architecture: allow
           *[(jeq, nr, "notify", None) for nr in (*a["net"], a["exit"])],
           *[(jeq, nr, "output", None) for nr in a["out"]],
           (jeq, a["sendto"], None, "allow"),
           (ld, 48), (jeq, 0, None, "notify"), (ld, 52), (jeq, 0, "allow", "notify"),  # its address
           "output", (ld, 16), (jeq, 1, "notify", None), (jeq, 2, "notify", "allow"),  # fd 1 or 2
           "allow", (0x06, 0x7FFF0000), "notify", (0x06, 0x7FC00000)]  # RET ALLOW, RET USER_NOTIF
    labels, n = {}, 0
    for ins in src:
        if isinstance(ins, str):
            labels[ins] = n
        else:
            n += 1
    prog, i = [], 0
    for ins in src:
        if isinstance(ins, str):
            continue
        code, k, t, f = (*ins, None, None)[:4]
        jt, jf = (labels[t] - i - 1 if t else 0), (labels[f] - i - 1 if f else 0)
        prog.append(struct.pack("HBBI", code, jt, jf, k))
        i += 1
    return b"".join(prog)


def install_filter() -> int:
    """In the child: the filter (every later thread and exec inherits it); returns its listener fd."""
    import ctypes

    a = ARCHES[os.uname().machine]
    code = filter_program(a)
    buf = ctypes.create_string_buffer(code)
    fprog = struct.pack("HxxxxxxP", len(code) // 8, ctypes.addressof(buf))
    c = libc()
    if os.geteuid() != 0:
        c.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS: what an unprivileged filter needs
    fd = c.syscall(a["seccomp"], 1, 1 << 3, ctypes.c_char_p(fprog))  # SET_MODE_FILTER, NEW_LISTENER
    if fd < 0:
        raise OSError(ctypes.get_errno(), "seccomp: " + os.strerror(ctypes.get_errno()))
    return fd


class Holder:
    """The launcher's end of the filter: receives the program's network calls and lets them go."""

    def __init__(self, pid: int, pidfd: int, child_fd: int) -> None:
        import ctypes
        import fcntl

        self.ioctl, self.fcntl = fcntl.ioctl, fcntl.fcntl
        self.libc = libc()
        fd = self.libc.syscall(SYS_PIDFD_GETFD, pidfd, child_fd, 0)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "pidfd_getfd: " + os.strerror(ctypes.get_errno()))
        self.fd = fd
        self.pid = pid
        self.pidfd = pidfd
        self.held: list[int] = []   # network calls, let go at the instant
        self.quiet: list[int] = []  # output and exit, let go when the burst after the instant is over
        a = ARCHES[os.uname().machine]
        self.exit_nr, self.out_nrs, self.connect_nr = a["exit"], a["out"], a["net"][0]
        self.connects: dict[int, tuple[object, bytes]] = {}  # held connect -> (our copy of its socket, its
        #                                                       address): connected by us at the instant
        self.first_call: float | None = None  # when the first network call (or the exit) arrived
        self.connected = 0  # connects made for the program at the instant

    def pending(self, timeout: float = 0.0) -> bool:
        p = select.poll()
        p.register(self.fd, select.POLLIN)
        return any(ev & select.POLLIN for _, ev in p.poll(max(0.0, timeout) * 1000.0))

    def receive(self) -> tuple[int, int, tuple[int, ...]] | None:
        """One notification: (id, syscall nr, its six arguments), or None when it vanished."""
        buf = bytearray(NOTIF_SIZE)
        try:
            self.ioctl(self.fd, NOTIF_RECV, buf)
        except OSError:
            return None
        nid, _pid, _flags, nr, _arch, _ip, *args = struct.unpack_from("QIIiIQ6Q", buf)
        return nid, nr, tuple(args)

    def prepare_connect(self, nid: int, args: tuple[int, ...]) -> None:
        """For a held TCP connect on a non-blocking socket (Go's, most event loops'): our own copy of
        the socket and the address, so that at the instant the launcher connects it itself. The SYN
        then leaves from the launcher, running real-time at the instant, instead of waiting until the
        released program is scheduled again (1-10 ms on a busy node). Anything else: let go as usual."""
        import socket

        fd, size = self.libc.syscall(SYS_PIDFD_GETFD, self.pidfd, args[0] & 0xFFFFFFFF, 0), args[2]
        if fd < 0:
            return
        try:
            sock = socket.socket(fileno=fd)  # (closed with it; the program's own fd is not touched)
        except OSError:
            os.close(fd)
            return
        try:
            if sock.family not in (socket.AF_INET, socket.AF_INET6) or sock.type != socket.SOCK_STREAM \
                    or not self.fcntl(fd, 3) & os.O_NONBLOCK or not 0 < size <= 128:  # (3: F_GETFL)
                raise OSError("not a non-blocking TCP connect")
            mem = os.open(f"/proc/{self.pid}/mem", os.O_RDONLY | os.O_CLOEXEC)
            try:
                address = os.pread(mem, size, args[1])
            finally:
                os.close(mem)
            self.ioctl(self.fd, NOTIF_ID_VALID, bytearray(struct.pack("Q", nid)))  # (the read was its)
        except OSError:
            sock.close()
            return
        self.connects[nid] = (sock, address)

    def connect_for(self, nid: int) -> None:
        """Connect the program's socket ourselves and answer its held connect with what it returned
        (EINPROGRESS, as a non-blocking connect does: the program then waits for it as it would)."""
        sock, address = self.connects.pop(nid)
        import ctypes

        rc = self.libc.connect(sock.fileno(), address, len(address))  # type: ignore[attr-defined]
        err = ctypes.get_errno() if rc < 0 else 0
        sock.close()
        self.connected += 1
        try:  # noqa: SIM105  (contextlib is not imported: a faster start)
            self.ioctl(self.fd, NOTIF_SEND, bytearray(struct.pack("QqiI", nid, 0, -err, 0)))
        except OSError:  # (interrupted: it comes again and finds the connection under way, or made)
            pass

    def release(self, nid: int) -> None:
        try:  # noqa: SIM105  (contextlib is not imported: a faster start)
            self.ioctl(self.fd, NOTIF_SEND, bytearray(struct.pack("QqiI", nid, 0, 0, 1)))  # FLAG_CONTINUE
        except OSError:  # (an interrupted call comes again; or the program is gone)
            pass

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

    def serve(self, at: float, quiet_end: float) -> None:
        """Answer every pending call: a network call is held until `at` (the instant), the program's
        output and exit from `at` (its exit: from before) until `quiet_end`, so that a client done early
        neither prints nor exits while the others still start; anything else goes on at once."""
        while self.pending():
            got = self.receive()
            if got is None:
                return
            nid, nr, args = got
            arg0 = args[0]
            now = time.time()
            if nr in self.out_nrs:
                (self.quiet.append if at <= now < quiet_end else self.release)(nid)
                continue
            local = nr != self.exit_nr and (now < at or self.first_call is None) and self.is_local(arg0)
            if not local and self.first_call is None:
                self.first_call = now  # ready: the program reached its first network call
            if nr == self.exit_nr and now < quiet_end:
                self.quiet.append(nid)
            elif now < at and not local:
                self.held.append(nid)
                if nr == self.connect_nr:
                    self.prepare_connect(nid, args)
            else:
                self.release(nid)

    def let_go(self, which: list[int]) -> None:
        """Release the held calls of `which` (self.held or self.quiet), newest first: a call that a
        signal interrupted came again with a new id."""
        for nid in reversed(which):
            if nid in self.connects:
                self.connect_for(nid)
            else:
                self.release(nid)
        which.clear()

    def close(self) -> None:
        for sock, _ in self.connects.values():
            sock.close()  # type: ignore[attr-defined]
        self.connects.clear()
        os.close(self.fd)


