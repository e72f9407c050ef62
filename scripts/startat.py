#!/usr/bin/env python3
"""startat.py: start a program at one wall-clock instant (stdlib only, Python >= 3.9, Linux).

    python3 startat.py --at EPOCH_SECONDS [--timeout SECONDS] [--node NAME] -- PROGRAM [ARGS...]

labctl runs this on every client node with the same --at, so that every client, in whatever language,
starts at one instant. Everything that can be done early is done early: PROGRAM is looked up on PATH,
checked (exists, executable, an ELF binary for this node's machine, or a script whose interpreter is
there; a non-executable script runs with the interpreter its #! line or its `.py` names), and forked.

Then, with startat_hold.py beside it and where the kernel allows it (Linux >= 5.6 on x86-64 or aarch64),
the program is exec'd *at once* and runs its start-up before the instant (tens of milliseconds for a
Python runtime on a busy node, a few for Go's), but a seccomp filter stops it at its first network
call (or its exit) until the instant, when the launcher lets that call go on: the cost of exec is off
the critical path, and at the instant each client costs one system call. Otherwise (or with --no-hold)
the forked child sleeps until the instant and then execs the program.

The program's stdout and stderr reach the caller, held back until HOLD_OUTPUT seconds after the
instant (printing and exiting at once would delay the clients still waking up; with the hold, the
program's own writes to stdout/stderr and its exit wait too). It runs in its own session and process
group; when it ends, anything left in its group is killed too.

Exit status: the program's (128+N when signal N killed it); 124 when --timeout (counted from the
instant) killed its group (SIGTERM, then SIGKILL after KILL_GRACE s); 126 when it cannot be executed
(not executable, wrong machine, bad format), 127 when it is not found (or its interpreter is not);
125 for bad arguments to startat itself. SIGTERM/SIGHUP/SIGINT to the launcher kill the program's
group too (exit 128+N). An error of startat's own is one `startat: ...` line on stderr. The last line
on stderr is always

    startat-timings: {"start": .., "ready": .., "exec": .., "end": .., "exit": .., "timed_out": ..,
                      "error": .., "late_ms": .., "at": .., "mode": "hold"|"exec", "execve": ..,
                      "no_hold": null or why the program was not held}

start: the launcher started; ready: the program was waiting for the instant (hold: it reached its
first network call; exec: the child went to sleep); exec: the program was let go (hold: its first
network call was released; exec: execve); late_ms: exec minus --at; execve: when execve was called;
end: the program's group was gone. Times are epoch seconds (floats); null where they never happened.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import signal
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # startat_hold.py beside it (even under -I)
try:
    import startat_hold  # the hold (optional): exec early, first network call held until the instant
except ImportError:
    startat_hold = None

EXIT_TIMEOUT, EXIT_USAGE, EXIT_CANNOT_EXEC, EXIT_NOT_FOUND = 124, 125, 126, 127
HOLD_OUTPUT = 0.05  # seconds after the instant before output is passed on
KILL_GRACE = 1.0    # seconds between SIGTERM and SIGKILL to the program's group
MAX_AHEAD = 86400.0  # --at at most this far ahead

# ELF e_machine -> the name the messages use, and the `uname -m` values that can run it
ELF_MACHINES = {3: ("x86", ("i386", "i486", "i586", "i686", "x86_64")), 62: ("x86-64", ("x86_64",)),
                40: ("arm", ("armv6l", "armv7l", "armv8l", "aarch64")),
                183: ("aarch64", ("aarch64", "arm64")), 243: ("riscv", ("riscv64", "riscv32")),
                21: ("ppc64", ("ppc64", "ppc64le")),
                20: ("ppc", ("ppc",)), 22: ("s390", ("s390x",)), 8: ("mips", ("mips", "mips64")),
                258: ("loongarch", ("loongarch64",))}
UNAME_NAMES = {"x86_64": "x86-64", "aarch64": "aarch64", "arm64": "aarch64", "i686": "x86", "armv7l": "arm",
               "riscv64": "riscv", "ppc64le": "ppc64", "s390x": "s390", "loongarch64": "loongarch"}


class LaunchError(Exception):
    """The program cannot be started; `code` is startat's exit status."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


