"""Helpers for the analysis tests: real tcpdump captures and tshark's counts to check ours against.

(Named test_analyse_* to live in the analysis tests' room; it holds no tests itself. The e2e tests
import it from here.)
"""
from __future__ import annotations

import contextlib
import re
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

from tests.requires import require_root, require_tool


@contextlib.contextmanager
def tcpdump(iface: str, path: Path, bpf: str = "", netns: str | None = None, snaplen: int = 0):
    """Capture on ``iface`` into ``path`` while the block runs; checks nothing was dropped."""
    require_tool("tcpdump")
    argv = ["tcpdump", "-i", iface, "--immediate-mode", "-U", "-n", "-B", "8192", "-w", str(path)]
    if snaplen:
        argv += ["-s", str(snaplen)]
    if bpf:
        argv += bpf.split()
    if netns:
        argv = ["ip", "netns", "exec", netns, *argv]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    err_lines: list[str] = []
    ready = threading.Event()

    def pump():
        for line in proc.stderr:
            err_lines.append(line)
            if "listening on" in line:
                ready.set()
        ready.set()

    t = threading.Thread(target=pump, daemon=True)
    t.start()
    try:
        if not ready.wait(10) or proc.poll() is not None:
            raise RuntimeError("tcpdump did not start: " + "".join(err_lines))
        yield
        time.sleep(0.3)   # let the last packets reach the file
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        t.join(5)
    text = "".join(err_lines)
    captured = _count(text, "captured")
    received = _count(text, "received by filter")
    dropped = _count(text, "dropped by kernel")
    assert captured is not None, text
    # On lo the kernel hands libpcap every packet twice (out and in) and it keeps one copy
    assert captured == received or (iface in ("lo", "any") and received == 2 * captured), text
    assert dropped == 0, text


def _count(text: str, what: str) -> int | None:
    m = re.search(r"(\d+) packets? " + re.escape(what), text)
    return int(m.group(1)) if m else None


def tshark_conversations(path: Path) -> Counter:
    """Multiset of (proto, endpoint A, endpoint B sorted, frames, bytes) from tshark -z conv."""
    require_tool("tshark")
    out = subprocess.run(["tshark", "-r", str(path), "-q", "-z", "conv,tcp", "-z", "conv,udp"],
                         capture_output=True, text=True, check=True).stdout
    result: Counter = Counter()
    proto = None
    for line in out.splitlines():
        if line.startswith("TCP Conversations"):
            proto = "tcp"
        elif line.startswith("UDP Conversations"):
            proto = "udp"
        m = re.match(r"^(\S+)\s+<->\s+(\S+)\s+\d+\s+\d+\s+\w+\s+\d+\s+\d+\s+\w+\s+(\d+)\s+(\d+)\s+(\w+)",
                     line)
        if m and proto:
            a, b, frames, nbytes, unit = m.groups()
            nbytes = int(nbytes) * {"bytes": 1, "kB": 1000, "MB": 1000000}.get(unit, 1)
            result[(proto, *sorted((a, b)), int(frames), nbytes if unit == "bytes" else None)] += 1
    return result


def ours(analysis) -> Counter:
    result: Counter = Counter()
    for c in analysis.conversations():
        result[(c.proto, *sorted((c.client, c.server)), c.packets, c.bytes)] += 1
    return result


def tshark_bytes(n: int) -> str:
    """A byte count as tshark 4.0's conversation table prints it."""
    if n < 10_000:
        return f"{n} bytes"
    if n < 10_000_000:
        return f"{n // 1000} kB"
    return f"{n // 1000_000} MB"


def tshark_table(path: Path) -> Counter:
    """tshark's TCP and UDP conversation tables: (proto, endpoint, endpoint, frames, bytes as printed)."""
    out = subprocess.run(["tshark", "-n", "-r", str(path), "-q", "-z", "conv,tcp", "-z", "conv,udp"],
                         capture_output=True, text=True).stdout
    table: Counter = Counter()
    proto = None
    for line in out.splitlines():
        if line.startswith(("TCP Conversations", "UDP Conversations")):
            proto = line[:3].lower()
        m = re.match(r"^(\S+)\s+<->\s+(\S+)\s+\d+\s+\d+\s+\w+\s+\d+\s+\d+\s+\w+\s+(\d+)\s+(\d+ \w+)", line)
        if m and proto:
            a, b, frames, nbytes = m.groups()
            table[(proto, *sorted((a, b)), int(frames), nbytes)] += 1
    return table


