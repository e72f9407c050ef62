"""Delay and jitter without netem: hold each queued packet for its delay, then let it go (NFQUEUE).

This kernel has no ``sch_netem`` (and no ``sch_fq`` for an eBPF earliest-departure-time delay), but it
has NFQUEUE: a rule in a node's namespace (``-j NFQUEUE --queue-num 0 --queue-bypass`` on OUTPUT
for what the node sends, queue 1 on PREROUTING for what it receives) hands each packet's id to this
process, which sends the "accept" verdict when the packet's time has come (``delay`` ± uniform
``jitter`` ms, so jitter reorders packets as netem does). Only metadata is copied, never payload.

One process per lab, standard library only, started by the namespace backend::

    python3 netns_delayer.py CONFIG.json PIDFILE

CONFIG: ``{"nodes": [{"netns": "lab-client2", "queues": {"0": [50.0, 5.0]}}, ...]}``. SIGHUP re-reads
it; SIGTERM lets every held packet go and exits. The pid file is written once every queue is bound
(``--queue-bypass`` lets packets through undelayed while no process is bound). ``bench/impair.py``
measures its precision and cost.
"""
from __future__ import annotations

import contextlib
import ctypes
import heapq
import json
import os
import random
import select
import signal
import socket
import struct
import sys
import time

NETLINK_NETFILTER = 12
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET, NFQNL_MSG_VERDICT, NFQNL_MSG_CONFIG = 0, 1, 2
NFQA_CFG_CMD, NFQA_CFG_PARAMS, NFQA_CFG_QUEUE_MAXLEN = 1, 2, 3
NFQA_PACKET_HDR, NFQA_VERDICT_HDR = 1, 2
NFQNL_CFG_CMD_BIND, NFQNL_CFG_CMD_UNBIND = 1, 2
NFQNL_COPY_META = 1
NLM_F_REQUEST, NLM_F_ACK = 1, 4
NLMSG_ERROR = 2
NF_ACCEPT = 1
CLONE_NEWNET = 0x40000000
QUEUE_MAXLEN = 10_000
RCVBUF = 8 << 20

_libc = ctypes.CDLL(None, use_errno=True)


def attr(kind: int, payload: bytes) -> bytes:
    raw = struct.pack("HH", 4 + len(payload), kind) + payload
    return raw + b"\0" * (-len(raw) % 4)


def message(kind: int, queue: int, attrs: bytes, flags: int = NLM_F_REQUEST) -> bytes:
    body = struct.pack("!BBH", socket.AF_UNSPEC, 0, queue) + attrs
    return struct.pack("IHHII", 16 + len(body), (NFNL_SUBSYS_QUEUE << 8) | kind, flags, 0, 0) + body


def verdict(queue: int, packet_id: int) -> bytes:
    return message(NFQNL_MSG_VERDICT, queue, attr(NFQA_VERDICT_HDR, struct.pack("!II", NF_ACCEPT, packet_id)))


def packets(data: bytes) -> list[tuple[int, int]]:
    """(queue, packet id) of every NFQNL_MSG_PACKET in one netlink datagram."""
    found = []
    off = 0
    while off + 16 <= len(data):
        length, kind = struct.unpack_from("IH", data, off)
        if length < 16:
            break
        if kind == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET:
            queue = struct.unpack_from("!H", data, off + 18)[0]
            a = off + 20
            while a + 4 <= off + length:
                alen, akind = struct.unpack_from("HH", data, a)
                if alen < 4:
                    break
                if akind & 0x7FFF == NFQA_PACKET_HDR:
                    found.append((queue, struct.unpack_from("!I", data, a + 4)[0]))
                a += (alen + 3) & ~3
        off += (length + 3) & ~3
    return found


def _ack(sock: socket.socket, what: str) -> None:
    reply = sock.recv(4096)
    if struct.unpack_from("H", reply, 4)[0] == NLMSG_ERROR:
        err = -struct.unpack_from("i", reply, 16)[0]
        if err:
            raise OSError(err, f"{what}: {os.strerror(err)}")


def open_queue_socket(netns: str, queues: list[int]) -> socket.socket:
    """A netfilter netlink socket in namespace ``netns`` bound to ``queues`` (metadata copies only)."""
    home = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    target = os.open(f"/run/netns/{netns}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {netns}")
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    finally:
        _libc.setns(home, CLONE_NEWNET)
        os.close(home)
        os.close(target)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
    sock.bind((0, 0))
    for queue in queues:
        bind = attr(NFQA_CFG_CMD, struct.pack("!BBH", NFQNL_CFG_CMD_BIND, 0, 0))
        sock.send(message(NFQNL_MSG_CONFIG, queue, bind, NLM_F_REQUEST | NLM_F_ACK))
        _ack(sock, f"bind queue {queue} in {netns}")
        params = attr(NFQA_CFG_PARAMS, struct.pack("!IB", 0, NFQNL_COPY_META)) + \
            attr(NFQA_CFG_QUEUE_MAXLEN, struct.pack("!I", QUEUE_MAXLEN))
        sock.send(message(NFQNL_MSG_CONFIG, queue, params, NLM_F_REQUEST | NLM_F_ACK))
        _ack(sock, f"configure queue {queue} in {netns}")
    sock.setblocking(False)
    return sock


