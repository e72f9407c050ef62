"""What the capture readers (``pcap.py``, ``pcapng.py``) hand the conversation builder: chunks of
pcap-format records, what they learnt about the file, and the error for a file that is not a capture.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from labctl.errors import LabctlError

BLOCK = 4 << 20          # bytes read at a time
PAD = 96                 # zero bytes after each chunk, so fixed-size unpacks near its end never fail
MAX_RECORD = 256 << 10   # the longest record accepted whatever the snapshot length (tshark's limit)
MAX_BLOCK = 32 << 20     # the longest pcapng block (of any type) accepted

PCAP_MAGIC_US = 0xA1B2C3D4
PCAP_MAGIC_NS = 0xA1B23C4D
PCAP_MAGIC_MODIFIED = 0xA1B2CD34
PCAPNG_SHB = 0x0A0D0D0A
BYTE_ORDER_MAGIC = 0x1A2B3C4D
EPOCH_SPAN = 1 << 32     # seconds a chunk's record header can count from its epoch


class CaptureFileError(LabctlError):
    """The file is not a capture this tool can read (the message says why and what to do)."""


@dataclass
class Chunk:
    """A run of pcap-format records in ``data[0:end]`` (then ``PAD`` zero bytes).

    The last record may be incomplete: whoever walks the chunk sets ``consumed`` to the offset of the
    first record it could not finish, or of one longer than ``limit`` (and ``records`` to how many it
    walked), and the reader carries the rest over into the next chunk (or refuses the long record).
    A record's seconds count from ``epoch`` (0 for pcap files and for any pcapng file whose times lie
    between 1970 and 2106).
    """

    data: bytes
    end: int
    linktype: int
    big_endian: bool      # record headers' byte order
    frac_scale: float     # seconds per unit of the timestamp's fraction field (1e-6 or 1e-9)
    consumed: int = 0
    epoch: int = 0
    records: int = 0
    limit: int = 1 << 62  # a record longer than this stops the walk there (the reader then refuses it)


@dataclass
class ReadInfo:
    """What the reader learnt about the file while streaming it."""

    path: str
    format: str = "pcap"
    linktypes: list[int] = field(default_factory=list)
    snaplen: int = 0
    warnings: list[str] = field(default_factory=list)
    truncated: bool = False
