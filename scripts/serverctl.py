#!/usr/bin/env python3
"""serverctl.py: run any server program as a managed process on a lab node (stdlib only, Linux).

    python3 serverctl.py [--dir D] start --id ID [--port N[/tcp|/udp]]... [--ready REGEX] [--ready-timeout S]
                               [--cmd TEXT] [--node NAME] -- PROGRAM [ARGS...]
    python3 serverctl.py status            # every managed server: pid, command, what it listens on
    python3 serverctl.py stop [--id ID]... # stop them by PID (all without --id)
    python3 serverctl.py logs [--id ID] [--lines N]

labctl's deploy runs this on the server node. Records live in D (default servers/; labctl passes
labctl/servers under the remote user's home): ID.pid (the keeper's PID), ID.cmd, ID.log (+ ID.log.1).

start, in this order, and printing one JSON line {"ok": ..., "pid", "listening", "stopped", "error", "log"}:
  1. checks PROGRAM before touching anything: there, executable, for this node's machine, its
     interpreter there (startat.py's checks when it is beside this file; a non-executable script
     runs with its interpreter);
  2. one server per port: managed servers holding one of the ports (any ID; and ID itself) are
     stopped by PID and listed under "stopped"; a port held by a process labctl did not start is
     an error naming it (nothing is killed that labctl did not start);
  3. starts a keeper (own session) that runs PROGRAM in its own process group, writes its output
     to ID.log (at most LOG_MAX bytes on disk: ID.log is moved to ID.log.1 at half of it), passes
     SIGTERM on to the whole group (SIGKILL after KILL_GRACE s), and exits when PROGRAM does;
  4. waits until PROGRAM (or a process it started) listens on every --port (TCP: LISTEN; UDP: a
     bound socket), read from /proc/net/{tcp,udp}{,6} and the processes' fds; without --port, on any
     port; with --ready, until ID.log matches REGEX instead. Not ready within --ready-timeout, or
     exited first: the keeper is stopped and the error carries the tail of the log.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import select
import shutil
import signal
import sys
import time

from listening import holders, listening_sockets, listens, matches, parents, show, tree  # (beside this file)

try:
    import startat  # beside this file on the nodes: its checks of a program (exists, machine, interpreter)
except ImportError:
    startat = None

SERVERS_DIR = "servers"
LOG_MAX = 8 << 20       # bytes of log kept on disk per server (two halves)
KILL_GRACE = 2.0        # s between SIGTERM and SIGKILL
TAIL_LINES = 10
_ID_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


# --- records -------------------------------------------------------------------------------------------

def path(sid: str, ext: str) -> str:
    return os.path.join(SERVERS_DIR, f"{sid}.{ext}")


def read(p: str) -> str:
    try:
        with open(p) as f:
            return f.read().strip()
    except OSError:
        return ""


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def keeper_pid(sid: str) -> int | None:
    """The live keeper of server ``sid``, or None (a reused PID that is no keeper does not count)."""
    raw = read(path(sid, "pid"))
    if not raw.isdigit():
        return None
    pid = int(raw)
    return pid if "serverctl" in cmdline(pid) and f"--id {sid} " in cmdline(pid) + " " else None


def recorded() -> list[str]:
    try:
        names = os.listdir(SERVERS_DIR)
    except OSError:
        return []
    return sorted({n[:-4] for n in names if n.endswith(".pid")})


def stop(pid: int, grace: float = KILL_GRACE + 3.0) -> None:
    """SIGTERM to the keeper (it stops its program's group), SIGKILL to what is left after ``grace``."""
    members = tree(pid)
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and tree(pid):
        time.sleep(0.01)
    for p in members | tree(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)


def forget(sid: str) -> None:
    for ext in ("pid", "ports"):  # (the command and the log stay, for `logs`)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path(sid, ext))


# --- the keeper: the program's parent for its whole life ------------------------------------------------

def keep(argv: list[str], log_path: str, ready_w: int) -> None:
    """In the forked keeper: run ``argv`` in its own group, its output to a bounded log."""
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.setpgid(0, 0)
            os.dup2(w, 1)
            os.dup2(w, 2)
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGPIPE):
                signal.signal(sig, signal.SIG_DFL)
            os.execv(argv[0], argv)
        except OSError as e:
            os.write(2, f"serverctl: cannot execute {argv[0]}: {e.strerror}\n".encode())
        os._exit(127)
    os.close(w)
    os.write(ready_w, f"{pid}\n".encode())
    os.close(ready_w)
    stopping: list[float] = []

    def on_signal(signum: int, _frame: object) -> None:
        if not stopping:
            stopping.append(time.monotonic())
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGTERM)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    log = open(log_path, "ab")  # noqa: SIM115 (rotated below)
    written, status, eof = 0, None, False
    while True:
        if eof:
            time.sleep(0.1)
        else:
            try:
                ready, _, _ = select.select([r], [], [], 0.2)
            except InterruptedError:
                ready = []
            if ready:
                data = os.read(r, 65536)
                if not data:
                    eof = True
                    os.close(r)
                else:
                    if written + len(data) > LOG_MAX // 2:  # keep the newest: this half and the last one
                        log.close()
                        os.replace(log_path, log_path + ".1")
                        log, written = open(log_path, "ab"), 0  # noqa: SIM115
                    log.write(data)
                    log.flush()
                    written += len(data)
        if status is None:
            done, code = os.waitpid(pid, os.WNOHANG)
            if done:
                status = os.waitstatus_to_exitcode(code)
                with contextlib.suppress(OSError):
                    os.killpg(pid, signal.SIGTERM)  # what it left in its group goes with it
                if not stopping:
                    stopping.append(time.monotonic())
        late = bool(stopping) and time.monotonic() - stopping[0] > KILL_GRACE
        if late:
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGKILL)
        if status is not None and (eof or late):
            break
    how = f"exited with status {status}" if status >= 0 else f"killed by {signal.Signals(-status).name}"
    log.write(f"[serverctl: {os.path.basename(argv[0])} {how}]\n".encode())
    log.close()
    os._exit(0)


