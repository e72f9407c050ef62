"""Link impairment on machines reached over SSH (the ``vagrant`` and ``ssh`` backends): tc netem there.

Each node shapes its own lab interface: ``out`` (what it sends) is labctl's htb tree with a netem leaf
on the interface itself, ``in`` (what it receives) the same tree on an ``ifb`` device (``lcifb0``) fed
from the interface's ingress. netem does delay, jitter and loss; htb the rate; this machine's address
(where labctl's SSH comes from) is exempt. Every command runs as root (``sudo -n`` for a non-root
user), quoted, through the ``run`` that :mod:`labctl.impairment` hands in (backends never open SSH).
What each node really has is read back with ``tc``.
"""
from __future__ import annotations

import json
import re
import shlex
import socket
from collections.abc import Mapping
from pathlib import Path

from labctl.backends import shaping
from labctl.backends.base import BackendError, LinkCapabilities, LinkReport, NodeScripts
from labctl.inventory import Host, Inventory
from labctl.links import SETTINGS, Impairment, format_rate
from labctl.statefiles import write_file

STATE_FILE = "links.json"
MECHANISMS = {"loss": "netem (in the node's kernel)", "delay": "netem (in the node's kernel)",
              "jitter": "netem (in the node's kernel)", "rate": "htb (in the node's kernel)"}
PROBE = """modprobe -q sch_netem 2>/dev/null; modprobe -q ifb 2>/dev/null
tc qdisc add dev lo root handle 4c: netem delay 1ms 2>/dev/null && tc qdisc del dev lo root && echo netem
tc qdisc add dev lo root handle 4c: htb 2>/dev/null && tc qdisc del dev lo root && echo htb
ip link add lcifbprobe type ifb 2>/dev/null && ip link del lcifbprobe && echo ifb
true
"""


def _q(word: str) -> str:
    return shlex.quote(word)


def remove_lines(dev: str) -> list[str]:
    """Shell lines removing labctl's tree from ``dev`` and its ifb (only what carries labctl's marks)."""
    return [f"if tc qdisc show dev {_q(dev)} | grep -q '^qdisc htb {shaping.HANDLE} root'; then "
            f"tc qdisc del dev {_q(dev)} root; fi",
            *shaping.ifb_teardown(_q(dev))]


def node_script(dev: str, imp: Impairment, exempt: str) -> str:
    """The script one node runs (as root) to make its link ``imp``: remove labctl's old tree, build anew."""
    if not re.fullmatch(r"[A-Za-z0-9_.@-]{1,15}", dev):
        raise BackendError(f"lab interface {dev!r} is not an interface name")
    lines = ["set -e", *remove_lines(dev)]
    if "out" in imp.directions:
        lines += [f"tc {line}" for line in shaping.tree(dev, imp, exempt=exempt, exempt_field="dst",
                                                         netem=True, netem_loss=True)]
    if "in" in imp.directions:
        lines += shaping.ifb_setup(dev)
        lines += [f"tc {line}" for line in shaping.tree(shaping.IFB, imp, exempt=exempt, exempt_field="src",
                                                         netem=True, netem_loss=True)]
    return "\n".join(lines) + "\n"


def read_script(dev: str) -> str:
    """Print the qdiscs and classes of the interface and of labctl's ifb, in sections."""
    d = _q(dev)
    return (f"echo '## out'; tc qdisc show dev {d}; tc class show dev {d}; "
            f"echo '## in'; tc qdisc show dev {shaping.IFB} 2>/dev/null; tc class show dev {shaping.IFB} "
            f"2>/dev/null; true")


def parse_read(output: str) -> dict[str, list[str]]:
    """``{"out": ["rate 1mbit (htb)", "delay 50ms jitter 5ms loss 30% (netem)"], "in": [...]}``."""
    found: dict[str, list[str]] = {"out": [], "in": []}
    for section in output.split("## ")[1:]:
        direction, _, text = section.partition("\n")
        direction = direction.strip()
        if direction not in found or f"qdisc htb {shaping.HANDLE} root" not in text:
            continue
        rate = re.search(rf"class htb {shaping.LAB_CLASS} .*? rate (\d+(?:\.\d+)?)([KMG]?)bit", text)
        if rate:
            bits = round(float(rate.group(1)) * {"": 1, "K": 10**3, "M": 10**6, "G": 10**9}[rate.group(2)])
            if bits != shaping.UNSHAPED_BITS:
                found[direction].append(f"rate {format_rate(bits)} (htb)")
        netem = re.search(r"qdisc netem \S+ parent \S+ (.*)", text)
        if netem:
            words = netem.group(1).split()
            parts = []
            if "delay" in words:
                i = words.index("delay")
                parts.append(f"delay {words[i + 1]}")
                if i + 2 < len(words) and words[i + 2][0].isdigit():
                    parts.append(f"jitter {words[i + 2]}")
            if "loss" in words:
                parts.append(f"loss {words[words.index('loss') + 1]}")
            if parts:
                found[direction].append(" ".join(parts) + " (netem)")
    return found