class Delayer:
    """The held packets of every bound queue, released in time order."""

    def __init__(self) -> None:
        self.sockets: dict[str, socket.socket] = {}             # netns -> socket
        self.delays: dict[tuple[str, int], tuple[int, int]] = {}  # (netns, queue) -> (delay ns, jitter ns)
        self.held: list[tuple[int, int, str, int, int]] = []     # (due ns, seq, netns, queue, id)
        self.seq = 0

    def configure(self, config: dict) -> None:
        wanted = {n["netns"]: {int(q): v for q, v in n["queues"].items()} for n in config.get("nodes", [])}
        for netns in list(self.sockets):
            if netns not in wanted or set(wanted[netns]) != {q for (ns, q) in self.delays if ns == netns}:
                self._release(lambda item, ns=netns: item[2] == ns)
                self.sockets.pop(netns).close()
                self.delays = {k: v for k, v in self.delays.items() if k[0] != netns}
        for netns, queues in wanted.items():
            if netns not in self.sockets:
                self.sockets[netns] = open_queue_socket(netns, sorted(queues))
            for queue, (delay_ms, jitter_ms) in queues.items():
                self.delays[(netns, queue)] = (int(float(delay_ms) * 1e6), int(float(jitter_ms) * 1e6))

    def _release(self, which) -> None:
        keep = []
        for item in self.held:
            if which(item):
                self._send(item[2], [verdict(item[3], item[4])])
            else:
                keep.append(item)
        heapq.heapify(keep)
        self.held = keep

    def _send(self, netns: str, verdicts: list[bytes]) -> None:
        sock = self.sockets.get(netns)
        if sock is None:
            return
        with contextlib.suppress(OSError):  # the namespace is going away: its packets go with it
            sock.send(b"".join(verdicts))

    def release_due(self) -> None:
        now = time.monotonic_ns()
        due: dict[str, list[bytes]] = {}
        while self.held and self.held[0][0] <= now:
            _, _, netns, queue, packet_id = heapq.heappop(self.held)
            due.setdefault(netns, []).append(verdict(queue, packet_id))
        for netns, verdicts in due.items():
            for start in range(0, len(verdicts), 256):
                self._send(netns, verdicts[start:start + 256])

    def receive(self, sock: socket.socket, netns: str) -> None:
        while True:
            try:
                data = sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # ENOBUFS: the kernel dropped messages; the packets it queued still wait
                return
            arrived = time.monotonic_ns()
            for queue, packet_id in packets(data):
                delay, jitter = self.delays.get((netns, queue), (0, 0))
                offset = random.randint(-jitter, jitter) if jitter else 0
                self.seq += 1
                due = arrived + max(0, delay + offset)
                heapq.heappush(self.held, (due, self.seq, netns, queue, packet_id))

    def timeout(self) -> float | None:
        if not self.held:
            return None
        return max(0.0, (self.held[0][0] - time.monotonic_ns()) / 1e9)

    def release_all(self) -> None:
        self._release(lambda item: True)


def main(argv: list[str]) -> int:
    config_path, pid_path = argv[1], argv[2]
    delayer = Delayer()
    state = {"reload": False, "stop": False}
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)  # a signal wakes select (PEP 475 would retry)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGHUP, lambda *_: state.update(reload=True))
    signal.signal(signal.SIGTERM, lambda *_: state.update(stop=True))
    signal.signal(signal.SIGINT, lambda *_: state.update(stop=True))
    with contextlib.suppress(OSError, AttributeError):  # wake on time under load
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
    with open(config_path) as f:
        delayer.configure(json.load(f))
    with contextlib.suppress(FileNotFoundError):
        os.unlink(pid_path + ".tmp")
    fd = os.open(pid_path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:  # never through a planted symlink; rename replaces one
        f.write(f"{os.getpid()}\n")
    os.replace(pid_path + ".tmp", pid_path)
    while not state["stop"]:
        if state["reload"]:
            state["reload"] = False
            with open(config_path) as f:
                delayer.configure(json.load(f))
        delayer.release_due()
        by_fd = {sock.fileno(): (sock, netns) for netns, sock in delayer.sockets.items()}
        ready, _, _ = select.select([wake_r, *by_fd], [], [], delayer.timeout())
        for fd in ready:
            if fd == wake_r:
                os.read(wake_r, 512)
            else:
                delayer.receive(*by_fd[fd])
    delayer.release_all()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