# --- the commands ----------------------------------------------------------------------------------------

def check(program: str, args: list[str], node: str) -> list[str]:
    """The argv to exec, or SystemExit with one line naming the file and the node."""
    if startat is not None:
        try:
            return startat.prepare(program, args, node)[0]
        except startat.LaunchError as e:
            raise Refused(str(e)) from None
    found = program if "/" in program else shutil.which(program)
    if not found or not os.path.exists(found):
        raise Refused(f"{program}: not found on {node}")
    return [found, *args]


class Refused(Exception):
    """start refuses: one line."""


def parse_port(text: str) -> tuple[str | None, int]:
    port, _, proto = text.partition("/")
    if not port.isdigit() or not 1 <= int(port) <= 65535 or proto not in ("", "tcp", "udp"):
        raise argparse.ArgumentTypeError(f"{text!r}: a port is N, N/tcp or N/udp")
    return proto or None, int(port)


def tail(sid: str, lines: int = TAIL_LINES) -> str:
    text = ""
    for p in (path(sid, "log.1"), path(sid, "log")):
        try:
            with open(p, "rb") as f:
                f.seek(max(0, os.path.getsize(p) - 65536))
                text += f.read().decode(errors="replace")
        except OSError:
            pass
    return "\n".join(text.splitlines()[-lines:])


def cmd_start(a: argparse.Namespace) -> dict:
    out: dict = {"ok": False, "stopped": [], "listening": []}
    try:
        return start(a, out)
    except Refused as e:
        out["error"] = str(e)
        return out


def start(a: argparse.Namespace, out: dict) -> dict:
    argv = check(a.program, a.args, a.node)
    wanted = list(a.port)
    stopped = out["stopped"]
    for sid in recorded():
        pid = keeper_pid(sid)
        if pid is None:
            continue
        held = listens(tree(pid))
        if sid == a.id or any(matches(sp, wanted) for sp in held):
            stop(pid)
            forget(sid)
            stopped.append({"id": sid, "pid": pid, "ports": show({sp for sp in held if matches(sp, wanted)})})
    foreign = holders(wanted)
    if foreign:
        pid, held = next(iter(foreign.items()))
        raise Refused(f"port {', '.join(show(held))} is already in use by pid {pid} ({cmdline(pid)[:100]}), "
                      f"a process labctl did not start: stop it (e.g. systemctl disable --now "
                      f"labctl-timeserver) and deploy again")
    os.makedirs(SERVERS_DIR, exist_ok=True)
    log_path = path(a.id, "log")
    for p in (log_path, log_path + ".1"):
        with contextlib.suppress(OSError):
            os.unlink(p)
    ready_r, ready_w = os.pipe()
    keeper = os.fork()
    if keeper == 0:
        os.close(ready_r)
        try:
            keep(argv, log_path, ready_w)
        finally:
            os._exit(1)
    os.close(ready_w)
    with open(path(a.id, "pid"), "w") as f:
        f.write(f"{keeper}\n")
    with open(path(a.id, "cmd"), "w") as f:
        f.write((a.cmd or " ".join([a.program, *a.args])) + "\n")
    with open(path(a.id, "ports"), "w") as f:
        f.write(" ".join(f"{port}/{proto}" if proto else str(port) for proto, port in wanted) + "\n")
    program_pid = int(os.read(ready_r, 64).decode().strip() or 0)
    os.close(ready_r)
    out.update(pid=keeper, program_pid=program_pid)
    deadline = time.monotonic() + a.ready_timeout
    pattern = re.compile(a.ready) if a.ready else None
    name = os.path.basename(a.program)
    while True:
        members = tree(keeper)
        gone = os.waitpid(keeper, os.WNOHANG)[0] != 0 or not members
        held = listens(members) if members else set()
        out["listening"] = show(held)
        if pattern is not None:
            if pattern.search(tail(a.id, 1000)):
                break
        elif held and all(any(matches(sp, [w]) for sp in held) for w in wanted):
            break
        if gone:
            forget(a.id)
            out.update(error=f"{name} exited before it listened", log=tail(a.id))
            return out
        if time.monotonic() > deadline:
            stop(keeper)
            forget(a.id)
            what = f"its log did not show {a.ready!r}" if pattern else \
                "it did not listen on " + (", ".join(f"{proto or 'tcp/udp'} {port}" for proto, port in wanted)
                                           if wanted else "any port")
            out.update(error=f"{name} was started but {what} within {a.ready_timeout:g} s", log=tail(a.id))
            return out
        time.sleep(0.02)
    out["ok"] = True
    return out


