"""Loss, delay, jitter and rate on the namespace lab's links, with what this kernel offers.

Per node, ``out`` is what the node sends and ``in`` what it receives; the host's lab address is exempt.

* **loss**: one nftables table per lab, ``table bridge labctl-LAB``: a rule per node and direction
  on the bridge's forward hook, ``iifname VETH`` (out) / ``oifname VETH`` (in), ``numgen random mod
  10000 < P`` (0.01 % steps), IPv4/IPv6 only (ARP is never dropped), with a counter.
* **rate**: an htb tree (``labctl.backends.shaping``) on the node's ``eth0`` (out, inside its namespace)
  or on the host end of its veth (in): the veth's two ends are the two egresses, no ifb needed.
* **delay, jitter**: netem as the tree's leaf where the kernel has ``sch_netem``; otherwise the
  NFQUEUE delayer (``netns/delay.py``), or a clear refusal when neither is there.

What the kernel offers is probed once, at ``up`` (in the server's namespace, on its ``lo``), and kept
in ``STATE/links.json`` with what each node was set to. ``status`` reads back what is in force.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

from labctl.backends import shaping
from labctl.backends.base import BackendError, LinkCapabilities, LinkReport
from labctl.backends.netns.delay import DelayerProcess, rules_present, set_rules
from labctl.backends.netns.state import NODE_INTERFACE, LabPlan, NodePlan
from labctl.links import Impairment, format_rate, resolve
from labctl.statefiles import write_file

STATE_FILE = "links.json"
DEFAULT_ROOTS = ("noqueue", "pfifo_fast", "mq", "fq_codel")  # a root qdisc nobody chose: free to replace
NFT_FAMILY = "bridge"
NETEM_HINT = ("needs sch_netem, which this kernel lacks, or NFQUEUE with iptables-nft (apt-get install "
              "iptables); or use --backend vagrant (Debian's kernel has netem)")
PROBE = """
tc qdisc add dev lo root handle 4c: htb 2>/dev/null && tc qdisc del dev lo root 2>/dev/null && echo htb
tc qdisc add dev lo root handle 4c: netem delay 1ms 2>/dev/null && tc qdisc del dev lo root && echo netem
if command -v iptables-nft >/dev/null; then
  nft list table ip mangle >/dev/null 2>&1 || fresh=1
  iptables-nft -t mangle -N labctl-probe 2>/dev/null &&
    iptables-nft -t mangle -A labctl-probe -j NFQUEUE --queue-num 0 --queue-bypass 2>/dev/null && echo nfqueue
  iptables-nft -t mangle -F labctl-probe 2>/dev/null; iptables-nft -t mangle -X labctl-probe 2>/dev/null
  [ -n "${fresh:-}" ] && nft delete table ip mangle 2>/dev/null