# ---------------------------------------------------------------------------------------------------
# 1. Before the instant: find and check the program, decide the argv

def find_program(name: str, node: str) -> str:
    """The path exec will use: `name` itself when it holds a slash, else the first match on PATH."""
    if "/" in name:
        if not os.path.lexists(name):
            raise LaunchError(EXIT_NOT_FOUND, f"{name}: no such file on {node}")
        return name
    for d in os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin").split(os.pathsep):
        path = os.path.join(d or ".", name)
        if os.path.isfile(path):
            return path
    raise LaunchError(EXIT_NOT_FOUND, f"{name}: command not found on {node} (not on PATH)")


def elf_machine(header: bytes) -> int | None:
    """The e_machine of an ELF header, or None when `header` is not ELF."""
    if len(header) < 20 or header[:4] != b"\x7fELF" or header[5] not in (1, 2):
        return None
    return struct.unpack("<H" if header[5] == 1 else ">H", header[18:20])[0]


def check_machine(path: str, machine: int, node: str) -> None:
    """Refuse an ELF binary this node's CPU cannot run (one line naming the file and the node)."""
    here = os.uname().machine
    known = ELF_MACHINES.get(machine)
    if known is None or here not in {m for _, ms in ELF_MACHINES.values() for m in ms}:
        return  # a machine we do not know: let the kernel decide
    if here not in known[1]:
        raise LaunchError(EXIT_CANNOT_EXEC, f"exec format error: {os.path.basename(path)} is {known[0]}, "
                                            f"{node} is {UNAME_NAMES.get(here, here)}")


