"""Loss, delay, jitter and rate on the lab's links, as plain data (the ``links:`` section of the lab file).

Each node has one link (its lab interface). A link's settings shape, by default, what the node
**sends** (``direction: out``, what ``tc netem`` on the node's own interface does); ``in`` shapes what it
receives, ``both`` does both. Traffic between a node and the lab's host address (labctl's own SSH
sessions) is never impaired: only node-to-node traffic, the traffic the exercise looks at::

    links:
      all:     {delay: 20ms}
      client2: {loss: 30%, delay: 50ms, jitter: 5ms, rate: 1mbit, direction: both}

``all`` applies to every node; a node's own entry overrides it field by field. Nothing here touches
the kernel: backends realise an :class:`Impairment` per node (see ``Backend.impair``).
"""
from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from labctl.errors import LabctlError

DIRECTIONS = ("out", "in", "both")
SETTINGS = ("loss", "delay", "jitter", "rate")
MAX_DELAY_MS = 10_000.0
MIN_RATE, MAX_RATE = 1_000, 10_000_000_000  # bit/s: 1kbit .. 10gbit
ALL = "all"

_TIME_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(us|ms|s)?\s*$")
_RATE_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([a-z]*)\s*$")
_RATE_UNITS = {"bit": 1, "kbit": 1_000, "mbit": 1_000_000, "gbit": 1_000_000_000}
_TIME_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, None: 1.0}


class LinkError(LabctlError, ValueError):
    """A link setting is out of range or malformed; the message names it and what is allowed."""


@dataclass(frozen=True)
class LinkSettings:
    """Some settings of one link; ``None`` means "not said here" (an override leaves it as it is)."""

    loss: float | None = None        # percent of packets dropped, 0..100
    delay: float | None = None       # milliseconds added, >= 0
    jitter: float | None = None      # milliseconds, +- around the delay, >= 0
    rate: int | None = None          # bit/s, 0 = unlimited
    direction: str | None = None     # out | in | both

    def over(self, base: Impairment) -> Impairment:
        """``base`` with every field this one says replaced."""
        said = {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}
        return replace(base, **said)

    @property
    def empty(self) -> bool:
        return all(getattr(self, f.name) is None for f in fields(self))


@dataclass(frozen=True)
class Impairment:
    """What is in force on one node's link; all zero is a perfect link."""

    loss: float = 0.0
    delay: float = 0.0
    jitter: float = 0.0
    rate: int = 0
    direction: str = "out"

    @property
    def active(self) -> bool:
        return bool(self.loss or self.delay or self.jitter or self.rate)

    @property
    def directions(self) -> tuple[str, ...]:
        """``("out",)``, ``("in",)`` or ``("out", "in")``; empty for a perfect link."""
        if not self.active:
            return ()
        return ("out", "in") if self.direction == "both" else (self.direction,)

    def describe(self) -> str:
        """``loss 30% delay 50ms jitter 5ms rate 1mbit (out)`` or ``none``."""
        if not self.active:
            return "none"
        parts = [f"loss {self.loss:g}%" if self.loss else "", f"delay {self.delay:g}ms" if self.delay else "",
                 f"jitter {self.jitter:g}ms" if self.jitter else "",
                 f"rate {format_rate(self.rate)}" if self.rate else ""]
        return " ".join(p for p in parts if p) + f" ({self.direction})"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Impairment:
        return cls(**{k: data[k] for k in ("loss", "delay", "jitter", "rate", "direction") if k in data})


# --- values --------------------------------------------------------------------------------------------

def parse_loss(value: Any, what: str = "loss") -> float:
    """``30%``, ``30`` or ``0.5%`` → percent (0..100, at most two decimals)."""
    text = str(value).strip()
    number = text[:-1].strip() if text.endswith("%") else text
    pct = _number(number, what, f"{value!r}: give a percentage 0..100, e.g. 30%")
    if not 0 <= pct <= 100:
        raise LinkError(f"{what} {value!r}: must be between 0% and 100%")
    return round(pct, 2)


def parse_ms(value: Any, what: str = "delay") -> float:
    """``50ms``, ``50`` (ms), ``0.2s`` or ``500us`` → milliseconds (0..10000)."""
    match = _TIME_RE.match(str(value).lower()) if not isinstance(value, bool) else None
    if not match:
        raise LinkError(f"{what} {value!r}: give a time such as 50ms, 0.2s or 500us (no negative values)")
    ms = float(match.group(1)) * _TIME_UNITS[match.group(2)]
    if not math.isfinite(ms) or ms > MAX_DELAY_MS:
        raise LinkError(f"{what} {value!r}: at most {MAX_DELAY_MS / 1000:g} s")
    return round(ms, 3)


