"""scripts/timeserver.py over real sockets on 127.0.0.1: the server runs as a subprocess, stopped by PID."""
from __future__ import annotations

import contextlib
import os
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from loopback_sshd import free_port
from requires import SHARED_BENCH, require_file, require_tool

ROOT = Path(__file__).resolve().parent.parent
SERVER = ROOT / "scripts" / "timeserver.py"
# the course's shared/ folder sits beside the checkout (../shared/bench); LABCTL_BENCH_DIR overrides
BENCH = Path(os.environ.get("LABCTL_BENCH_DIR") or SHARED_BENCH)
ISO_MS = re.compile(rb"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
HOST = "127.0.0.1"


class ServerProc:
    """The real server as a subprocess on kernel-picked loopback ports."""

    def __init__(self, *args: str, time_port: bool = False, python: str | None = None) -> None:
        argv = [python or sys.executable, str(SERVER), "--bind", HOST, "--port", "0", "--proto-port", "0",
                *args]
        if time_port:
            argv += ["--time-port", str(free_port())]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.listening = self._readline(30.0)
        if b"listening" not in self.listening:  # never leave it running: no fixture will stop it
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"no listening line: {self.listening!r} {self.proc.stderr.read()[-500:]!r}")
        ports = dict(re.findall(rb"([\w-]+)=[\d.]+:(\d+)", self.listening))
        self.port = int(ports[b"tcp"])
        self.proto = int(ports[b"proto"])
        self.time_port = int(ports[b"time-tcp"]) if b"time-tcp" in ports else None
        self._err = b""

    def _readline(self, timeout: float) -> bytes:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        return self.proc.stdout.readline() if ready else b""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._err += self.proc.stderr.read()
        return self.proc.returncode

    def log(self) -> str:
        """Everything logged so far (stderr drained without blocking)."""
        fd = self.proc.stderr.fileno()
        os.set_blocking(fd, False)
        try:
            while True:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                self._err += chunk
        except BlockingIOError:
            pass
        return self._err.decode(errors="replace")

    def wait_log(self, pattern: str, timeout: float = 3.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log()
            if re.search(pattern, text):
                return text
            time.sleep(0.02)
        raise AssertionError(f"no log line matching {pattern!r} in:\n{self.log()[-3000:]}")


@pytest.fixture
def make_server():
    started: list[ServerProc] = []

    def start(*args: str, time_port: bool = False) -> ServerProc:
        s = ServerProc(*args, time_port=time_port)
        started.append(s)
        return s

    try:
        yield start
    finally:
        for s in started:
            s.stop()


@pytest.fixture(scope="module")
def server():
    s = ServerProc(time_port=True)
    try:
        yield s
    finally:
        s.stop()


def tcp_time(port: int) -> bytes:
    with socket.create_connection((HOST, port), timeout=3) as c:
        data = b""
        while True:
            chunk = c.recv(100)
            if not chunk:
                return data
            data += chunk


def proto_conn(port: int) -> socket.socket:
    c = socket.create_connection((HOST, port), timeout=3)
    return c


def read_until_eof(c: socket.socket, limit: int = 1 << 20) -> bytes:
    data = b""
    while len(data) < limit:
        chunk = c.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def read_lines(c: socket.socket, n: int) -> list[bytes]:
    data = b""
    while data.count(b"\n") < n:
        chunk = c.recv(4096)
        assert chunk, f"EOF after {data!r}"
        data += chunk
    return data.split(b"\n")[:n]


def rss_kb(pid: int) -> int:
    return int(re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{pid}/status").read_text())[1])


def udp_ask(port: int, payload: bytes, timeout: float = 0.5, src: str = HOST) -> bytes | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        u.bind((src, 0))
        u.settimeout(timeout)
        u.sendto(payload, (HOST, port))
        try:
            return u.recv(65535)
        except socket.timeout:
            return None


def assert_now(iso: bytes) -> None:
    t = time.strptime(iso[:19].decode(), "%Y-%m-%dT%H:%M:%S")
    import calendar

    assert abs(calendar.timegm(t) - time.time()) < 5


# --- hour one and two: TCP and UDP on --port ---------------------------------------------------------

def test_listening_line_and_tcp_time_line(server):
    assert server.listening.startswith(b"timeserver listening tcp=127.0.0.1:")
    data = tcp_time(server.port)
    assert data.endswith(b"\n") and data.count(b"\n") == 1
    assert ISO_MS.match(data[:-1]), data
    assert_now(data)


def test_udp_eight_bytes_get_24_byte_time(server):
    reply = udp_ask(server.port, b"anything")
    assert reply is not None and len(reply) == 24 and ISO_MS.match(reply)
    assert_now(reply)


def test_seed_go_udp_client_against_our_server(server):
    exe = require_file(BENCH / "seed-udpclient", "the course's shared/bench")
    out = subprocess.run(["timeout", "5", str(exe), f"{HOST}:{server.port}"], capture_output=True,
                         timeout=10)
    assert out.returncode == 0, out
    assert ISO_MS.match(out.stdout.strip()), out.stdout


def test_udp_zero_byte_and_64k_datagrams(server):
    assert udp_ask(server.port, b"") is None  # 3 x 0 = 0 bytes allowed
    big = udp_ask(server.port, b"x" * 65507)  # the loopback maximum for IPv4 UDP
    assert big is not None and len(big) == 24
    server.wait_log(r"udp 127\.0\.0\.1:\d+ '' 0B -> 0B no reply: 3x bound")
    server.wait_log(r"udp 127\.0\.0\.1:\d+ 'x{40}'\.\.\. 65507B -> 24B")
    assert udp_ask(server.port, b"anything") is not None  # still serving


@pytest.mark.parametrize("which", ["udp", "time-udp"])
def test_udp_reply_never_exceeds_three_times_request(server, which):
    port = server.port if which == "udp" else server.time_port
    socks = []
    try:
        for size in [*range(0, 12), 100, 1400, 65507]:
            u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            u.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 17)
            u.bind((HOST, 0))
            u.sendto(b"\xab" * size, (HOST, port))
            socks.append((size, u))
        deadline = time.monotonic() + 0.6
        answered = {}
        for size, u in socks:
            u.settimeout(max(0.01, deadline - time.monotonic()))
            with contextlib.suppress(socket.timeout):
                answered[size] = u.recv(65535)
        for size, reply in answered.items():
            assert len(reply) <= 3 * size, (which, size, reply)
        if which == "udp":
            assert set(answered) == {7, 8, 9, 10, 11, 100, 1400, 65507}
            assert len(answered[7]) == 20 and answered[7].endswith(b"Z")
        else:
            assert set(answered) == {s for s, _ in socks if s >= 2}
            assert all(len(r) == 4 for r in answered.values())
    finally:
        for _, u in socks:
            u.close()


def test_udp_rate_limit_per_source(make_server):
    s = make_server("--rate-limit", "4", "--rate-burst", "4")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        u.bind((HOST, 0))
        t0 = time.monotonic()
        for _ in range(60):
            u.sendto(b"anything", (HOST, s.port))
        got = 0
        u.settimeout(0.4)
        try:
            while True:
                u.recv(100)
                got += 1
        except socket.timeout:
            pass
        elapsed = time.monotonic() - t0
    assert 1 <= got <= 4 + 4 * elapsed + 1, got
    s.wait_log(r"no reply: rate limit")
    # another source address has its own bucket
    assert udp_ask(s.port, b"anything", src="127.0.0.2") is not None


def test_no_rate_limit_answers_everything(make_server):
    s = make_server("--no-rate-limit", "--quiet")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        u.settimeout(1)
        for _ in range(300):
            u.sendto(b"anything", (HOST, s.port))
            assert len(u.recv(100)) == 24


# --- hour three: the line protocol ------------------------------------------------------------------

def test_proto_requests_lf_and_crlf_several_per_connection(server):
    with proto_conn(server.proto) as c:
        c.sendall(b"GET TIME\r\nSAY HI\nfoo\nGET TIME please\r\n\n")
        lines = read_lines(c, 5)
        assert ISO_MS.match(lines[0]) and ISO_MS.match(lines[3])
        assert lines[1] == b"Hello, World!"
        assert lines[2].startswith(b"ERR ") and lines[4].startswith(b"ERR ")
        c.sendall(b"SAY HI to you\n")  # the connection is still open for more
        assert read_lines(c, 1) == [b"Hello, World!"]


def test_proto_request_split_over_many_segments(server):
    with proto_conn(server.proto) as c:
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for ch in b"SAY H":
            c.sendall(bytes([ch]))
            time.sleep(0.01)
        c.sendall(b"I\r")
        time.sleep(0.01)
        c.sendall(b"\n")
        assert read_lines(c, 1) == [b"Hello, World!"]


def test_line_cap_too_long_then_close(server):
    with proto_conn(server.proto) as c:
        c.sendall(b"S" * 1024 + b"\n")  # exactly the cap: an ordinary (unknown) request
        assert read_lines(c, 1)[0].startswith(b"ERR unknown")
        c.sendall(b"S" * 1025 + b"\r\n")
        assert read_until_eof(c) == b"ERR line too long\n"
    with proto_conn(server.proto) as c:  # no newline at all, and much more of it
        c.sendall(b"A" * 65536)
        assert read_until_eof(c) == b"ERR line too long\n"  # drained, not reset away
    server.wait_log(r"closing: line too long")


def test_binary_garbage(server):
    junk = bytes(range(256)) * 3
    with proto_conn(server.proto) as c:
        c.sendall(junk.replace(b"\n", b"")[:900] + b"\n" + b"\x00\xff\xfe\r\n")
        lines = read_lines(c, 2)
        assert all(x.startswith(b"ERR ") for x in lines)
        c.sendall(b"GET TIME\n")
        assert ISO_MS.match(read_lines(c, 1)[0])
    assert ISO_MS.match(tcp_time(server.port)[:-1])


def test_half_close_gets_every_answer(server):
    with proto_conn(server.proto) as c:
        c.sendall(b"GET TIME\nSAY HI")  # the last request has no newline: answered at EOF
        c.shutdown(socket.SHUT_WR)
        data = read_until_eof(c)
    lines = data.split(b"\n")
    assert ISO_MS.match(lines[0]) and lines[1] == b"Hello, World!" and lines[2] == b""


def test_rst_mid_request(server):
    c = proto_conn(server.proto)
    c.sendall(b"GET TI")
    time.sleep(0.05)
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()  # RST
    server.wait_log(r"proto 127\.0\.0\.1:\d+ 'GET TI' 0B -> 0B reset")
    with proto_conn(server.proto) as c2:
        c2.sendall(b"SAY HI\n")
        assert read_lines(c2, 1) == [b"Hello, World!"]


def test_idle_timeout_and_slowloris(make_server):
    s = make_server("--idle-timeout", "0.6")
    with proto_conn(s.proto) as idle, proto_conn(s.proto) as slow:
        t0 = time.monotonic()
        for ch in b"GET TIME":  # trickling bytes does not keep a connection alive
            slow.sendall(bytes([ch]))
            time.sleep(0.1)
        assert read_until_eof(slow) == b"ERR idle timeout\n"
        assert read_until_eof(idle) == b"ERR idle timeout\n"
        assert 0.5 < time.monotonic() - t0 < 3.0
    s.wait_log(r"closed: idle timeout")


def test_connection_cap_answers_busy(make_server):
    s = make_server("--max-conns", "3", "--workers", "2")
    held = [proto_conn(s.proto) for _ in range(3)]
    try:
        for c in held:  # all three are really being served
            c.sendall(b"SAY HI\n")
            assert read_lines(c, 1) == [b"Hello, World!"]
        with proto_conn(s.proto) as extra:
            assert read_until_eof(extra) == b"ERR busy\n"
        held.pop().close()
        deadline = time.monotonic() + 3
        while True:  # the freed slot is given back
            with proto_conn(s.proto) as again:
                again.sendall(b"SAY HI\n")
                got = again.recv(100)
            if got == b"Hello, World!\n" or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert got == b"Hello, World!\n"
    finally:
        for c in held:
            c.close()


def test_500_idle_connections_do_not_starve_a_new_client(make_server):
    """Served, not timed: bench/servers.py prints how long the new client waits."""
    s = make_server("--quiet")
    idle = []
    try:
        for i in range(500):  # from ten addresses: 50 each, within the per-source cap
            c = socket.socket()
            c.settimeout(5)
            c.bind((f"127.0.0.{2 + i % 10}", 0))
            c.connect((HOST, s.proto))
            idle.append(c)
        time.sleep(0.3)
        with proto_conn(s.proto) as c:
            c.sendall(b"GET TIME\n")
            assert ISO_MS.match(read_lines(c, 1)[0])
        assert ISO_MS.match(tcp_time(s.port)[:-1])
        idle[0].sendall(b"SAY HI\n")  # and the idle ones are still served, not dropped
        assert read_lines(idle[0], 1) == [b"Hello, World!"]
    finally:
        for c in idle:
            c.close()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_one_address_cannot_lock_the_others_out(make_server, workers):
    s = make_server("--max-conns", "40", "--max-conns-per-source", "8", "--workers", workers)
    hog = []
    try:
        for _ in range(30):  # one address opens many slow connections
            c = socket.socket()
            c.settimeout(5)
            c.bind(("127.0.0.9", 0))
            c.connect((HOST, s.proto))
            hog.append(c)
        time.sleep(0.3)
        refused = 0
        for c in hog:
            c.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                refused += c.recv(100).startswith(b"ERR busy: too many connections from your address")
        # one worker admits all 8; two workers 4 each, at most 8 (fewer when one worker took them all)
        assert (refused == 30 - 8) if workers == "1" else (30 - 8 <= refused <= 30 - 4), refused
        for src in ("127.0.0.1", "127.0.0.2"):  # everybody else is still served
            with socket.socket() as other:
                other.settimeout(5)
                other.bind((src, 0))
                other.connect((HOST, s.proto))
                other.sendall(b"SAY HI\n")
                assert read_lines(other, 1) == [b"Hello, World!"]
        s.wait_log(r"refused: busy: too many connections from your address")
    finally:
        for c in hog:
            c.close()


def test_a_flood_is_logged_in_summaries_not_line_by_line(make_server):
    s = make_server("--rate-limit", "5", "--rate-burst", "5", "--log-rate", "20")
    sent = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            for _ in range(50):
                u.sendto(b"anything", (HOST, s.port))
                sent += 1
            time.sleep(0.005)
    time.sleep(1.2)  # the next second's first sweep writes the last summary
    assert udp_ask(s.port, b"anything", src="127.0.0.3") is not None  # still serving
    text = s.wait_log(r"udp - - 0B -> 0B not logged: \d+ more lines")
    lines = [x for x in text.splitlines() if " udp " in x]
    one_by_one = [x for x in lines if "not logged" not in x]
    summed = sum(int(m) for m in re.findall(r"not logged: (\d+) more lines", text))
    seconds = 4  # the flood spans at most this many clock seconds
    assert len(one_by_one) <= 20 * seconds + 1, len(one_by_one)
    assert "no reply: rate limit" in text and re.search(r"\(\d+ no reply: rate limit", text)
    assert sent >= 1000 and len(one_by_one) + summed <= sent + 1  # every datagram counted once at most
    assert len(one_by_one) + summed >= sent * 0.5  # (loopback may drop a few under the flood)


# --- RFC 868 -----------------------------------------------------------------------------------------

def test_rfc868_tcp_four_bytes_seconds_since_1900(server):
    data = tcp_time(server.time_port)
    assert len(data) == 4
    secs = struct.unpack("!I", data)[0]
    assert abs(secs - 2208988800 - time.time()) < 5


def test_rfc868_udp(server):
    reply = udp_ask(server.time_port, b"\0\0\0\0")
    assert reply is not None and len(reply) == 4
    assert abs(struct.unpack("!I", reply)[0] - 2208988800 - time.time()) < 5
    assert udp_ask(server.time_port, b"x") is None  # 3 bytes allowed: less than the 4 it takes
    assert udp_ask(server.time_port, b"") is None


def test_rdate_against_time_port(server):
    rdate = require_tool("rdate")
    out = subprocess.run([rdate, "-p", "-o", str(server.time_port), HOST], capture_output=True,
                         text=True, timeout=10)
    assert out.returncode == 0, out
    assert str(time.gmtime().tm_year) in out.stdout, out.stdout


# --- lifecycle ---------------------------------------------------------------------------------------

def test_sigterm_finishes_in_flight_request_and_exits_0(make_server):
    s = make_server("--drain-timeout", "3")
    assert ISO_MS.match(tcp_time(s.port)[:-1])  # the acceptor thread is up
    idle = proto_conn(s.proto)
    busy = proto_conn(s.proto)
    try:
        busy.sendall(b"GET TI")  # a request in flight
        time.sleep(0.1)
        s.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        assert read_until_eof(idle) == b""  # idle connections are closed at once
        busy.sendall(b"ME\n")
        data = read_until_eof(busy)
        assert ISO_MS.match(data.rstrip(b"\n")), data
        assert s.proc.wait(timeout=5) == 0
    finally:
        idle.close()
        busy.close()
    for port in (s.proto, s.port):  # both listeners are gone (the TCP acceptor thread too)
        with pytest.raises(OSError):
            socket.create_connection((HOST, port), timeout=1)


def test_sigint_exits_0_and_all_workers_go(make_server):
    s = make_server("--workers", "2")
    kids = Path(f"/proc/{s.proc.pid}/task/{s.proc.pid}/children").read_text().split()
    assert len(kids) == 1
    assert s.stop(signal.SIGINT) == 0
    time.sleep(0.2)
    assert not Path(f"/proc/{kids[0]}").exists() or "Z" in Path(f"/proc/{kids[0]}/stat").read_text()


def test_quiet_logs_nothing(make_server):
    s = make_server("--quiet")
    tcp_time(s.port)
    udp_ask(s.port, b"anything")
    assert s.stop() == 0
    assert s.log() == ""


def test_log_line_per_exchange(make_server):
    s = make_server()
    tcp_time(s.port)
    with proto_conn(s.proto) as c:
        c.sendall(b"SAY HI\n")
        read_lines(c, 1)
    text = s.wait_log(r"proto 127\.0\.0\.1:\d+ 'SAY HI' 6B -> 14B")
    assert re.search(r"^\d{4}-\d\d-\d\dT[\d:.]+Z tcp 127\.0\.0\.1:\d+ - 0B -> 25B$", text, re.M), text


def test_port_in_use_is_a_clear_error():
    with socket.socket() as taken:
        taken.bind((HOST, 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = subprocess.run([sys.executable, str(SERVER), "--bind", HOST, "--port", str(port),
                              "--proto-port", "0"], capture_output=True, text=True, timeout=10)
    assert out.returncode == 1
    assert "cannot listen" in out.stderr and "Traceback" not in out.stderr


def test_bad_arguments_exit_2():
    out = subprocess.run([sys.executable, str(SERVER), "--port", "70000"], capture_output=True,
                         text=True, timeout=10)
    assert out.returncode == 2 and "--port" in out.stderr


def test_low_file_limit_lowers_the_cap_and_keeps_serving():
    import resource

    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))

    argv = [sys.executable, str(SERVER), "--bind", HOST, "--port", "0", "--proto-port", "0", "--workers", "1",
            "--max-conns", "1000", "--quiet"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=low_limit)
    conns = []
    try:
        line = proc.stdout.readline()
        proto = int(re.search(rb"proto=[\d.]+:(\d+)", line)[1])
        port = int(re.search(rb"tcp=[\d.]+:(\d+)", line)[1])
        busy = 0
        for _ in range(100):  # far more than 64 descriptors
            c = socket.create_connection((HOST, proto), timeout=3)
            conns.append(c)
            c.setblocking(False)
        time.sleep(0.3)
        for c in conns:
            with contextlib.suppress(BlockingIOError):
                busy += c.recv(100) == b"ERR busy\n"
        assert busy >= 60
        assert ISO_MS.match(tcp_time(port)[:-1])  # still serving
    finally:
        for c in conns:
            c.close()
        proc.terminate()
        assert proc.wait(timeout=10) == 0
        err = proc.stderr.read().decode()
    assert "--max-conns lowered" in err and "Traceback" not in err


def test_pipelining_client_that_never_reads_cannot_grow_memory_or_block(make_server):
    s = make_server("--idle-timeout", "1", "--quiet")
    assert ISO_MS.match(tcp_time(s.port)[:-1])
    rss_before = rss_kb(s.proc.pid)
    flood = proto_conn(s.proto)
    try:
        flood.setblocking(False)
        chunk = b"GET TIME\n" * 1000
        sent = 0
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:  # until the server stops reading (backpressure)
            try:
                sent += flood.send(chunk)
            except BlockingIOError:
                time.sleep(0.05)
                try:
                    sent += flood.send(chunk)
                except BlockingIOError:
                    break
        assert sent > 100_000
        assert ISO_MS.match(tcp_time(s.port)[:-1])  # still serving others
        assert rss_kb(s.proc.pid) < 3 * rss_before, (rss_before, rss_kb(s.proc.pid))  # bounded, not growing
        time.sleep(1.6)  # no complete request could be read for > idle timeout: closed
        flood.setblocking(True)
        flood.settimeout(3)
        closed = False
        try:
            while flood.recv(1 << 20):  # the replies it did queue, then EOF
                pass
            closed = True
        except ConnectionResetError:  # or a reset: it closed with our unread requests pending
            closed = True
        assert closed
    finally:
        flood.close()


def test_every_file_the_server_imports_goes_to_the_server_node():
    """The server is several files: deploy, the Vagrantfile and provision/server.sh copy each one it
    imports (a file left out works here and fails on the node with ModuleNotFoundError)."""
    from labctl.deploy import SERVER_FILES

    local = {p.stem for p in SERVER.parent.glob("timeserver*.py")}
    imported = set()
    for path in SERVER.parent.glob("timeserver*.py"):
        imported |= {m for m in re.findall(r"^(?:from|import) (\w+)", path.read_text(), re.M) if m in local}
    wanted = {f"{m}.py" for m in imported} | {SERVER.name}
    assert wanted <= set(SERVER_FILES)
    assert len(wanted) == 4  # protocol, limits, lines and the server itself
    for where in (ROOT / "Vagrantfile", ROOT / "provision" / "server.sh"):
        assert all(name in where.read_text() for name in wanted), where