def read_header(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(256)
    except IsADirectoryError:
        raise LaunchError(EXIT_CANNOT_EXEC, f"{path}: is a directory") from None
    except PermissionError:
        return b""  # executable but not readable (--x): only exec can tell
    except OSError as e:
        code = EXIT_NOT_FOUND if e.errno == 2 else EXIT_CANNOT_EXEC
        raise LaunchError(code, f"{path}: {e.strerror}") from None


def prepare(program: str, args: list[str], node: str) -> tuple[list[str], int | None]:
    """(argv for execv, the ELF machine of what will really run or None); LaunchError when it can't run."""
    path = find_program(program, node)
    header = read_header(path)
    executable = os.access(path, os.X_OK)
    machine = elf_machine(header)
    if machine is not None:
        if not executable:
            raise LaunchError(EXIT_CANNOT_EXEC, f"permission denied: {path} is not executable on {node} "
                                                f"(chmod +x)")
        check_machine(path, machine, node)
        return [path, *args], machine
    if header.startswith(b"#!"):
        words = header[2:].split(b"\n", 1)[0].decode("utf-8", "replace").split(None, 1)
        if not words:
            raise LaunchError(EXIT_CANNOT_EXEC, f"{path}: empty #! line")
        interp = words[0]
        real = interp
        if os.path.basename(interp) == "env" and len(words) > 1:  # `#!/usr/bin/env python3`
            real = find_program(words[1].split()[0], node) if "/" not in words[1] else words[1].split()[0]
        if not os.path.exists(interp) or not os.path.exists(real):
            missing = interp if not os.path.exists(interp) else real
            raise LaunchError(EXIT_NOT_FOUND, f"{path}: interpreter {missing} not found on {node}")
        m = elf_machine(read_header(os.path.realpath(real)))
        if m is not None:
            check_machine(real, m, node)
        argv = [path, *args] if executable else [interp, *words[1:], path, *args]
        return argv, m
    if not executable and path.endswith(".py"):
        return [sys.executable or "python3", path, *args], elf_machine(read_header(sys.executable))
    if not executable:
        raise LaunchError(EXIT_CANNOT_EXEC, f"permission denied: {path} is not executable on {node} "
                                            f"(chmod +x, or give it a #! line)")
    if header:
        raise LaunchError(EXIT_CANNOT_EXEC, f"exec format error: {path} is neither an ELF binary nor a "
                                            f"script with a #! line")
    return [path, *args], None


def timings(start: float, at: float, **known: object) -> dict[str, object]:
    """The startat-timings object: every key, null until known."""
    t: dict[str, object] = dict.fromkeys(("start", "ready", "exec", "end", "exit", "timed_out", "error",
                                          "late_ms", "at", "mode", "execve", "no_hold"))
    t.update(start=start, at=at, timed_out=False, **known)
    return t


def wait_until(epoch: float) -> float:
    """Sleep until wall-clock `epoch`; return the wake time (a plain sleep: no spinning)."""
    while True:
        left = epoch - time.time()
        if left <= 0:
            return time.time()
        time.sleep(left)


# ---------------------------------------------------------------------------------------------------
# 2. The launch: fork early, let go at the instant, pass the output on, leave nothing behind

class Interrupted(Exception):
    """SIGTERM, SIGHUP or SIGINT reached the launcher."""


def child(argv: list[str], at: float, hold: bool, status_w: int, ack_r: int, out_w: int, err_w: int) -> None:
    """The forked child: its own session, then (hold) the filter at once or (exec) a sleep, then exec."""
    def say(line: str) -> None:
        os.write(status_w, (line + "\n").encode())

    code = EXIT_CANNOT_EXEC
    try:
        os.setsid()
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT, signal.SIGPIPE, signal.SIGXFSZ):
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        os.dup2(out_w, 1)
        os.dup2(err_w, 2)
        if startat_hold is not None:
            with contextlib.suppress(ImportError, OSError, AttributeError):
                startat_hold.libc().prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG: die with us
        if hold:
            try:
                listener = startat_hold.install_filter()
            except OSError as e:
                say(f"F {e}")  # no filter here: sleep and exec at the instant instead
                hold = False
            else:
                say(f"L {listener}")
                if os.read(ack_r, 1) != b"A":  # the launcher could not take the listener
                    os.close(listener)
                    os._exit(0)
                os.close(listener)
        if not hold:
            say(f"R {time.time()!r}")
            wait_until(at)
        say(f"X {time.time()!r}")
        os.execv(argv[0], argv)
    except OSError as e:
        code = EXIT_NOT_FOUND if e.errno == 2 else EXIT_CANNOT_EXEC
        with contextlib.suppress(OSError):
            say(f"E {code} cannot execute {argv[0]}: {e.strerror or e}")
    finally:
        os._exit(code)


