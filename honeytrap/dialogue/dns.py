"""DNS over UDP (RFC 1035 4.1): the query's id, opcode, RD bit and question echoed, REFUSED
(rcode 5) as an authoritative-only server answers a name outside its zones, and the client's
EDNS OPT record (RFC 6891) answered with our own. Never an answer section: a sensor that
resolved names would be an open resolver, which reflection attacks seek."""

from __future__ import annotations

import struct

from honeytrap.dialogue.base import Context, Dialogue
from honeytrap.dialogue.binary import Cursor, Truncated
from honeytrap.dialogue.datagram import DatagramDialogue

HEADER = 12
MAX_NAME = 255  # RFC 1035 2.3.4
REFUSED = 5
TYPE_OPT = 41
EDNS_SIZE = 1232  # the UDP payload size DNS Flag Day 2020 settled on


def question(c: Cursor) -> bytes:
    """The raw bytes of one question (name, type, class); no compression in a query's name."""
    start = c.pos
    total = 0
    while True:
        length = c.le(1)
        if length == 0:
            break
        if length & 0xC0:
            raise Truncated("compressed or extended label in a query")
        total += length + 1
        if total > MAX_NAME:
            raise Truncated("name over 255 bytes")
        c.take(length)
    c.take(4)  # QTYPE, QCLASS
    return c.data[start : c.pos]


def reply(datagram: bytes) -> bytes | None:
    if len(datagram) < HEADER:
        return None
    c = Cursor(datagram)
    ident, flags, qd, an, ns, ar = struct.unpack("!6H", c.take(HEADER))
    if flags & 0x8000 or qd != 1 or an or ns or ar > 1:  # a response, or not a plain query
        return None
    opcode = (flags >> 11) & 0xF
    try:
        q = question(c)
        edns = ar == 1 and c.left() >= 11 and c.data[c.pos] == 0 and struct.unpack_from(
            "!H", c.data, c.pos + 1)[0] == TYPE_OPT
    except Truncated:
        return None
    out_flags = 0x8000 | (opcode << 11) | (flags & 0x0100) | 0x0080 | REFUSED  # QR, RD, RA
    opt = b"\0" + struct.pack("!HHIH", TYPE_OPT, EDNS_SIZE, 0, 0) if edns else b""
    return struct.pack("!6H", ident, out_flags, 1, 0, 0, 1 if edns else 0) + q + opt


def answer(datagram: bytes, ctx: Context, budget: int) -> bytes | None:
    return reply(datagram)


def factory(ctx: Context) -> Dialogue:
    return DatagramDialogue("dns", answer, ctx)
