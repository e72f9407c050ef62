"""Milliseconds in the reports: the figures' time offsets turned into numbers and text.

Every figure (``figures.py``) keeps its times as offsets from the conversation's first packet, in the
records' own form (``wire.py``: seconds + fraction << 32). Two clocks read them:

- ``FloatClock`` gives what every millisecond figure means: the float difference of two timestamps,
  each taken as ``seconds + fraction * scale`` (scale 1e-6 or 1e-9), times 1000. The ladders and
  tables, and the JSON of a nanosecond capture, use it.
- ``MicroClock`` gives the same figures of a microsecond capture (what tcpdump writes) as exact
  integer microseconds, and their ``"%.3f"`` texts are exactly the float ones: a float timestamp below
  2**32 s is within half a unit in the last place (1.2e-7 s) of its exact value, so a difference of two
  (or of two such differences from the same start) is within 0.000477 ms of the exact k / 1000 ms, and
  the 3-decimal number nearest to it is k / 1000. Integer offsets repeat across conversations where
  floats of absolute times do not: that is what lets the JSON emitter format each distinct conversation
  once (``json_report.py``). A test compares the two clocks' documents byte for byte.

``median`` of a histogram (value -> count) is the float median. With MicroClock values, the mean of two
middle values an odd number of microseconds apart ends in exactly half a microsecond, and its third
decimal then depends on the floats' last bits: ``median`` asks ``resolve`` for those two floats.
"""
from __future__ import annotations

from collections.abc import Callable

from labctl.analyse.wire import HALF, M32


def us(d: int) -> int:
    """An offset (the difference of two times, seconds + micros << 32) in whole microseconds."""
    secs = ((d + HALF) & M32) - HALF
    return secs * 1_000_000 + ((d - secs) >> 32)


class FloatClock:
    """Milliseconds as floats of the records' seconds (what every figure means)."""

    exact = False

    def __init__(self, seconds: Callable[[int], float]) -> None:
        self.seconds = seconds

    def since(self, t0: int, a: int) -> float:
        """Milliseconds from the start ``t0`` to the offset ``a``."""
        secs = self.seconds
        return (secs(t0 + a) - secs(t0)) * 1000.0

    def between(self, t0: int, a: int, b: int) -> float:
        """Milliseconds from the offset ``b`` to the offset ``a``."""
        secs = self.seconds
        return (secs(t0 + a) - secs(t0 + b)) * 1000.0

    @staticmethod
    def ms(v: float) -> float:
        return v

    @staticmethod
    def text(v: float | None) -> str:
        return "null" if v is None else "%.3f" % v  # noqa: UP031 (the JSON's number format)

    def start_text(self, t0: int) -> str:
        return "%.6f" % self.seconds(t0)  # noqa: UP031


class MicroClock:
    """Milliseconds of a microsecond capture as exact integer microseconds (same text to 3 decimals)."""

    exact = True

    def __init__(self, seconds: Callable[[int], float]) -> None:
        self.seconds = seconds

    @staticmethod
    def since(t0: int, a: int) -> int:
        return us(a)

    @staticmethod
    def between(t0: int, a: int, b: int) -> int:
        return us(a - b)

    @staticmethod
    def ms(v: int) -> float:
        return v / 1000

    @staticmethod
    def text(v: int | None) -> str:
        return "null" if v is None else "%.3f" % (v / 1000)

    def start_text(self, t0: int) -> str:
        frac = t0 >> 32
        if frac < 1_000_000:
            return f"{t0 & M32}.{frac:06d}"
        return "%.6f" % self.seconds(t0)  # noqa: UP031 (a fraction no microsecond capture has)


def median(hist: dict, clock: FloatClock | MicroClock,
           resolve: Callable[[int, int], tuple[float, float]] | None = None) -> float | None:
    """The median of the values counted in ``hist`` (value -> count), in float milliseconds.

    ``resolve(lo, hi)``: for MicroClock values, the largest float of the value ``lo`` and the smallest
    of the value ``hi`` (only asked for a tie at half a microsecond).
    """
    n = sum(hist.values())
    if not n:
        return None
    m = n // 2
    wanted = (m - 1, m) if n % 2 == 0 else (m,)
    found: list = []
    seen = 0
    for k in sorted(hist):
        seen += hist[k]
        while len(found) < len(wanted) and wanted[len(found)] < seen:
            found.append(k)
        if len(found) == len(wanted):
            break
    if len(found) == 1:
        return clock.ms(found[0])
    lo, hi = found
    if not clock.exact:
        return (lo + hi) / 2
    if (lo + hi) % 2 == 0:
        return (lo + hi) // 2 / 1000
    assert resolve is not None
    x_lo, x_hi = resolve(lo, hi)
    return (x_lo + x_hi) / 2