class Launcher:
    """One program started at one instant: `run()` returns startat's exit status, `t` the timings."""

    def __init__(self, argv: list[str], at: float, timeout: float | None, hold: bool, start: float) -> None:
        self.argv, self.at, self.timeout, self.hold = argv, at, timeout, hold
        self.t = timings(start, at, mode="hold" if hold else "exec")
        self.pid = 0
        self.holder: startat_hold.Holder | None = None
        self.status = b""  # the child's status lines not yet parsed
        self.exited: int | None = None  # the leader's exit status, once it is gone (not yet reaped)
        self.error_code = 0
        self.kill_at: float | None = None  # monotonic time of the SIGKILL that follows a SIGTERM
        self.fallback = False  # the hold could not be set up: start again without it
        self.backlog: dict[int, bytes] = {}  # our stdout/stderr -> output our caller has not taken yet
        self.nice: dict[int, int] = {}  # thread -> its nice value before the boost

    def fork(self) -> None:
        status_r, status_w = os.pipe()  # (all four are close-on-exec)
        ack_r, ack_w = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        guarded = {signal.SIGTERM, signal.SIGHUP, signal.SIGINT}
        signal.pthread_sigmask(signal.SIG_BLOCK, guarded)  # no handler of ours may run in the child
        try:
            self.pid = os.fork()
            if self.pid == 0:
                child(self.argv, self.at, self.hold, status_w, ack_r, out_w, err_w)
            self.pidfd = os.pidfd_open(self.pid)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, guarded)
        for fd in (status_w, ack_r, out_w, err_w):
            os.close(fd)
        self.status_r, self.ack_w = status_r, ack_w
        self.pipes = {out_r: 1, err_r: 2}  # our read end -> where its data goes

    def on_status(self, line: str) -> None:
        """One line from the child: L listener fd, F no filter, R asleep, X execve, E exec failed."""
        kind, _, rest = line.partition(" ")
        if kind == "L":
            try:
                self.holder = startat_hold.Holder(self.pid, self.pidfd, int(rest))
                os.write(self.ack_w, b"A")
            except OSError:
                os.write(self.ack_w, b"N")
                self.fallback = True
        elif kind == "F":
            self.hold, self.t["mode"], self.t["no_hold"] = False, "exec", rest
        elif kind == "R":
            self.t["ready"] = float(rest)
        elif kind == "X":
            self.t["execve"] = float(rest)
            if not self.hold:
                self.t["exec"] = float(rest)
        elif kind == "E":
            code, _, self.t["error"] = rest.partition(" ")
            self.error_code = int(code)

    def poll(self, timeout: float, relay: bool) -> None:
        """One turn of the event loop: the child's status, held calls, the leader's exit, its output."""
        fds = [fd for fd in (self.status_r, self.holder.fd if self.holder else -1,
                             self.pidfd if self.exited is None else -1) if fd >= 0]
        if relay:  # (a pipe whose output still waits for our caller is not read meanwhile)
            fds += [fd for fd, dest in self.pipes.items() if not self.backlog.get(dest)]
        p = select.poll()
        for fd in fds:
            p.register(fd, select.POLLIN)
        for dest in [d for d, data in self.backlog.items() if data]:
            p.register(dest, select.POLLOUT)
        for fd, ev in p.poll(max(0.0, timeout) * 1000.0):
            if ev & select.POLLOUT or (fd in self.backlog and fd not in fds):
                self.write_out(fd)
            elif fd == self.status_r:
                data = os.read(fd, 4096)
                if not data:
                    os.close(fd)
                    self.status_r = -1
                *lines, self.status = (self.status + data).split(b"\n")
                for line in lines:
                    self.on_status(line.decode())
            elif self.holder is not None and fd == self.holder.fd:
                self.holder.serve(self.at, self.at + HOLD_OUTPUT)
            elif fd == self.pidfd:
                self.leader_exited()
            elif fd in self.pipes:
                self.relay(fd)

    def relay(self, fd: int) -> None:
        data = os.read(fd, 4096)  # (<= PIPE_BUF: a pipe that polls writable takes it without blocking)
        if not data:
            os.close(fd)
            del self.pipes[fd]
            return
        self.backlog[self.pipes[fd]] = data
        self.write_out(self.pipes[fd])

    def write_out(self, dest: int) -> None:
        """Pass output on to our stdout/stderr without ever blocking: a caller that does not read
        (a stalled SSH session) must not stop the timeout or the signals from working."""
        data = self.backlog.get(dest, b"")
        ready = select.poll()
        ready.register(dest, select.POLLOUT)
        try:
            while data and ready.poll(0):
                data = data[os.write(dest, data[:4096]):]
        except OSError:  # whoever started us is gone (an SSH session dropped): stop the program
            data = b""
            self.kill_group()
        self.backlog[dest] = data

    def leader_exited(self) -> None:
        info = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOWAIT)  # not reaped: its pid stays ours
        if info is not None:
            self.exited = info.si_status if info.si_code == os.CLD_EXITED else 128 + info.si_status
            if self.pipes:  # someone it left behind still holds its output: ask them to go
                self.kill_group()

    def kill_group(self, sig: int = signal.SIGTERM) -> None:
        for kill, target in ((os.killpg, self.pid), (os.kill, self.pid)):
            try:
                kill(target, sig)
                break
            except ProcessLookupError:
                continue  # (no group yet: the child had not called setsid)
        if sig == signal.SIGTERM and self.kill_at is None:
            self.kill_at = time.monotonic() + KILL_GRACE

    def run(self) -> int:
        try:
            self.fork()
            self.until_instant()
            if self.fallback:
                self.finish()
                self.__init__(self.argv, self.at, self.timeout, False, self.t["start"])  # type: ignore
                self.t["no_hold"] = "the launcher could not take the filter's listener (pidfd_getfd)"
                return self.run()
            self.let_go()
            self.until_gone()
        except Interrupted as e:
            if self.holder is not None:
                startat_hold.realtime(False)
            name = signal.Signals(e.args[0]).name
            self.t["error"], self.error_code = f"got {name}: stopped the program's group", 128 + e.args[0]
            self.kill_group()
            deadline = time.monotonic() + KILL_GRACE
            while self.exited is None and time.monotonic() < deadline:
                self.poll(deadline - time.monotonic(), relay=True)
        self.finish()
        return self.result()

    def until_instant(self) -> None:
        """The handshake and (hold) the program's start-up, its network calls held; then sleep."""
        ahead = startat_hold.REALTIME_AHEAD if self.hold else 0.002
        for margin in (ahead, 0.002):  # (then a sleep: poll's timeout is in whole milliseconds)
            while self.exited is None and not self.fallback and (self.status_r >= 0 or self.holder):
                left = self.at - margin - time.time()
                if left <= 0:
                    break
                self.poll(left, relay=False)
            if margin > 0.002 and self.holder is not None:
                startat_hold.realtime(True)
                self.nice = startat_hold.boost(self.pid, startat_hold.BOOST_NICE)
        if self.exited is None and not self.fallback:
            wait_until(self.at)

    def let_go(self) -> None:
        """At the instant: release the held calls; until HOLD_OUTPUT after it, hold output and exit."""
        h = self.holder
        now = time.time()
        end = self.at + HOLD_OUTPUT
        if h is not None:
            if h.held:
                self.t["exec"] = now
            h.let_go(h.held)
            startat_hold.realtime(False)
            h.serve(self.at, end)
        try:
            while self.exited is None and time.time() < end:
                if h is None:
                    time.sleep(end - time.time())
                elif h.pending(end - time.time()):
                    h.serve(self.at, end)
        finally:
            if h is not None:
                h.let_go(h.quiet)
            if self.nice:  # the burst is over: every thread (new ones too) back to the program's nice
                startat_hold.boost(self.pid, self.nice.get(self.pid, 0))

    def until_gone(self) -> None:
        """Pass the output on until the program and all of its group are gone, or time is up."""
        deadline = None if self.timeout is None else max(self.at, time.time() - HOLD_OUTPUT) + self.timeout
        flush_until = None  # after the group is gone, how long the caller gets to take the output
        while True:
            now = time.monotonic()
            if self.exited is not None and (not self.pipes or (self.kill_at and now >= self.kill_at)):
                flush_until = flush_until or now + KILL_GRACE
                if not any(self.backlog.values()) or now >= flush_until:
                    return
            if deadline is not None and time.time() >= deadline and self.exited is None \
                    and not self.t["timed_out"]:
                self.t["timed_out"] = True
                self.kill_group()
            if self.kill_at is not None and now >= self.kill_at:
                self.kill_group(signal.SIGKILL)
                self.kill_at = now + KILL_GRACE  # (and the pipes get one more moment to close)
            waits = [1.0, (self.kill_at or now + 1) - now]
            if deadline is not None and not self.t["timed_out"]:
                waits.append(deadline - time.time())
            self.poll(min(waits), relay=True)

    def finish(self) -> None:
        """Kill what is left of the group, reap the leader, close everything."""
        if self.pid:
            self.kill_group(signal.SIGKILL)
            _, status = os.waitpid(self.pid, 0)
            if self.exited is None:
                code = os.waitstatus_to_exitcode(status)
                self.exited = code if code >= 0 else 128 - code
        for fd in [*self.pipes, self.status_r, self.ack_w, self.pidfd]:
            if fd >= 0:
                os.close(fd)
        self.pipes, self.status_r, self.ack_w, self.pidfd = {}, -1, -1, -1
        h = self.holder
        if h is not None:
            h.close()
            self.t["ready"] = h.first_call
            if self.t["exec"] is None and h.first_call is not None:
                self.t["exec"] = max(h.first_call, self.at)  # its first network call came late
        if self.t["mode"] == "hold" and self.t["exec"] is None and self.t["execve"] is not None:
            self.t["exec"] = self.at  # it made no network call: let go at the instant

    def result(self) -> int:
        t = self.t
        t["end"] = time.time()
        if self.error_code:
            code = self.error_code
        elif t["timed_out"]:
            code = EXIT_TIMEOUT
        else:
            code = self.exited if self.exited is not None else EXIT_CANNOT_EXEC
        t["exit"] = code
        if t["exec"] is not None:
            t["late_ms"] = round((float(t["exec"]) - self.at) * 1000.0, 3)  # type: ignore[arg-type]
        return code


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    class Parser(argparse.ArgumentParser):
        def error(self, message: str) -> None:  # exit 125, not 2: 2 belongs to the program
            self.print_usage(sys.stderr)
            self.exit(EXIT_USAGE, f"startat: {message}\n")

    p = Parser(prog="startat.py", description="Start PROGRAM at the wall-clock instant --at (see the top "
               "of this file for how, the exit codes and the startat-timings line).",
               usage="%(prog)s --at EPOCH_SECONDS [--timeout SECONDS] [--node NAME] -- PROGRAM [ARGS...]")
    p.add_argument("--at", type=float, required=True, metavar="EPOCH_SECONDS", help="the instant (Unix time)")
    p.add_argument("--timeout", type=float, metavar="SECONDS",
                   help="kill the program's group this long after the instant (exit 124; default: none)")
    p.add_argument("--node", default=os.uname().nodename, help="this node's name, for the messages")
    p.add_argument("--no-hold", action="store_true",
                   help="do not exec early and hold the first network call: sleep, then exec")
    p.add_argument("program", metavar="PROGRAM")
    p.add_argument("args", nargs=argparse.REMAINDER, metavar="ARGS")
    a = p.parse_args(argv)
    if not (abs(a.at) < float("inf")) or a.at > time.time() + MAX_AHEAD:
        p.error(f"--at must be a Unix time at most {MAX_AHEAD:.0f} s ahead, not {a.at}")
    if a.timeout is not None and not 0 < a.timeout < float("inf"):
        p.error(f"--timeout must be a positive number of seconds, not {a.timeout}")
    return a


