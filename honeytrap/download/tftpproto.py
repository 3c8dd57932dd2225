"""TFTP read transfer (RFC 1350, octet mode) as a state machine without I/O.

`RrqSession.start()` gives the RRQ; `receive(packet, source)` takes each datagram and answers
with the ACK to send (or None for a stray packet); `done` and `data` tell the result. Block
numbers wrap from 65535 to 0, as tftpd-hpa and most servers do for files over 32 MiB.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from honeytrap.download.policy import DownloadRefused
from honeytrap.errors import DownloadError, ProtocolError

RRQ, DATA, ACK, ERROR = 1, 3, 4, 5  # RFC 1350 opcodes
BLOCK_SIZE = 512  # RFC 1350: a DATA packet under 512 bytes ends the transfer
ERROR_UNKNOWN_TID = 5


def rrq(filename: str) -> bytes:
    name = filename.encode("latin-1", errors="replace")
    if b"\x00" in name:
        raise ProtocolError("NUL in a TFTP file name")
    return struct.pack("!H", RRQ) + name + b"\x00octet\x00"


def ack(block: int) -> bytes:
    return struct.pack("!HH", ACK, block)


def error(code: int, message: str) -> bytes:
    return struct.pack("!HH", ERROR, code) + message.encode("ascii") + b"\x00"


@dataclass
class RrqSession:
    """One download. `limit` caps the file size (DownloadRefused past it)."""

    filename: str
    limit: int
    server: tuple[str, int] | None = None  # the server's transfer ID, fixed by its first DATA
    block: int = 0  # last block received (mod 65536)
    done: bool = False
    chunks: list[bytes] = field(default_factory=list)
    size: int = 0
    last_sent: bytes = b""

    def start(self) -> bytes:
        self.last_sent = rrq(self.filename)
        return self.last_sent

    @property
    def data(self) -> bytes:
        return b"".join(self.chunks)

    def receive(self, packet: bytes, source: tuple[str, int]) -> bytes | None:
        """The answer to a datagram: an ACK (maybe a repeated one), an ERROR to a stranger,
        or None to ignore it. Raises DownloadError for a TFTP error or an oversized file."""
        if self.server is not None and source != self.server:
            return error(ERROR_UNKNOWN_TID, "Unknown transfer ID")  # RFC 1350 section 4
        if len(packet) < 4:
            return None
        opcode, number = struct.unpack("!HH", packet[:4])
        if opcode == ERROR:
            text = packet[4:].split(b"\x00", 1)[0][:100].decode("latin-1")
            raise DownloadError(f"TFTP error {number}: {text}")
        if opcode != DATA or self.done:
            return None
        expected = (self.block + 1) & 0xFFFF
        if number != expected:
            # A duplicate of the previous block: our ACK was lost; repeat it (RFC 1350).
            return ack(number) if number == self.block and self.server is not None else None
        self.server = source
        payload = packet[4 : 4 + BLOCK_SIZE]
        self.size += len(payload)
        if self.size > self.limit:
            raise DownloadRefused(f"larger than {self.limit} bytes")
        self.chunks.append(payload)
        self.block = number
        self.done = len(payload) < BLOCK_SIZE
        self.last_sent = ack(number)
        return self.last_sent