def parse_rate(value: Any, what: str = "rate") -> int:
    """``1mbit``, ``500kbit``, ``2gbit``, ``64000bit`` → bit/s; ``0`` = unlimited. A unit is required."""
    text = str(value).strip().lower()
    if text in ("0", "0bit", "none", "off"):
        return 0
    match = _RATE_RE.match(text) if not isinstance(value, bool) else None
    if match and match.group(2) in ("bps", "kbps", "mbps", "gbps"):
        raise LinkError(f"{what} {value!r}: say bits, e.g. {match.group(1)}{match.group(2)[0]}bit "
                        f"('{match.group(2)}' means bytes per second to tc, bits to most people)")
    if not match or match.group(2) not in _RATE_UNITS:
        raise LinkError(f"{what} {value!r}: give a rate with a unit: bit, kbit, mbit or gbit (e.g. 1mbit), "
                        "or 0 for no limit")
    rate = round(float(match.group(1)) * _RATE_UNITS[match.group(2)])
    if not MIN_RATE <= rate <= MAX_RATE:
        raise LinkError(f"{what} {value!r}: between {format_rate(MIN_RATE)} and {format_rate(MAX_RATE)}")
    return rate


def parse_direction(value: Any, what: str = "direction") -> str:
    if value not in DIRECTIONS:
        raise LinkError(f"{what} {value!r}: one of {', '.join(DIRECTIONS)} (out = what the node sends)")
    return str(value)


def format_rate(rate: int) -> str:
    """1000000 → ``1mbit``; 1500000 → ``1500kbit``."""
    for unit, size in (("gbit", 10**9), ("mbit", 10**6), ("kbit", 10**3)):
        if rate >= size and rate % size == 0:
            return f"{rate // size}{unit}"
    return f"{rate}bit"


def _number(text: str, what: str, hint: str) -> float:
    try:
        number = float(text)
    except ValueError:
        raise LinkError(f"{what} {hint}") from None
    if not math.isfinite(number):
        raise LinkError(f"{what} {hint}")
    return number


_PARSERS = {"loss": parse_loss, "delay": parse_ms, "jitter": parse_ms, "rate": parse_rate,
            "direction": parse_direction}


def settings(raw: Mapping[str, Any], where: str = "link") -> LinkSettings:
    """One link's mapping (``{loss: 30%, delay: 50ms}``) → :class:`LinkSettings`, validated."""
    if not isinstance(raw, Mapping):
        raise LinkError(f"{where}: expected a mapping such as {{loss: 30%, delay: 50ms}}, got {raw!r}")
    unknown = sorted(set(raw) - set(_PARSERS))
    if unknown:
        raise LinkError(f"{where}: unknown setting(s) {unknown} (known: {', '.join(_PARSERS)})")
    return LinkSettings(**{key: _PARSERS[key](value, f"{where}: {key}") for key, value in raw.items()
                           if value is not None})


# --- the links: section ----------------------------------------------------------------------------------

Links = tuple[tuple[str, LinkSettings], ...]   # (node name or "all", settings), in file order


def parse_links(raw: Any, where: str = "") -> Links:
    """The ``links:`` section → ``(("all", LinkSettings), ("client2", LinkSettings), ...)``."""
    prefix = f"{where}: links" if where else "links"
    if raw is None:
        return ()
    if not isinstance(raw, Mapping):
        raise LinkError(f"{prefix}: expected a mapping of node names (or all) to settings")
    return tuple((str(name), settings(value or {}, f"{prefix}: {name}")) for name, value in raw.items())


def check_names(links: Links, node_names: Iterable[str], lab_name: str = "") -> None:
    """Every name in ``links`` is ``all`` or a node of the lab."""
    names = list(node_names)
    for name, _ in links:
        if name != ALL and name not in names:
            raise LinkError(f"links: {name!r} is not a node of lab {lab_name!r} (nodes: {', '.join(names)}; "
                            "or all)")


def resolve(links: Links, node_names: Iterable[str]) -> dict[str, Impairment]:
    """Per node, what is in force: ``all`` first, then the node's own entry over it."""
    base = Impairment()
    for name, link in links:
        if name == ALL:
            base = link.over(base)
    result = {}
    for node in node_names:
        result[node] = base
        for name, link in links:
            if name == node:
                result[node] = link.over(result[node])
    return result


def update(current: Mapping[str, Impairment], node: str, change: LinkSettings, *,
           clear: bool = False) -> dict[str, Impairment]:
    """``current`` with ``change`` applied to ``node`` (or every node for ``all``); ``clear`` resets first."""
    targets = list(current) if node == ALL else [node]
    if node != ALL and node not in current:
        raise LinkError(f"no node named {node!r} (nodes: {', '.join(current)}; or all)")
    result = dict(current)
    for name in targets:
        base = Impairment(direction=current[name].direction) if clear else current[name]
        result[name] = change.over(base)
    return result