def our_table(analysis) -> Counter:
    """labctl's conversations in tshark's terms (IPv6 endpoints without brackets, bytes rounded)."""
    def ep(x: str) -> str:
        return x[1:].replace("]:", ":") if x.startswith("[") else x

    return Counter((c.proto, *sorted((ep(c.client), ep(c.server))), c.packets, tshark_bytes(c.bytes))
                   for c in analysis.conversations())


TCP_FLAGS = ("retransmission", "fast_retransmission", "spurious_retransmission", "out_of_order",
             "duplicate_ack")


def tshark_tcp_flags(path: Path) -> dict[str, int]:
    """How many segments tshark marks with each of ``TCP_FLAGS`` (one pass)."""
    argv = ["tshark", "-n", "-r", str(path), "-T", "fields", "-E", "occurrence=f"]
    for f in TCP_FLAGS:
        argv += ["-e", f"tcp.analysis.{f}"]
    out = subprocess.run(argv, capture_output=True, text=True).stdout
    counts = dict.fromkeys(TCP_FLAGS, 0)
    for line in out.splitlines():
        for f, v in zip(TCP_FLAGS, line.split("\t")):
            counts[f] += v == "1"
    return counts


def our_tcp_flags(analysis) -> dict[str, int]:
    convs = list(analysis.tcp())
    return {"retransmission": sum(c.retransmissions for c in convs),
            "fast_retransmission": sum(c.fast_retransmissions for c in convs),
            "spurious_retransmission": sum(c.spurious_retransmissions for c in convs),
            "out_of_order": sum(c.out_of_order for c in convs),
            "duplicate_ack": sum(c.dup_acks for c in convs)}


def tshark_count(path: Path, display_filter: str) -> int:
    require_tool("tshark")
    out = subprocess.run(["tshark", "-r", str(path), "-Y", display_filter, "-T", "fields", "-e",
                          "frame.number"], capture_output=True, text=True, check=True).stdout
    return len(out.split())


def assert_matches_tshark(path: Path, analysis) -> None:
    """Every conversation's packets and bytes, and the retransmission count, as tshark counts them."""
    theirs = tshark_conversations(path)
    mine = ours(analysis)
    # tshark prints large byte counts rounded ("kB"); compare those on frames only
    fuzzy = {k for k in theirs if k[-1] is None}
    mine_cmp = Counter({(k if not any(k[:4] == f[:4] for f in fuzzy) else (*k[:4], None)): v
                        for k, v in mine.items()})
    assert mine_cmp == theirs, f"\nours:   {sorted(mine_cmp.items())}\ntshark: {sorted(theirs.items())}"
    retrans = sum(c.retransmissions for c in analysis.tcp())
    assert retrans == tshark_count(path, "tcp.analysis.retransmission")


# --- tiny real servers and clients on loopback --------------------------------------------------------

class TimeServers:
    """TCP and UDP time servers in threads (the exercise's programs in miniature).

    TCP ``daytime`` style: send the time on accept and close. TCP ``request``: answer a line.
    UDP: answer each datagram with the time.
    """

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.tcp = socket.create_server((host, 0))
        self.tcp_req = socket.create_server((host, 0))
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind((host, 0))
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=f, daemon=True)
                        for f in (self._tcp_loop, self._tcp_req_loop, self._udp_loop)]
        for t in self.threads:
            t.start()

    @property
    def ports(self) -> tuple[int, int, int]:
        return (self.tcp.getsockname()[1], self.tcp_req.getsockname()[1], self.udp.getsockname()[1])

    @staticmethod
    def now() -> bytes:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ\n", time.gmtime()).encode()

    def _tcp_loop(self) -> None:
        self.tcp.settimeout(0.2)
        while not self.stop.is_set():
            try:
                conn, _ = self.tcp.accept()
            except OSError:
                continue
            with conn:
                conn.sendall(self.now())

    def _tcp_req_loop(self) -> None:
        self.tcp_req.settimeout(0.2)
        while not self.stop.is_set():
            try:
                conn, _ = self.tcp_req.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(2)
                try:
                    data = conn.recv(512)
                    if data.startswith(b"GET TIME"):
                        conn.sendall(self.now())
                except OSError:
                    pass

    def _udp_loop(self) -> None:
        self.udp.settimeout(0.2)
        while not self.stop.is_set():
            try:
                data, addr = self.udp.recvfrom(512)
            except OSError:
                continue
            self.udp.sendto(self.now()[: 3 * len(data)], addr)

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(2)
        for s in (self.tcp, self.tcp_req, self.udp):
            s.close()


