"""FTP client protocol pieces without I/O: replies, PORT/EPRT and PASV/EPSV (RFC 959, 2428)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from honeytrap.errors import ProtocolError

# A reply longer than this (all lines) is not an FTP server talking: refuse it.
MAX_REPLY = 64 * 1024

_PASV = re.compile(rb"(\d{1,3}),(\d{1,3}),(\d{1,3}),(\d{1,3}),(\d{1,3}),(\d{1,3})")
_EPSV = re.compile(rb"\((.)\1\1(\d{1,5})\1\)")


@dataclass(frozen=True)
class Reply:
    code: int
    text: bytes

    @property
    def positive(self) -> bool:
        """1xx-3xx: the command went through (RFC 959 section 4.2)."""
        return 100 <= self.code < 400


class ReplyReader:
    """Feed bytes, take complete replies. Multi-line replies (`123-` ... `123 `) are joined."""

    def __init__(self) -> None:
        self._buffer = b""
        self._code: bytes | None = None
        self._lines: list[bytes] = []
        self._size = 0  # bytes in self._lines

    def feed(self, data: bytes) -> list[Reply]:
        self._buffer += data
        if len(self._buffer) > MAX_REPLY:
            raise ProtocolError("FTP reply too long")
        replies: list[Reply] = []
        while b"\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\n", 1)
            line = line.rstrip(b"\r")
            reply = self._line(line)
            if reply is not None:
                replies.append(reply)
        return replies

    def _line(self, line: bytes) -> Reply | None:
        head = line[:3]
        if self._code is None:
            if len(head) < 3 or not head.isdigit():
                raise ProtocolError(f"not an FTP reply: {line[:40]!r}")
            if line[3:4] == b"-":
                self._code, self._lines, self._size = head, [line[4:]], len(line)
                return None
            return Reply(int(head), line[4:])
        if head == self._code and line[3:4] == b" ":
            self._lines.append(line[4:])
            reply = Reply(int(head), b"\n".join(self._lines))
            self._code, self._lines = None, []
            return reply
        self._lines.append(line)
        self._size += len(line)
        if self._size > MAX_REPLY:
            raise ProtocolError("FTP reply too long")
        return None


def port_command(address: str, port: int) -> tuple[str, str]:
    """PORT for IPv4 (RFC 959), EPRT for IPv6 (RFC 2428): verb and argument."""
    if ":" in address:
        return "EPRT", f"|2|{address}|{port}|"
    return "PORT", ",".join([*address.split("."), str(port >> 8), str(port & 0xFF)])


def passive_port(reply: Reply) -> int:
    """The data port of a 227 (PASV) or 229 (EPSV) reply. The address a PASV reply names is
    ignored: we connect to the control connection's address only (no FTP bounce, RFC 2577)."""
    if reply.code == 229:
        match = _EPSV.search(reply.text)
        if match:
            port = int(match.group(2))
            if 0 < port < 65536:
                return port
    elif reply.code == 227:
        match = _PASV.search(reply.text)
        if match:
            high, low = int(match.group(5)), int(match.group(6))
            if high < 256 and low < 256 and (high or low):
                return high * 256 + low
    raise ProtocolError(f"bad passive reply: {reply.code} {reply.text[:60]!r}")


def command(verb: str, argument: str = "") -> bytes:
    """A command line; CR, LF and NUL in attacker-given arguments would inject further
    commands (RFC 959 has no escape), so such an argument is refused."""
    if any(c in argument for c in "\r\n\x00"):
        raise ProtocolError("line break in an FTP argument")
    line = f"{verb} {argument}" if argument else verb
    # Latin-1: the argument came from the attacker's bytes decoded as Latin-1; this sends
    # exactly those bytes again.
    return line.encode("latin-1", errors="replace") + b"\r\n"