def control_address(node_address: str) -> str:
    """This machine's source address towards ``node_address`` (what the node sees labctl's SSH come from)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect((node_address, 22))  # UDP connect sends nothing: it only picks the route
        return sock.getsockname()[0]


class RemoteLinks:
    """Link impairment for backends whose nodes are reached over SSH (uses ``inventory()``, ``lab``,
    ``state_dir``). The scripts run through ``run``, handed in from above (:mod:`labctl.impairment`):
    a backend never opens SSH itself."""

    shapes_over_ssh = True
    links_survive_down = False  # True for hosts that stay when the lab goes down (the ssh backend)

    def _links_file(self) -> Path:
        return Path(self.state_dir) / STATE_FILE

    def _links_state(self) -> dict:
        try:
            return json.loads(self._links_file().read_text())
        except (OSError, ValueError):
            return {}

    def _save_links_state(self, state: dict) -> None:
        write_file(self._links_file(), json.dumps(state, indent=1))

    @staticmethod
    def _runner(run: NodeScripts | None) -> NodeScripts:
        if run is None:
            raise BackendError("this backend shapes links over SSH: go through labctl.impairment")
        return run

    def forget_link_kernels(self) -> None:
        """The machines may have been rebuilt (``up``): probe their kernels again before the next use."""
        state = self._links_state()
        if state.pop("kernel", None) is not None:
            self._save_links_state(state)

    def _probe_links(self, inventory: Inventory, run: NodeScripts) -> None:
        """Ask every node once what its kernel offers (netem, htb, ifb); keep it in the state."""
        found = run({h.name: PROBE for h in inventory.hosts})
        state = self._links_state()
        state["kernel"] = {name: sorted(set(out.split())) for name, out in found.items()}
        self._save_links_state(state)

    def link_capabilities(self) -> LinkCapabilities:
        kernels = self._links_state().get("kernel")
        if not kernels:
            return LinkCapabilities(missing=dict.fromkeys(SETTINGS, "is unknown until the lab is up"))
        missing = {}
        lacking = {need: [n for n, found in kernels.items() if need not in found]
                   for need in ("netem", "htb")}
        for setting in ("loss", "delay", "jitter"):
            if lacking["netem"]:
                missing[setting] = (f"needs sch_netem, which {', '.join(lacking['netem'])} lack(s) "
                                    "(Debian: apt-get install linux-image-amd64, or modprobe sch_netem)")
        if lacking["htb"]:
            missing["rate"] = f"needs the htb qdisc, which {', '.join(lacking['htb'])} lack(s)"
        return LinkCapabilities({k: v for k, v in MECHANISMS.items() if k not in missing}, missing)

    def link_settings(self) -> dict[str, Impairment]:
        stored = self._links_state().get("wanted", {})
        return {n.name: Impairment.from_dict(stored.get(n.name, {})) for n in self.lab.nodes}

    def impair(self, wanted: Mapping[str, Impairment], run: NodeScripts | None = None) -> list[LinkReport]:
        run = self._runner(run)
        inventory = self.inventory()
        if not self._links_state().get("kernel"):
            self._probe_links(inventory, run)
        full = {h.name: wanted.get(h.name, Impairment()) for h in inventory.hosts}
        self.link_capabilities().refuse_unsupported(full)
        state = self._links_state()
        state["wanted"] = {k: v.to_dict() for k, v in full.items()}
        self._save_links_state(state)
        run({h.name: node_script(h.lab_interface, full[h.name], control_address(h.address))
             for h in inventory.hosts})
        return self.link_reports(run)

    def link_reports(self, run: NodeScripts | None = None) -> list[LinkReport]:
        wanted = self.link_settings()
        if not any(imp.active for imp in wanted.values()) and not self._links_state().get("wanted"):
            return []  # labctl never shaped these nodes: nothing to read
        inventory = self.inventory()
        outputs = self._runner(run)({h.name: read_script(h.lab_interface) for h in inventory.hosts})
        return [report(h, wanted.get(h.name, Impairment()), outputs.get(h.name, "")) for h in inventory.hosts]


def report(host: Host, wanted: Impairment, output: str) -> LinkReport:
    """What ``host`` really has (from :func:`read_script`'s output) beside what was asked."""
    found = parse_read(output)
    applied = [f"{phrase.replace(' (', f' {d} (', 1)}" for d in ("out", "in") for phrase in found[d]]
    problems = []
    for direction in ("out", "in"):
        asked = direction in wanted.directions
        kinds = " ".join(found[direction])
        for setting in ("delay", "loss", "rate"):
            if asked and getattr(wanted, setting) and setting not in kinds:
                problems.append(f"{setting} {direction} is not in force on {host.lab_interface}")
        if not asked and found[direction]:
            problems.append(f"{direction}: labctl's shaping is there but was not asked for")
    return LinkReport(host.name, wanted, tuple(applied), tuple(problems))