def tcp_get(host: str, port: int, request: bytes = b"") -> bytes:
    with socket.create_connection((host, port), timeout=3) as s:
        if request:
            s.sendall(request)
        data = b""
        while True:
            chunk = s.recv(512)
            if not chunk:
                return data
            data += chunk


def udp_get(host: str, port: int, request: bytes = b"GET TIME\n", timeout: float = 1.0) -> bytes | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(request, (host, port))
        try:
            return s.recv(512)
        except socket.timeout:
            return None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


# --- private network namespaces ----------------------------------------------------------------------

LOCK = Path("/run/labctl-test.lock")
TRAFFIC = Path(__file__).with_name("test_analyse_traffic.py")


@contextlib.contextmanager
def lab_lock():
    """Hold /run/labctl-test.lock (shared machine: one namespace lab at a time)."""
    import fcntl

    with LOCK.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def sh(*argv: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    if ns:
        argv = ("ip", "netns", "exec", ns, *argv)
    return subprocess.run(argv, capture_output=True, text=True, check=check)


@contextlib.contextmanager
def netns(*names: str):
    """Create network namespaces (lo up); delete them afterwards, whatever happens."""
    require_root()
    require_tool("ip", "apt-get install iproute2")
    made = []
    try:
        for n in names:
            sh("ip", "netns", "add", n)
            made.append(n)
            sh("ip", "link", "set", "lo", "up", ns=n)
        yield
    finally:
        for n in made:
            sh("ip", "netns", "del", n, check=False)


@contextlib.contextmanager
def veth_pair(server_ns: str, client_ns: str, prefix: str, subnet: str = "10.231.0"):
    """Join two namespaces with a veth pair: server .1, client .2 on a /24, no default route."""
    s_if, c_if = f"{prefix}s", f"{prefix}c"
    try:
        sh("ip", "link", "add", s_if, "type", "veth", "peer", "name", c_if)
        sh("ip", "link", "set", s_if, "netns", server_ns)
        sh("ip", "link", "set", c_if, "netns", client_ns)
        sh("ip", "addr", "add", f"{subnet}.1/24", "dev", s_if, ns=server_ns)
        sh("ip", "addr", "add", f"{subnet}.2/24", "dev", c_if, ns=client_ns)
        for ns, dev in ((server_ns, s_if), (client_ns, c_if)):
            sh("ip", "link", "set", dev, "up", ns=ns)
            # segmentation offload off: frames on the wire as a real NIC would send them
            sh("ethtool", "-K", dev, "tso", "off", "gso", "off", "gro", "off", ns=ns, check=False)
        yield s_if, c_if
    finally:
        sh("ip", "link", "del", s_if, check=False)


@contextlib.contextmanager
def servers(ns: str | None, host: str, ports: tuple[int, int, int]):
    """Run the traffic script's servers (in ``ns``) until the block ends; stopped by pid."""
    import sys

    argv = [sys.executable, str(TRAFFIC), "serve", host, *map(str, ports)]
    if ns:
        argv = ["ip", "netns", "exec", ns, *argv]
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.strip() == "ready", line
        yield proc
    finally:
        proc.stdin.close()
        try:
            proc.wait(3)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_clients(ns: str | None, host: str, ports: tuple[int, int, int], closed: int, n: int) -> dict:
    import json
    import sys

    argv = [sys.executable, str(TRAFFIC), "clients", host, *map(str, ports), str(closed), str(n)]
    if ns:
        argv = ["ip", "netns", "exec", ns, *argv]
    out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=120).stdout
    return json.loads(out.strip().splitlines()[-1])
