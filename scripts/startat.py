#!/usr/bin/env python3
"""startat.py: start a program at one wall-clock instant (stdlib only, Python >= 3.9, Linux).

    python3 startat.py --at EPOCH_SECONDS [--timeout SECONDS] [--node NAME] -- PROGRAM [ARGS...]

labctl runs this on every client node with the same --at, so that every client, in whatever language,
starts at one instant. Everything that can be done early is done early: PROGRAM is found and checked
(startat_check.py beside it: there, executable, for this node's machine, its interpreter there) and
forked. Then, with startat_hold.py beside it and where the kernel allows it (Linux >= 5.6 on x86-64 or
aarch64), the program is exec'd *at once* and runs its start-up before the instant (tens of ms for a
Python runtime on a busy node, a few for Go's), but a seccomp filter stops it at its first network call
(or its exit) until the instant, when the launcher lets that call go on: the cost of exec is off the
critical path, and at the instant each client costs one system call. The launcher sleeps until SPIN
before the instant and spins the rest (real-time, so a busy core cannot make it wake late). Otherwise
(or with --no-hold) the forked child sleeps until the instant and then execs the program.

The program's stdout and stderr reach the caller, held back until HOLD_OUTPUT seconds after the
instant (printing and exiting at once would delay the clients still waking up; with the hold, the
program's own writes to stdout/stderr and its exit wait too). It runs in its own session and process
group; when it ends, anything left in its group is killed too.

Exit status: the program's (128+N when signal N killed it); 124 when --timeout (counted from the
instant) killed its group (SIGTERM, then SIGKILL after KILL_GRACE s); 126 when it cannot be executed,
127 when it (or its interpreter) is not found; 125 for bad arguments to startat itself. SIGTERM/SIGHUP/
SIGINT to the launcher kill the program's group too (exit 128+N). An error of startat's own is one
`startat: ...` line on stderr. The last line on stderr is always

    startat-timings: {"start": .., "ready": .., "exec": .., "end": .., "exit": .., "timed_out": ..,
                      "error": .., "late_ms": .., "at": .., "mode": "hold"|"exec", "execve": ..,
                      "no_hold": null or why the program was not held, "connects": ..}

start: the launcher started; ready: the program was waiting for the instant (hold: it reached its
first network call; exec: the child went to sleep); exec: the program was let go (hold: its first
network call was released; exec: execve); late_ms: exec minus --at; execve: when execve was called;
end: the program's group was gone; connects: TCP connects the launcher made for the program at the
instant (startat_hold.py). Times are epoch seconds (floats); null where they never happened.
"""
from __future__ import annotations

import os
import select
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # its parts beside it (even under -I)
from startat_check import EXIT_CANNOT_EXEC, EXIT_NOT_FOUND, UNAME_NAMES, LaunchError, parse_args, prepare
from startat_output import Relay, to_stderr

try:
    import startat_hold  # the hold (optional): exec early, first network call held until the instant
except ImportError:
    startat_hold = None

EXIT_TIMEOUT = 124
HOLD_OUTPUT = 0.05  # seconds after the instant before output is passed on
KILL_GRACE = 1.0    # seconds between SIGTERM and SIGKILL to the program's group
SLEEP_TO = 0.002    # seconds before the instant (or the spin) that polling ends and a finer sleep takes over
SPIN = 0.003        # hold: seconds before the instant from which the (real-time) launcher spins, not sleeps
# (serverctl.py uses the checks through this file)
__all__ = ["UNAME_NAMES", "LaunchError", "main", "prepare"]



# ---------------------------------------------------------------------------------------------------
# 1. Before the instant: the checks are startat_check.py's; the timings; the wait

def timings(start: float, at: float, **known: object) -> dict[str, object]:
    """The startat-timings object: every key, null until known."""
    t: dict[str, object] = dict.fromkeys(("start", "ready", "exec", "end", "exit", "timed_out", "error",
                                          "late_ms", "at", "mode", "execve", "no_hold", "connects"))
    t.update(start=start, at=at, timed_out=False, **known)
    return t