def cmd_status(_a: argparse.Namespace) -> dict:
    servers = []
    ppids = parents()
    sockets = listening_sockets()
    for sid in recorded():
        pid = keeper_pid(sid)
        servers.append({"id": sid, "pid": pid, "alive": pid is not None, "cmd": read(path(sid, "cmd")),
                        "ports": read(path(sid, "ports")), "log": path(sid, "log"),
                        "listening": show(listens(tree(pid, ppids), sockets)) if pid else []})
    return {"servers": servers}


def cmd_stop(a: argparse.Namespace) -> dict:
    stopped = []
    for sid in a.id or recorded():
        pid = keeper_pid(sid)
        if pid is not None:
            stop(pid)
            stopped.append({"id": sid, "pid": pid})
        forget(sid)
    return {"stopped": stopped}


def cmd_logs(a: argparse.Namespace) -> str:
    ids = a.id or sorted({n.split(".")[0] for n in _listdir(SERVERS_DIR) if n.endswith((".pid", ".log"))})
    parts = []
    for sid in ids:
        pid = keeper_pid(sid)
        state = f"running, pid {pid}" if pid else "not running"
        parts.append(f"==> {sid} ({state}): {read(path(sid, 'cmd')) or '?'} <==\n{tail(sid, a.lines)}")
    return "\n".join(parts) if parts else "no server was started on this node"


def _listdir(d: str) -> list[str]:
    try:
        return os.listdir(d)
    except OSError:
        return []


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="serverctl.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--dir", default=SERVERS_DIR, help="where the records are (default: servers)")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("start")
    s.add_argument("--id", required=True)
    s.add_argument("--port", type=parse_port, action="append", default=[])
    s.add_argument("--ready", help="a regex of the log that means ready (instead of a listening socket)")
    s.add_argument("--ready-timeout", type=float, default=5.0)
    s.add_argument("--cmd", help="the command line to record (default: PROGRAM ARGS)")
    s.add_argument("--node", default=os.uname().nodename)
    s.add_argument("program")
    s.add_argument("args", nargs=argparse.REMAINDER)
    for name in ("stop", "logs"):
        q = sub.add_parser(name)
        q.add_argument("--id", action="append")
        if name == "logs":
            q.add_argument("--lines", type=int, default=50)
    sub.add_parser("status")
    a = p.parse_args(argv)
    for sid in (a.id or []) if a.command in ("stop", "logs") else []:
        if not _ID_RE.match(sid):
            p.error(f"--id {sid!r}: lowercase letters, digits, - and _")
    if a.command == "start":
        if not a.id or not _ID_RE.match(a.id):
            p.error(f"--id {a.id!r}: lowercase letters, digits, - and _")
        if not 0 < a.ready_timeout <= 600:
            p.error("--ready-timeout: 0 < S <= 600")
        if a.args[:1] == ["--"]:
            a.args = a.args[1:]
    return a


def main(argv: list[str] | None = None) -> int:
    global SERVERS_DIR
    a = parse_args(argv)
    SERVERS_DIR = a.dir
    if a.command == "logs":
        print(cmd_logs(a))
        return 0
    try:
        out = {"start": cmd_start, "status": cmd_status, "stop": cmd_stop}[a.command](a)
    except Refused as e:
        out = {"ok": False, "error": str(e), "stopped": [], "listening": []}
    print(json.dumps(out), flush=True)
    return 0 if out.get("ok", True) else 1


if __name__ == "__main__":
    sys.exit(main())