def main(argv: list[str] | None = None) -> int:
    start = time.time()
    a = parse_args(argv)

    def on_signal(signum: int, frame: object) -> None:
        signal.signal(signum, signal.SIG_IGN)
        raise Interrupted(signum)

    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, on_signal)
    code = EXIT_CANNOT_EXEC
    try:
        exec_argv, machine = prepare(a.program, a.args, a.node)
        no_hold = ("--no-hold" if a.no_hold else "startat_hold.py missing" if startat_hold is None
                   else "the instant is past" if a.at - time.time() < 0.02 else startat_hold.why_not(machine))
        launcher = Launcher(exec_argv, a.at, a.timeout, no_hold is None, start)
        launcher.t["no_hold"] = no_hold
        code = launcher.run()
        t = launcher.t
        if t["error"]:
            to_stderr(f"startat: {t['error']}\n")
    except LaunchError as e:
        code = e.code
        to_stderr(f"startat: {e}\n")
        t = timings(start, a.at, end=time.time(), exit=code, error=str(e))
    except Interrupted as e:
        code = 128 + e.args[0]
        t = timings(start, a.at, end=time.time(), exit=code,
                    error=f"got {signal.Signals(e.args[0]).name} before the program ran")
    to_stderr("startat-timings: " + json.dumps(t) + "\n")
    return code


def to_stderr(text: str, patience: float = 2.0) -> None:
    """Write to stderr, waiting at most `patience` seconds for a caller that does not read."""
    data, deadline = text.encode(), time.monotonic() + patience
    ready = select.poll()
    ready.register(2, select.POLLOUT)
    try:
        while data and ready.poll(max(0.0, deadline - time.monotonic()) * 1000.0):
            data = data[os.write(2, data[:4096]):]
    except OSError:
        pass


if __name__ == "__main__":
    sys.exit(main())
