"""IPv4 and IPv6 fragment reassembly, with bounded memory and timeouts like a real stack's.

A datagram is keyed as Wireshark keys it (source, destination, identification and, for IPv4, the
protocol). Its pieces are written into one buffer at their offsets; it is complete once the last
fragment (more-fragments clear) has come and the pieces cover every byte before it. Like Linux, an
incomplete datagram is given up after ``ipfrag_time`` (30 s for IPv4, 60 s for IPv6, counted from its
first fragment), and at most ``MAX_HELD`` bytes are held at once (Linux's ``ipfrag_high_thresh``, 4
MiB): past that the oldest incomplete datagram is given up. A given-up datagram's frames are counted as
not analysed, with the reason.
"""
from __future__ import annotations

MAX_HELD = 4 << 20
MAX_DATAGRAM = 65535
TIMEOUT = {4: 30, 6: 60}


class Datagram:
    """One datagram being reassembled."""

    __slots__ = ("data", "first", "frames", "pieces", "total", "wire")

    def __init__(self, first: int) -> None:
        self.first = first              # capture time (seconds) of its first fragment
        self.data = bytearray()
        self.pieces: list[list[int]] = []   # sorted, merged [start, end) ranges received
        self.total = -1                 # length, once the last fragment came
        self.frames = 0
        self.wire = 0                   # bytes on the wire of its frames

    def add(self, offset: int, data: bytes, last: bool) -> bool:
        end = offset + len(data)
        if len(self.data) < end:
            self.data.extend(bytes(end - len(self.data)))
        self.data[offset:end] = data
        if last:
            self.total = end
        pieces = self.pieces
        pieces.append([offset, end])
        pieces.sort()
        merged = [pieces[0]]
        for s, e in pieces[1:]:
            if s <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], e)
            else:
                merged.append([s, e])
        self.pieces = merged
        return self.total >= 0 and merged[0][0] == 0 and merged[0][1] >= self.total


class Reassembler:
    """Holds incomplete datagrams; ``add`` returns the whole datagram when a fragment completes it."""

    def __init__(self, max_held: int = MAX_HELD) -> None:
        self.max_held = max_held
        self.pending: dict[tuple, Datagram] = {}   # in order of first fragment
        self.held = 0
        self.reassembled = 0       # datagrams completed
        self.fragments = 0         # frames that went into completed datagrams
        self.lost_frames = 0       # frames of datagrams given up (timed out, over the memory bound)
        self.lost_bytes = 0
        self.lost = {"timeout": 0, "memory": 0, "end": 0, "malformed": 0}

    def add(self, key: tuple, now: int, version: int, offset: int, data: bytes, last: bool,
            wire: int) -> Datagram | None:
        """One fragment (``data`` at byte ``offset`` of the datagram's payload; ``wire`` the frame's
        bytes). Returns the completed datagram, or None while it is incomplete."""
        pending = self.pending
        if pending:
            self._expire(now)
        if offset + len(data) > MAX_DATAGRAM:      # no datagram is that long: give it up
            if key in pending:
                self._give_up(key, "malformed")
            else:
                self.lost["malformed"] += 1
            self.lost_frames += 1
            self.lost_bytes += wire
            return None
        d = pending.get(key)
        if d is None:
            d = pending[key] = Datagram(now)
        before = len(d.data)
        done = d.add(offset, data, last)
        d.frames += 1
        d.wire += wire
        self.held += len(d.data) - before
        if done:
            del pending[key]
            self.held -= len(d.data)
            self.reassembled += 1
            self.fragments += d.frames
            del d.data[d.total:]
            return d
        while self.held > self.max_held and pending:
            self._give_up(next(iter(pending)), "memory")
        return None

    def _expire(self, now: int) -> None:
        pending = self.pending
        while pending:
            key = next(iter(pending))
            d = pending[key]
            if now - d.first <= TIMEOUT[key[0]]:
                return
            self._give_up(key, "timeout")

    def _give_up(self, key: tuple, why: str) -> None:
        d = self.pending.pop(key, None)
        if d is None:
            return
        self.held -= len(d.data)
        self.lost_frames += d.frames
        self.lost_bytes += d.wire
        self.lost[why] += 1

    def finish(self) -> None:
        """The capture ended: whatever is still incomplete is given up."""
        for key in list(self.pending):
            self._give_up(key, "end")

    def notes(self) -> list[str]:
        """What happened, for the analysis' warnings."""
        out = []
        if self.reassembled:
            out.append(f"{self.reassembled} IP datagram(s) reassembled from {self.fragments} fragments: "
                       "each counts as one packet, with the bytes of all its fragments' frames "
                       "(Wireshark's conversation table counts only the frame that completed it)")
        n = sum(self.lost.values())
        if n:
            why = ", ".join(f"{v} {k}" for k, v in (
                ("timed out (30 s IPv4, 60 s IPv6)", self.lost["timeout"]),
                ("over the 4 MiB reassembly memory", self.lost["memory"]),
                ("incomplete at the end of the capture", self.lost["end"]),
                ("beyond 64 KiB", self.lost["malformed"])) if v)
            out.append(f"{self.lost_frames} IP fragment(s) of {n} datagram(s) never completed ({why}): "
                       "not analysed")
        return out
