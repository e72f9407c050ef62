"""The tc command lines that shape one interface: an htb tree, with a netem leaf where the kernel has it.

One tree per shaped interface, always the same shape, so it can be recognised and removed exactly::

    root 4c: htb default 20
      4c:10  rate 100gbit          <- traffic to/from the lab's host address (labctl's SSH): never shaped
      4c:20  rate RATE             <- everything else (node-to-node); leaf: netem (delay, jitter, loss)
                                      or, without netem, a pfifo holding ~100 ms at RATE

``4c:`` ("L") marks the root as labctl's: only a root with that handle is ever deleted. Egress only,
as every qdisc: shaping what a node *receives* needs its traffic on an egress somewhere else — the
host end of the veth (namespace lab) or an ``ifb`` device fed from the interface's ingress (VMs,
SSH hosts; see :func:`ifb_setup`).
"""
from __future__ import annotations

from labctl.links import Impairment

HANDLE = "4c:"
LEAF = "4d:"
HOST_CLASS, LAB_CLASS = "4c:10", "4c:20"
UNSHAPED = "100gbit"           # the host class, and the lab class when only netem is needed
UNSHAPED_BITS = 10**11        # above links.MAX_RATE: a class at this rate is never a setting
IFB = "lcifb0"
QUEUE_SECONDS = 0.1   # the leaf pfifo holds this much traffic at the set rate (at least 10 packets)
MTU_BITS = 1514 * 8


def needs_tree(imp: Impairment, *, netem: bool, netem_loss: bool) -> bool:
    """True when ``imp`` needs a qdisc on this interface (rate, or what netem does here)."""
    return bool(imp.rate or (netem and (imp.delay or imp.jitter or (netem_loss and imp.loss))))


def tree(dev: str, imp: Impairment, *, exempt: str, exempt_field: str, netem: bool,
         netem_loss: bool) -> list[str]:
    """``tc -batch`` lines building the tree on ``dev`` (after :func:`teardown` removed an old one).

    ``exempt`` is the lab's host address, matched as ``ip dst`` (``exempt_field="dst"``, on an
    interface that sends towards the host) or ``ip src`` (on one that delivers the host's packets).
    With ``netem`` the leaf is netem with the delay, the jitter and (``netem_loss``) the loss.
    """
    if exempt_field not in ("dst", "src"):
        raise ValueError(exempt_field)
    unshaped = f"rate {UNSHAPED} ceil {UNSHAPED} burst 1m cburst 1m quantum 60000"
    if imp.rate:
        shaped = f"rate {imp.rate}bit ceil {imp.rate}bit quantum {1514 if imp.rate < 100_000_000 else 60000}"
    else:
        shaped = unshaped
    lines = [f"qdisc add dev {dev} root handle {HANDLE} htb default 20",
             f"class add dev {dev} parent {HANDLE} classid {HOST_CLASS} htb {unshaped}",
             f"class add dev {dev} parent {HANDLE} classid {LAB_CLASS} htb {shaped}",
             f"filter add dev {dev} parent {HANDLE} protocol ip prio 1 u32 match ip {exempt_field} "
             f"{exempt}/32 flowid {HOST_CLASS}"]
    netem_args = _netem_args(imp, netem_loss) if netem else ""
    if netem_args:
        lines.append(f"qdisc add dev {dev} parent {LAB_CLASS} handle {LEAF} netem{netem_args}")
    elif imp.rate:
        lines.append(f"qdisc add dev {dev} parent {LAB_CLASS} handle {LEAF} pfifo "
                     f"limit {queue_packets(imp.rate)}")
    return lines


def _netem_args(imp: Impairment, with_loss: bool) -> str:
    args = ""
    if imp.delay or imp.jitter:
        args += f" delay {imp.delay:g}ms"
        if imp.jitter:
            args += f" {imp.jitter:g}ms"
    if with_loss and imp.loss:
        args += f" loss {imp.loss:g}%"
    if args and imp.rate:
        args += f" limit {max(1000, queue_packets(imp.rate))}"
    return args


def queue_packets(rate: int) -> int:
    """Packets the leaf queue holds: ``QUEUE_SECONDS`` at ``rate``, at least 10."""
    return max(10, int(rate * QUEUE_SECONDS / MTU_BITS))


def teardown(dev: str) -> list[str]:
    """``tc -batch`` line deleting the root qdisc of ``dev``; run it only when :func:`is_ours` says so."""
    return [f"qdisc del dev {dev} root handle {HANDLE}"]


def is_ours(qdiscs: list[dict]) -> bool:
    """True when ``tc -j qdisc show dev DEV`` lists labctl's root (htb, handle 4c:)."""
    return any(q.get("root") and q.get("handle") == HANDLE and q.get("kind") == "htb" for q in qdiscs)


def ifb_setup(dev: str, ifb: str = IFB) -> list[str]:
    """Shell lines (not tc -batch) that feed ``dev``'s ingress into ``ifb``, whose egress can be shaped."""
    return [f"ip link add {ifb} type ifb 2>/dev/null || ip link show {ifb} >/dev/null",
            f"ip link set {ifb} up",
            f"tc qdisc replace dev {dev} handle ffff: ingress",
            f"tc filter replace dev {dev} parent ffff: protocol all prio 1 u32 match u32 0 0 "
            f"action mirred egress redirect dev {ifb}"]


def ifb_teardown(dev: str, ifb: str = IFB) -> list[str]:
    """Shell lines removing what :func:`ifb_setup` made (the ingress qdisc only if the ifb exists)."""
    return [f"if ip link show {ifb} >/dev/null 2>&1; then "
            f"tc qdisc del dev {dev} ingress 2>/dev/null || true; ip link del {ifb}; fi"]
