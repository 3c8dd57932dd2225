"""NTP over UDP (RFC 5905 7.3): a mode 4 server reply to a mode 3 client request, version
echoed, the client's transmit timestamp as our origin timestamp (what clients check against
off-path spoofing), receive and transmit timestamps from the clock, stratum 2. Control and
private modes (6, 7: monlist, the notorious amplifier) get nothing."""

from __future__ import annotations

import hashlib
import struct

from honeytrap.dialogue.base import Context, Dialogue
from honeytrap.dialogue.datagram import DatagramDialogue, clock

PACKET = 48
MODE_CLIENT, MODE_SERVER = 3, 4
NTP_EPOCH = 2208988800  # 1900-01-01 to 1970-01-01 in seconds
STRATUM = 2
PRECISION = -23  # about 119 ns: a modern Linux clock
ROOT_DELAY, ROOT_DISPERSION = 0x0000_0A3D, 0x0000_1A36  # 40 ms, 102 ms, in NTP short format


def timestamp(unix: float) -> bytes:
    seconds = int(unix) + NTP_EPOCH
    return struct.pack("!II", seconds & 0xFFFFFFFF, int((unix % 1) * 2**32) & 0xFFFFFFFF)


def reference_id(hostname: str) -> bytes:
    """A stable per-sensor upstream: an address in 192.0.2.0/24 (TEST-NET-1, RFC 5737), so it
    names no real server."""
    return bytes([192, 0, 2, hashlib.sha256(hostname.encode()).digest()[0] or 1])


def reply(datagram: bytes, unix: float, hostname: str) -> bytes | None:
    if len(datagram) < PACKET:
        return None
    first = datagram[0]
    version, mode = (first >> 3) & 0x7, first & 0x7
    if mode != MODE_CLIENT or not 1 <= version <= 4:
        return None
    poll = datagram[2]
    return (bytes([version << 3 | MODE_SERVER, STRATUM, poll, PRECISION & 0xFF])
            + struct.pack("!II", ROOT_DELAY, ROOT_DISPERSION) + reference_id(hostname)
            + timestamp(unix - 64) + datagram[40:48] + timestamp(unix) + timestamp(unix))


def answer(datagram: bytes, ctx: Context, budget: int) -> bytes | None:
    return reply(datagram, clock(ctx), ctx.hostname)


def factory(ctx: Context) -> Dialogue:
    return DatagramDialogue("ntp", answer, ctx)