fi
true
"""


def table_name(lab: str) -> str:
    return f"labctl-{lab}"


# --- what the kernel offers ------------------------------------------------------------------------------

def detect(lab_plan: LabPlan) -> dict[str, bool]:
    """Probe, in the server's namespace, for htb, netem and NFQUEUE; nft's bridge numgen on the host."""
    proc = subprocess.run(["ip", "netns", "exec", lab_plan.node("server").netns, "sh", "-c", PROBE],
                          capture_output=True, text=True, check=False)
    found = set(proc.stdout.split())
    nft = shutil.which("nft") is not None and subprocess.run(
        ["nft", "-c", "-f", "-"], input=loss_ruleset(lab_plan, {"server": Impairment(loss=1)}),
        capture_output=True, text=True, check=False).returncode == 0
    return {"nft_loss": nft, "htb": "htb" in found, "netem": "netem" in found, "nfqueue": "nfqueue" in found}


def capabilities(kernel: Mapping[str, bool]) -> LinkCapabilities:
    mechanisms, missing = {}, {}
    if kernel.get("nft_loss"):
        mechanisms["loss"] = "nftables numgen random on the bridge (table bridge labctl-LAB)"
    else:
        missing["loss"] = "needs nftables with the bridge family (apt-get install nftables)"
    if kernel.get("htb"):
        mechanisms["rate"] = "htb on the node's eth0 (out) / the host end of its veth (in)"
    else:
        missing["rate"] = "needs the htb qdisc (CONFIG_NET_SCH_HTB), which this kernel lacks"
    if kernel.get("netem") and kernel.get("htb"):
        delay = "netem under the htb tree"
    elif kernel.get("nfqueue"):
        delay = "NFQUEUE delayer (a labctl process holds each packet; no netem in this kernel)"
    else:
        delay = ""
    for setting in ("delay", "jitter"):
        if delay:
            mechanisms[setting] = delay
        else:
            missing[setting] = NETEM_HINT
    return LinkCapabilities(mechanisms, missing)


# --- state ----------------------------------------------------------------------------------------------

def read_state(state_root: Path) -> dict:
    try:
        return json.loads((Path(state_root) / STATE_FILE).read_text())
    except (OSError, ValueError):
        return {}


def write_state(state_root: Path, state: dict) -> None:
    write_file(Path(state_root) / STATE_FILE, json.dumps(state, indent=1))


def wanted_from_state(state: dict, lab_plan: LabPlan) -> dict[str, Impairment]:
    stored = state.get("wanted", {})
    return {n.name: Impairment.from_dict(stored.get(n.name, {})) for n in lab_plan.nodes}


# --- applying --------------------------------------------------------------------------------------------

def loss_ruleset(lab_plan: LabPlan, wanted: Mapping[str, Impairment]) -> str:
    """The ``nft -f`` script that replaces the lab's loss table atomically (or deletes it when empty)."""
    table = f"{NFT_FAMILY} {table_name(lab_plan.lab)}"
    rules = []
    for node in lab_plan.nodes:
        imp = wanted.get(node.name, Impairment())
        if not imp.loss:
            continue
        threshold = round(imp.loss * 100)
        for direction in imp.directions:
            match = "iifname" if direction == "out" else "oifname"
            rules.append(f'\t\t{match} "{node.veth}" meta protocol {{ ip, ip6 }} numgen random mod 10000 < '
                         f'{threshold} counter drop comment "{node.name} {direction} loss {imp.loss:g}%"')
    head = f"table {table}\ndelete table {table}\n"
    if not rules:
        return head
    return head + (f"table {table} {{\n\tcomment \"labctl: link loss of lab {lab_plan.lab}\"\n"
                   f"\tchain forward {{\n\t\ttype filter hook forward priority -200; policy accept;\n"
                   + "\n".join(rules) + "\n\t}\n}\n")


def apply(lab_plan: LabPlan, state_root: Path, wanted: Mapping[str, Impairment]) -> list[LinkReport]:
    """Make every link what ``wanted`` says (nodes left out: perfect), then read back what is in force."""
    state = read_state(state_root)
    kernel = state.get("kernel") or detect(lab_plan)
    caps = capabilities(kernel)
    full = {n.name: wanted.get(n.name, Impairment()) for n in lab_plan.nodes}
    caps.refuse_unsupported(full)
    netem = bool(kernel.get("netem") and kernel.get("htb"))
    previous = wanted_from_state(state, lab_plan)
    state.update(kernel=kernel, wanted={k: v.to_dict() for k, v in full.items()})
    state.setdefault("created_mangle", [])
    write_state(state_root, state)  # before touching anything: down/clean know what to look for

    _nft(loss_ruleset(lab_plan, full), what="set the lab's loss rules")
    for node in lab_plan.nodes:
        for direction in ("out", "in"):
            want = full[node.name] if direction in full[node.name].directions else Impairment()
            had = previous[node.name] if direction in previous[node.name].directions else Impairment()
            if shaping.needs_tree(want, netem=netem, netem_loss=False) or \
                    shaping.needs_tree(had, netem=netem, netem_loss=False):
                _set_tree(lab_plan, node, direction, want, netem)
    if not netem:
        _set_delays(lab_plan, state_root, state, full)
    write_state(state_root, state)
    return reports(lab_plan, state_root)


def _set_tree(lab_plan: LabPlan, node: NodePlan, direction: str, imp: Impairment, netem: bool) -> None:
    """Replace labctl's htb tree on one side of the node's veth (or remove it: a perfect link)."""
    netns, dev = (node.netns, NODE_INTERFACE) if direction == "out" else (None, node.veth)
    lines = []
    current = _qdiscs(netns, dev)
    if shaping.is_ours(current):
        lines += shaping.teardown(dev)
    elif any(q.get("root") and q.get("kind") not in DEFAULT_ROOTS for q in current) \
            and shaping.needs_tree(imp, netem=netem, netem_loss=False):
        raise BackendError(f"{node.name}: {dev} already has a root qdisc labctl did not make "
                           f"({current[0].get('kind')}); remove it first (tc qdisc del dev {dev} root)")
    if shaping.needs_tree(imp, netem=netem, netem_loss=False):
        lines += shaping.tree(dev, imp, exempt=lab_plan.host_address, netem=netem, netem_loss=False,
                              exempt_field="dst" if direction == "out" else "src")
    if lines:
        argv = ["tc", *(["-n", netns] if netns else []), "-batch", "-"]
        proc = subprocess.run(argv, input="\n".join(lines) + "\n", capture_output=True, text=True,
                              check=False)
        if proc.returncode != 0:
            raise BackendError(f"{node.name}: could not shape {dev} ({direction}): {proc.stderr.strip()}")


