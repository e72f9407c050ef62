"""Write pcapng: one section, one interface per capture point, packets as Enhanced Packet Blocks.

The contract with the multi-node analysis (and what Wireshark shows as ``frame.interface_name`` and
``frame.interface_description``): each capture point is one Interface Description Block whose
``if_name`` is ``NODE/IFACE`` (``client2/eth0``) and whose ``if_description`` is ``NODE ADDRESS``
(``client2 192.168.20.4``). Timestamps are nanoseconds (``if_tsresol`` 9). A note on the interface
(``opt_comment``) says how its clock was treated; an Interface Statistics Block at the end carries
tcpdump's own counts (``isb_ifrecv``, ``isb_ifdrop``) so a reader can check the file against them.
Little-endian, standard library only. Spec: IETF draft-ietf-opsawg-pcapng.
"""
from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass

SHB, IDB, EPB, ISB = 0x0A0D0D0A, 0x00000001, 0x00000006, 0x00000005
OPT_END, OPT_COMMENT = 0, 1
IF_NAME, IF_DESCRIPTION, IF_TSRESOL = 2, 3, 9
SHB_USERAPPL = 4
ISB_STARTTIME, ISB_ENDTIME, ISB_IFRECV, ISB_IFDROP = 2, 3, 4, 5


@dataclass(frozen=True)
class Interface:
    """One capture point: the node, its interface and address, the link type, a note on its clock."""

    node: str
    iface: str
    address: str
    linktype: int = 1
    snaplen: int = 262144
    comment: str = ""

    @property
    def name(self) -> str:
        return f"{self.node}/{self.iface}"

    @property
    def description(self) -> str:
        return f"{self.node} {self.address}"


def _option(code: int, value: bytes) -> bytes:
    return struct.pack("<HH", code, len(value)) + value + b"\0" * (-len(value) % 4)


def _options(opts: Iterable[tuple[int, bytes]]) -> bytes:
    body = b"".join(_option(c, v) for c, v in opts)
    return body + struct.pack("<HH", OPT_END, 0) if body else b""


def _block(btype: int, body: bytes) -> bytes:
    length = 12 + len(body)
    return struct.pack("<II", btype, length) + body + struct.pack("<I", length)


def section_header(application: str = "labctl") -> bytes:
    """The Section Header Block (byte-order magic, version 1.0, section length unknown)."""
    body = struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1) + _options([(SHB_USERAPPL, application.encode())])
    return _block(SHB, body)


def interface_block(iface: Interface) -> bytes:
    """An Interface Description Block: link type, snap length, name, description, ns timestamps."""
    opts = [(IF_NAME, iface.name.encode()), (IF_DESCRIPTION, iface.description.encode()),
            (IF_TSRESOL, b"\x09")]
    if iface.comment:
        opts.append((OPT_COMMENT, iface.comment.encode()))
    return _block(IDB, struct.pack("<HHI", iface.linktype, 0, iface.snaplen) + _options(opts))


def packet_block(interface_id: int, ts_ns: int, frame: bytes, orig_len: int | None = None) -> bytes:
    """An Enhanced Packet Block for ``frame`` seen on interface ``interface_id`` at ``ts_ns``."""
    ts = max(0, int(ts_ns))
    head = struct.pack("<IIIII", interface_id, ts >> 32, ts & 0xFFFFFFFF, len(frame),
                       len(frame) if orig_len is None else orig_len)
    return _block(EPB, head + frame + b"\0" * (-len(frame) % 4))


def statistics_block(interface_id: int, ts_ns: int, *, received: int | None = None,
                     dropped: int | None = None, start_ns: int | None = None,
                     end_ns: int | None = None) -> bytes:
    """An Interface Statistics Block: what the capturing tool counted on that interface."""
    def ts(v: int) -> bytes:
        return struct.pack("<II", v >> 32, v & 0xFFFFFFFF)

    opts = []
    if start_ns is not None:
        opts.append((ISB_STARTTIME, ts(start_ns)))
    if end_ns is not None:
        opts.append((ISB_ENDTIME, ts(end_ns)))
    if received is not None:
        opts.append((ISB_IFRECV, struct.pack("<Q", received)))
    if dropped is not None:
        opts.append((ISB_IFDROP, struct.pack("<Q", dropped)))
    t = max(0, int(ts_ns))
    return _block(ISB, struct.pack("<III", interface_id, t >> 32, t & 0xFFFFFFFF) + _options(opts))


def file_header(interfaces: Iterable[Interface], application: str = "labctl") -> bytes:
    """Section header and every interface: what a pcapng stream starts with."""
    return section_header(application) + b"".join(interface_block(i) for i in interfaces)