def wait_until(epoch: float, spin: float = 0.0) -> float:
    """Sleep until wall-clock `epoch` (the last `spin` seconds: spin); return the wake time."""
    while True:
        left = epoch - spin - time.time()
        if left <= 0:
            break
        time.sleep(left)
    now = time.time()
    while now < epoch:
        now = time.time()
    return now


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
            try:  # noqa: SIM105  (contextlib is not imported: a faster start)
                startat_hold.libc().prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG: die with us
            except (ImportError, OSError, AttributeError):
                pass
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
        try:  # noqa: SIM105  (contextlib is not imported: a faster start)
            say(f"E {code} cannot execute {argv[0]}: {e.strerror or e}")
        except OSError:
            pass
    finally:
        os._exit(code)


class Launcher:
    """One program started at one instant: `run()` returns startat's exit status, `t` the timings."""

    def __init__(self, argv: list[str], at: float, timeout: float | None, hold: bool, start: float,
                 spin: float = SPIN) -> None:
        self.argv, self.at, self.timeout, self.hold, self.spin = argv, at, timeout, hold, spin
        self.t = timings(start, at, mode="hold" if hold else "exec")
        self.pid = 0
        self.holder: startat_hold.Holder | None = None
        self.status = b""  # the child's status lines not yet parsed
        self.exited: int | None = None  # the leader's exit status, once it is gone (not yet reaped)
        self.error_code = 0
        self.kill_at: float | None = None  # monotonic time of the SIGKILL that follows a SIGTERM
        self.fallback = False  # the hold could not be set up: start again without it
        self.out = Relay(on_gone=self.kill_group)  # the program's stdout/stderr, passed on
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
        self.out.pipes = {out_r: 1, err_r: 2}

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
        if relay:
            fds += self.out.readable()
        p = select.poll()
        for fd in fds:
            p.register(fd, select.POLLIN)
        for dest in self.out.waiting():
            p.register(dest, select.POLLOUT)
        for fd, ev in p.poll(max(0.0, timeout) * 1000.0):
            if ev & select.POLLOUT or (fd in self.out.backlog and fd not in fds):
                self.out.write_out(fd)
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
            elif fd in self.out.pipes:
                self.out.read(fd)

    def leader_exited(self) -> None:
        info = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOWAIT)  # not reaped: its pid stays ours
        if info is not None:
            self.exited = info.si_status if info.si_code == os.CLD_EXITED else 128 + info.si_status
            if self.out.pipes:  # someone it left behind still holds its output: ask them to go
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
                self.__init__(self.argv, self.at, self.timeout, False, self.t["start"], self.spin)  # type: ignore
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
        """The handshake and (hold) the program's start-up, its network calls held; then sleep, and
        (hold: real-time from REALTIME_AHEAD before the instant) spin the last SPIN seconds."""
        ahead = startat_hold.REALTIME_AHEAD if self.hold else SLEEP_TO
        for margin in (ahead, self.spin + SLEEP_TO):  # (poll's timeout is in whole milliseconds)
            while self.exited is None and not self.fallback and (self.status_r >= 0 or self.holder):
                left = self.at - margin - time.time()
                if left <= 0:
                    break
                self.poll(left, relay=False)
            if margin > self.spin + SLEEP_TO and self.holder is not None:
                startat_hold.realtime(True)
                self.nice = startat_hold.boost(self.pid, startat_hold.BOOST_NICE)
        if self.exited is None and not self.fallback:
            wait_until(self.at, self.spin if self.holder is not None else 0.0)

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
            if self.exited is not None and (not self.out.pipes or (self.kill_at and now >= self.kill_at)):
                flush_until = flush_until or now + KILL_GRACE
                if not self.out.waiting() or now >= flush_until:
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
        self.out.close()
        for fd in (self.status_r, self.ack_w, self.pidfd):
            if fd >= 0:
                os.close(fd)
        self.status_r, self.ack_w, self.pidfd = -1, -1, -1
        h = self.holder
        if h is not None:
            h.close()
            self.t["ready"], self.t["connects"] = h.first_call, h.connected
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
        spin = SPIN if a.spin is None else a.spin
        launcher = Launcher(exec_argv, a.at, a.timeout, no_hold is None, start, spin)
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
    import json  # (here, when the program is done: not on the way to the instant)

    to_stderr("startat-timings: " + json.dumps(t) + "\n")
    return code


if __name__ == "__main__":
    sys.exit(main())
