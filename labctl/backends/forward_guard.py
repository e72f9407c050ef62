"""The forwarding guard: nothing a lab node sends is forwarded off its bridge, whatever the host allows.

Lab users are root in every node. A node that adds ``default via <host address>`` hands its packets to
this machine, and a host with ``net.ipv4.ip_forward=1`` and a FORWARD policy of ACCEPT (most Docker
hosts) routes them onto its real network, unNATed. The guard makes "traffic never leaves the lab" hold
without depending on host settings labctl neither checks nor sets: one nftables table per lab, named
for it, with one base chain on the ``inet`` forward hook::

    table inet labctl-LAB {
        chain forward {
            type filter hook forward priority filter - 10; policy accept;
            iifname "BR" oifname "BR" counter accept   # bridged between the lab's own ports
            iifname "BR" counter drop                   # routed out of the lab
            oifname "BR" counter drop                   # routed into the lab
        }
    }

The first rule matters on hosts with ``br_netfilter`` and ``bridge-nf-call-iptables=1`` (this build
machine, every Docker host): frames bridged between two lab ports then pass the inet forward hook too,
with the bridge as both input and output device. Without that module they never reach it. A drop in
any base chain is final in nftables, so no other table's ``accept`` can undo the guard.

A lab with several bridges here (the vagrant backend's libvirt networks: the lab's and Vagrant's
management network) gets one "within" rule per bridge and the drops for all of them (``iifname {
"virbr1", "virbr2" }``): nothing is routed between them either.

Any backend that puts a bridge on this machine (the namespace lab, libvirt's networks, a Docker
network) calls :func:`install` once the bridge exists and :func:`remove` when it tears the lab down;
:func:`describe` is the line ``labctl status`` prints.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable

from labctl.errors import LabctlError

Runner = Callable[..., subprocess.CompletedProcess]
FAMILY = "inet"
_LAB_RE = re.compile(r"^[a-z][a-z0-9]{0,30}$")
_IFNAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")


class GuardError(LabctlError):
    """The forwarding guard could not be put in place (or taken away); the message says why."""


def table_name(lab_name: str) -> str:
    """``labctl-LAB``: the one nftables table (family inet) the guard of lab ``lab_name`` owns."""
    if not _LAB_RE.match(lab_name):
        raise GuardError(f"lab name {lab_name!r} cannot name an nftables table "
                         "(lowercase letters and digits)")
    return f"labctl-{lab_name}"


def ruleset(lab_name: str, bridge: str, *more: str) -> str:
    """The ``nft -f`` script that (re)creates the guard atomically: one transaction, never a gap."""
    bridges = list(dict.fromkeys((bridge, *more)))
    for name in bridges:
        if not _IFNAME_RE.match(name):
            raise GuardError(f"bridge name {name!r} is not a Linux interface name")
    table = table_name(lab_name)
    within = "".join(f"\t\tiifname \"{name}\" oifname \"{name}\" counter accept comment \"within the lab\"\n"
                     for name in bridges)
    named = f"\"{bridges[0]}\"" if len(bridges) == 1 else "{ " + ", ".join(f"\"{n}\"" for n in bridges) + " }"
    which = f"lab bridge {bridges[0]}" if len(bridges) == 1 else f"lab bridges {', '.join(bridges)}"
    return (f"table {FAMILY} {table}\n"
            f"delete table {FAMILY} {table}\n"
            f"table {FAMILY} {table} {{\n"
            f"\tcomment \"labctl: nothing is forwarded into or out of {which}\"\n"
            f"\tchain forward {{\n"
            f"\t\ttype filter hook forward priority filter - 10; policy accept;\n"
            f"{within}"
            f"\t\tiifname {named} counter drop comment \"out of the lab\"\n"
            f"\t\toifname {named} counter drop comment \"into the lab\"\n"
            f"\t}}\n"
            f"}}\n")


def _nft(run: Runner, *args: str, script: str | None = None) -> subprocess.CompletedProcess:
    if run is subprocess.run and shutil.which("nft", path="/usr/sbin:/sbin:/usr/bin:/bin") is None:
        raise GuardError("nft is missing (the lab's forwarding guard needs it): apt-get install -y nftables")
    argv = ["nft", *args] if script is None else ["nft", "-f", "-"]
    try:
        return run(argv, input=script, capture_output=True, text=True, check=False)
    except OSError as exc:  # not on this user's PATH (/usr/sbin), or not allowed to run it
        raise GuardError(f"cannot run nft ({exc.strerror or exc}): the lab's forwarding guard needs it, "
                         "as root (apt-get install -y nftables)") from None


def install(lab_name: str, bridge: str, *more: str, run: Runner = subprocess.run) -> None:
    """Create (or replace) the guard of ``lab_name`` on ``bridge`` (and ``more`` bridges); idempotent."""
    proc = _nft(run, script=ruleset(lab_name, bridge, *more))
    if proc.returncode != 0:
        raise GuardError(f"could not install the forwarding guard (nft table {FAMILY} "
                         f"{table_name(lab_name)}): {(proc.stderr or '').strip() or 'nft failed'}")


def remove(lab_name: str, *, run: Runner = subprocess.run) -> bool:
    """Delete exactly the guard's table; True when it existed."""
    table = table_name(lab_name)
    if not present(lab_name, run=run):
        return False
    proc = _nft(run, "delete", "table", FAMILY, table)
    if proc.returncode != 0 and present(lab_name, run=run):
        raise GuardError(f"could not remove nft table {FAMILY} {table}: {(proc.stderr or '').strip()}")
    return True


def present(lab_name: str, *, run: Runner = subprocess.run) -> bool:
    """True when the guard's table exists."""
    return _nft(run, "list", "table", FAMILY, table_name(lab_name)).returncode == 0


def counters(lab_name: str, *, run: Runner = subprocess.run) -> dict[str, int]:
    """Packets the guard's rules have matched, by comment (``within the lab``, ``out of the lab`` ...),
    summed over the bridges."""
    return _counters(_nft(run, "list", "table", FAMILY, table_name(lab_name)).stdout or "")


def _counters(listing: str) -> dict[str, int]:
    found: dict[str, int] = {}
    for match in re.finditer(r'counter packets (\d+) bytes \d+ \w+ comment "([^"]+)"', listing):
        found[match.group(2)] = found.get(match.group(2), 0) + int(match.group(1))
    return found


def describe(lab_name: str, *, run: Runner = subprocess.run) -> str:
    """One line for ``labctl status``: the guard's table, the bridges it guards and what it dropped,
    or that it is missing."""
    table = f"nft table {FAMILY} {table_name(lab_name)}"
    proc = _nft(run, "list", "table", FAMILY, table_name(lab_name))
    if proc.returncode != 0:
        return f"missing: no {table} (labctl up puts it back; until then nothing stops forwarding)"
    bridges = re.findall(r'iifname "([^"]+)" oifname "\1"', proc.stdout or "")
    seen = _counters(proc.stdout or "")
    return (f"{table} on {', '.join(bridges) or 'no bridge'}: dropped {seen.get('out of the lab', 0)} "
            f"packet(s) routed out of the lab, {seen.get('into the lab', 0)} into it")
