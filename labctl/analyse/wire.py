"""How the conversation builder holds what it reads off the wire: keys, times, byte-swapped words.

- A **key** is a packet's 4-tuple as bytes: source address + destination address + source port +
  destination port (12 bytes for IPv4, 36 for IPv6); ``reverse_key`` gives the other direction's.
- A **time** ``T`` is a record's two timestamp words read as one integer, ``seconds + fraction << 32``
  (the fraction in microseconds or nanoseconds: ``Timestamps``), so a packet costs no arithmetic on it.
- The fast path reads big-endian fields little-endian and swaps only where a value is needed: the ACK
  number and the window are kept "wire order read little-endian" (they are only compared for
  equality); ``swap32``/``swap16`` turn them into values.
- Sequence numbers are 32-bit and wrap: ``seq_lt`` compares them as TCP does.
"""
from __future__ import annotations

import struct
from operator import itemgetter

M32 = 0xFFFFFFFF
HALF = 0x80000000
FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10

_KEY4 = struct.Struct("4s4s2s2s")
_SWAP_ORDER = itemgetter(1, 0, 3, 2)


def reverse_key(key: bytes, _split=_KEY4.unpack, _join=_KEY4.pack) -> bytes:
    """The key of the other direction: swap addresses and ports."""
    if len(key) == 12:
        a, b, pa, pb = _split(key)
        return _join(b, a, pb, pa)
    n = (len(key) - 4) // 2
    return key[n:2 * n] + key[:n] + key[2 * n + 2:] + key[2 * n:2 * n + 2]


def reverse_key4_parts() -> tuple:
    """(split, reorder, join) with which the fast path reverses an IPv4 key inline:
    ``join(*reorder(split(key)))`` is ``reverse_key(key)``."""
    return _KEY4.unpack, _SWAP_ORDER, _KEY4.pack


def swap32(x: int) -> int:
    return int.from_bytes(x.to_bytes(4, "little"), "big")


def swap16(x: int) -> int:
    return ((x & 255) << 8) | (x >> 8)


def seq_lt(a: int, b: int) -> bool:
    """a < b in 32-bit sequence space."""
    return a != b and ((b - a) & M32) < HALF


class Timestamps:
    """A capture's timestamps: how many fraction units make a second (set from the first chunk read)."""

    def __init__(self) -> None:
        self.units = 1_000_000    # timestamp fractions per second
        self.scale = 1e-6         # seconds per fraction unit
        self.epoch = 0            # seconds the records' seconds count from (pcap.Chunk.epoch)

    def set_units(self, units: int, scale: float, epoch: int = 0) -> None:
        self.units, self.scale, self.epoch = units, scale, epoch

    def seconds(self, t: int) -> float:
        """A time as float seconds (``seconds + fraction * scale``, as the record has them)."""
        return (t & M32) + self.epoch + (t >> 32) * self.scale

    def ticks(self, t: int) -> int:
        """A time as an exact count of fraction units (microseconds or nanoseconds)."""
        return ((t & M32) + self.epoch) * self.units + (t >> 32)