def _set_delays(lab_plan: LabPlan, state_root: Path, state: dict, full: Mapping[str, Impairment]) -> None:
    """NFQUEUE rules in each node that needs a delay, and the delayer holding their packets."""
    delayer = DelayerProcess(state_root)
    held = delayer.running_config().get("nodes", [])
    had = {n["netns"]: set(n["queues"]) for n in held}
    nodes = []
    for node in lab_plan.nodes:
        imp = full[node.name]
        if imp.delay or imp.jitter:
            queues = {str(0 if d == "out" else 1): [imp.delay, imp.jitter] for d in imp.directions}
            nodes.append({"netns": node.netns, "queues": queues})
    delayer.set(nodes)  # bound before the rules that feed it
    created = set(state["created_mangle"])
    for node in lab_plan.nodes:
        imp = full[node.name]
        directions = imp.directions if (imp.delay or imp.jitter) else ()
        if directions or node.netns in had:
            if set_rules(node.netns, lab_plan.host_address, directions, drop_table=node.netns in created):
                created.add(node.netns)
            if not directions:
                created.discard(node.netns)
    state["created_mangle"] = sorted(created)


def _nft(script: str, *, what: str) -> None:
    proc = subprocess.run(["nft", "-f", "-"], input=script, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise BackendError(f"could not {what}: {proc.stderr.strip() or 'nft failed'}")


def _qdiscs(netns: str | None, dev: str) -> list[dict]:
    argv = ["tc", *(["-n", netns] if netns else []), "-j", "qdisc", "show", "dev", dev]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    try:
        return json.loads(proc.stdout or "[]")
    except ValueError:
        return []


# --- reading back ----------------------------------------------------------------------------------------

def reports(lab_plan: LabPlan, state_root: Path) -> list[LinkReport]:
    """Per node: what was asked, and what the kernel really has (nft counters, qdiscs, delayer)."""
    state = read_state(state_root)
    wanted = wanted_from_state(state, lab_plan)
    netem = bool(state.get("kernel", {}).get("netem") and state.get("kernel", {}).get("htb"))
    drops = loss_counters(lab_plan.lab)
    delayer = DelayerProcess(state_root)
    pid = delayer.pid()
    held = {n["netns"]: n["queues"] for n in delayer.running_config().get("nodes", [])} if pid else {}
    result = []
    for node in lab_plan.nodes:
        imp, applied, problems = wanted[node.name], [], []
        for direction in ("out", "in"):
            asked = direction in imp.directions
            key = f"{node.name} {direction}"
            if key in drops:
                applied.append(f"loss {drops[key][0]:g}% {direction} (nft numgen, {drops[key][1]} dropped)")
            elif asked and imp.loss:
                problems.append(f"loss {imp.loss:g}% {direction} is not in force (no nft rule)")
            tree = _read_tree(node, direction)
            if tree.get("rate"):
                where = f"{NODE_INTERFACE} in the node" if direction == "out" else f"host veth {node.veth}"
                applied.append(f"rate {tree['rate']} {direction} (htb on {where})")
            elif asked and imp.rate:
                problems.append(f"rate {format_rate(imp.rate)} {direction} is not in force (no htb class)")
            if netem:
                if tree.get("netem"):
                    applied.append(f"{tree['netem']} {direction} (netem)")
                elif asked and (imp.delay or imp.jitter):
                    problems.append(f"delay {imp.delay:g}ms {direction} is not in force (no netem)")
            elif asked and (imp.delay or imp.jitter):
                queue = held.get(node.netns, {}).get("0" if direction == "out" else "1")
                if queue and direction in rules_present(node.netns):
                    applied.append(f"delay {queue[0]:g}ms" + (f" jitter {queue[1]:g}ms" if queue[1] else "")
                                   + f" {direction} (NFQUEUE delayer pid {pid})")
                else:
                    why = "the delayer is not running" if pid is None else "no NFQUEUE rule in the node"
                    problems.append(f"delay {imp.delay:g}ms {direction} is not in force ({why})")
        result.append(LinkReport(node.name, imp, tuple(applied), tuple(problems)))
    return result


def loss_counters(lab: str) -> dict[str, tuple[float, int]]:
    """``{"client2 out": (30.0, packets dropped)}`` from the lab's loss table (empty when it has none)."""
    proc = subprocess.run(["nft", "list", "table", NFT_FAMILY, table_name(lab)], capture_output=True,
                          text=True, check=False)
    found = {}
    for m in re.finditer(r'counter packets (\d+) bytes \d+ drop comment "(\S+ (?:out|in)) loss ([0-9.]+)%"',
                         proc.stdout):
        found[m.group(2)] = (float(m.group(3)), int(m.group(1)))
    return found


def _read_tree(node: NodePlan, direction: str) -> dict[str, str]:
    """``{"rate": "1mbit", "netem": "delay 50ms"}`` from labctl's tree on that side (empty: none)."""
    netns, dev = (node.netns, NODE_INTERFACE) if direction == "out" else (None, node.veth)
    qdiscs = _qdiscs(netns, dev)
    if not shaping.is_ours(qdiscs):
        return {}
    found = {}
    argv = ["tc", *(["-n", netns] if netns else []), "class", "show", "dev", dev]  # no JSON for htb classes
    text = subprocess.run(argv, capture_output=True, text=True, check=False).stdout
    match = re.search(rf"class htb {shaping.LAB_CLASS} .*? rate (\d+(?:\.\d+)?)([KMG]?)bit", text)
    if match:
        bits = round(float(match.group(1)) * {"": 1, "K": 10**3, "M": 10**6, "G": 10**9}[match.group(2)])
        if bits != shaping.UNSHAPED_BITS:
            found["rate"] = format_rate(bits)
    for q in qdiscs:
        if q.get("kind") == "netem":
            opts = q.get("options", {})
            found["netem"] = " ".join(f"{k} {v}" for k, v in opts.items() if k in ("delay", "jitter", "loss"))
    return found


# --- removing --------------------------------------------------------------------------------------------

def remove(lab: str, state_root: Path) -> list[str]:
    """Stop the delayer and delete the loss table (before the namespaces go: a socket would hold one)."""
    removed = []
    if DelayerProcess(state_root).stop():
        removed.append("the delay process")
    table = table_name(lab)
    if subprocess.run(["nft", "list", "table", NFT_FAMILY, table], capture_output=True,
                      check=False).returncode == 0:
        _nft(f"delete table {NFT_FAMILY} {table}\n", what=f"delete nft table {NFT_FAMILY} {table}")
        removed.append(f"nft table {NFT_FAMILY} {table}")
    return removed


# --- the backend's side ----------------------------------------------------------------------------------

def on_up(lab_plan: LabPlan, state_root: Path, lab) -> None:
    """At ``up``: make the links what the lab file's ``links:`` says. The kernel is probed (~0.1 s:
    a shell in the server's namespace, tc and nft) only when there is something to apply; otherwise
    ``impair`` and ``links`` probe it when they need it (``apply`` keeps what it found)."""
    state = read_state(state_root)
    wanted = resolve(lab.links, [n.name for n in lab_plan.nodes])
    if any(imp.active for imp in wanted.values()) or state.get("wanted"):
        state["kernel"] = detect(lab_plan)
        write_state(state_root, state)
        apply(lab_plan, state_root, wanted)


class NetnsLinks:
    """Link impairment for :class:`~labctl.backends.netns.NetnsBackend` (uses its ``state``, ``lab``,
    ``_exclusive`` and ``name``)."""

    def _links_plan(self) -> LabPlan | None:
        current = self.state.read_plan()
        return current if current is not None and current.complete else None

    def link_capabilities(self) -> LinkCapabilities:
        current = self._links_plan()
        kernel = read_state(self.state.root).get("kernel")
        if kernel is None and current is not None:
            kernel = detect(current)
        if kernel is None:
            return LinkCapabilities(missing={s: "is unknown until the lab is up (labctl up)"
                                             for s in ("loss", "delay", "jitter", "rate")})
        return capabilities(kernel)

    def link_settings(self) -> dict[str, Impairment]:
        current = self._links_plan()
        if current is None:
            return {n.name: Impairment() for n in self.lab.nodes}
        return wanted_from_state(read_state(self.state.root), current)

    def impair(self, wanted: Mapping[str, Impairment], run=None) -> list[LinkReport]:
        """``run`` is not needed: this machine's kernel shapes the namespace lab's links."""
        from labctl.inventory import LabNotUp

        with self._exclusive():
            current = self._links_plan()
            if current is None:
                raise LabNotUp(f"lab {self.lab.name} is not up: run labctl up")
            return apply(current, self.state.root, wanted)

    def link_reports(self, run=None) -> list[LinkReport]:
        current = self._links_plan()
        return reports(current, self.state.root) if current is not None else []
