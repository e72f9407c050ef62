"""Delay and jitter on a kernel without netem: NFQUEUE rules in the nodes and the lab's delayer process.

Per node and direction, one chain of labctl's own in the node namespace's ``mangle`` table
(iptables-nft: nftables has no ``queue`` expression here, the xtables NFQUEUE target works)::

    labctl-delay-out  (jumped to from OUTPUT):     ! -d HOST/32 -j NFQUEUE --queue-num 0 --queue-bypass
    labctl-delay-in   (jumped to from PREROUTING): ! -s HOST/32 -j NFQUEUE --queue-num 1 --queue-bypass

and one process per lab (``netns/delayer.py``, pid file ``STATE/delayer.pid``) that holds each queued
packet for its time. Removing takes out exactly those chains and jumps (and the ``mangle`` table if
labctl created it), and stops that process by its pid.
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from labctl.backends.base import BackendError
from labctl.backends.netns import linux
from labctl.statefiles import open_append, write_file

DELAYER = Path(__file__).with_name("delayer.py")
IPTABLES = "iptables-nft"
READY_TIMEOUT = 5.0
HOOKS = {"out": ("OUTPUT", "labctl-delay-out", "-d", 0), "in": ("PREROUTING", "labctl-delay-in", "-s", 1)}


def rules_script(host_address: str, directions: tuple[str, ...]) -> str:
    """Shell script (run in a node's namespace) that removes labctl's delay chains, then adds ``directions``.

    Prints ``created-mangle`` when it had to create the ``ip mangle`` table (so removal may delete it).
    """
    lines = ["set -e", f"ipt={IPTABLES}",
             "nft list table ip mangle >/dev/null 2>&1 || had_none=1"]
    lines += remove_lines()
    for direction in directions:
        hook, chain, match, queue = HOOKS[direction]
        lines += [f"$ipt -t mangle -N {chain}",
                  f"$ipt -t mangle -A {chain} ! {match} {shlex.quote(host_address)}/32 "
                  f"-j NFQUEUE --queue-num {queue} --queue-bypass",
                  f"$ipt -t mangle -A {hook} -j {chain}"]
    if directions:
        lines.append('[ -n "${had_none:-}" ] && echo created-mangle || true')
    return "\n".join(lines) + "\n"


def remove_lines(drop_table: bool = False) -> list[str]:
    """Shell lines removing labctl's delay chains and their jumps (and, if asked, an emptied mangle table)."""
    lines = []
    for hook, chain, _, _ in HOOKS.values():
        lines += [f"while $ipt -t mangle -D {hook} -j {chain} 2>/dev/null; do :; done",
                  f"$ipt -t mangle -F {chain} 2>/dev/null || true",
                  f"$ipt -t mangle -X {chain} 2>/dev/null || true"]
    if drop_table:
        lines.append("if nft list table ip mangle >/dev/null 2>&1 && ! $ipt -t mangle -S | grep -q '^-A'; "
                     "then nft delete table ip mangle; fi")
    return lines


def set_rules(netns: str, host_address: str, directions: tuple[str, ...], *, drop_table: bool) -> bool:
    """Put exactly ``directions``' NFQUEUE chains in ``netns``; True when labctl created ``ip mangle``."""
    script = rules_script(host_address, directions) if directions else \
        "\n".join(["set -e", f"ipt={IPTABLES}", *remove_lines(drop_table)]) + "\n"
    proc = subprocess.run(["ip", "netns", "exec", netns, "sh", "-c", script], capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        raise BackendError(f"could not set the delay rules in {netns}: {proc.stderr.strip() or 'failed'}")
    return "created-mangle" in proc.stdout


def rules_present(netns: str) -> set[str]:
    """The directions whose delay chain is jumped to in ``netns`` (read back from the kernel)."""
    proc = subprocess.run(["ip", "netns", "exec", netns, IPTABLES, "-t", "mangle", "-S"], capture_output=True,
                          text=True, check=False)
    return {d for d, (hook, chain, _, _) in HOOKS.items() if f"-A {hook} -j {chain}" in proc.stdout}


class DelayerProcess:
    """The lab's delayer: config, pid file and log in the lab's state directory."""

    def __init__(self, state_root: Path) -> None:
        self.config = Path(state_root) / "delayer.json"
        self.pid_file = Path(state_root) / "delayer.pid"
        self.log = Path(state_root) / "delayer.log"

    def pid(self) -> int | None:
        """The delayer's pid if it runs (its command line names this lab's config)."""
        try:
            pid = int(self.pid_file.read_text().split()[0])
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            return None
        return pid if str(self.config).encode() in cmdline and linux.process_alive(pid) else None

    def running_config(self) -> dict:
        try:
            return json.loads(self.config.read_text())
        except (OSError, ValueError):
            return {}

    def set(self, nodes: list[dict]) -> int | None:
        """Hold ``nodes`` (``[{"netns", "queues": {"0": [delay, jitter]}}]``): start, reload or stop."""
        if not nodes:
            self.stop()
            return None
        write_file(self.config, json.dumps({"nodes": nodes}, indent=1))
        pid = self.pid()
        if pid is not None:
            os.kill(pid, 1)  # SIGHUP: re-read the config; sockets for kept nodes stay bound
            return pid
        return self._start()

    def _start(self) -> int:
        self.pid_file.unlink(missing_ok=True)
        with open_append(self.log) as log:
            proc = subprocess.Popen([sys.executable, str(DELAYER), str(self.config), str(self.pid_file)],
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True, close_fds=True)
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.pid() == proc.pid:
                return proc.pid
            if proc.poll() is not None:
                break
            time.sleep(0.005)
        linux.kill_and_wait([proc.pid])
        proc.poll()
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        tail = " / ".join(text.strip().splitlines()[-2:])
        raise BackendError(f"the delay process did not start ({tail or 'no output'}; log {self.log})")

    def stop(self) -> bool:
        """Stop the delayer (it lets every held packet go first); True when one ran."""
        pid = self.pid()
        if pid is not None:
            linux.kill_and_wait([pid], timeout=2.0)
        self.pid_file.unlink(missing_ok=True)
        self.config.unlink(missing_ok=True)
        return pid is not None
