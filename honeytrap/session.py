"""Normal mode, sans-IO: what to send and when to close, given data, idle timeouts and EOF.

The I/O adapter (server.py) feeds events and carries out the returned `Output`; no sockets here.

Timing (honeytrap(8), MODES): the C original sent the template after every idle read timeout,
up to 10 times, and closed after 11 idle timeouts; data reset the count. We keep its clock but
answer per *turn*: the template goes out after the first idle timeout (server-speaks-first
protocols get their banner) and after each burst of client data followed by an idle timeout
(client-speaks-first protocols get their answer), at most `template_repeat` times; a silent peer is
not flooded with repeats. The connection closes after `idle_limit` idle timeouts in a row, when
the peer half-closes (it gets nothing more, as in the original), or at `read_limit` bytes.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

# The C original closed after 11 idle read timeouts in a row (10 template sends + 1).
DEFAULT_IDLE_LIMIT = 11


class Closed(enum.Enum):
    OPEN = "open"
    IDLE = "idle"  # idle_limit timeouts without data
    EOF = "eof"  # the peer half-closed or closed
    READ_LIMIT = "read_limit"  # read_limit bytes received
    LIFETIME = "lifetime"  # the connection's time cap (server.py)
    RESET = "reset"  # a socket error
    SHUTDOWN = "shutdown"  # the server was stopped


@dataclass
class Output:
    send: bytes = b""
    close: bool = False


class NormalSession:
    def __init__(
        self,
        template: bytes,
        *,
        read_limit: int,
        template_repeat: int = 10,
        idle_limit: int = DEFAULT_IDLE_LIMIT,
    ) -> None:
        self.template = template
        self.read_limit = read_limit
        self.template_repeat = template_repeat
        self.idle_limit = idle_limit
        self.received = bytearray()
        self.sent = 0  # template sends
        self.idle = 0  # idle timeouts in a row
        self.turn_pending = True  # nothing answered since the start or the last data
        self.closed = Closed.OPEN
        self.truncated = False

    @property
    def payload(self) -> bytes:
        return bytes(self.received)

    def on_data(self, data: bytes) -> Output:
        if self.closed is not Closed.OPEN:
            return Output()
        room = self.read_limit - len(self.received)
        if len(data) > room:
            self.received += data[: max(room, 0)]
            self.truncated = True
            return self._close(Closed.READ_LIMIT)
        self.received += data
        self.idle = 0
        self.turn_pending = True
        if len(self.received) >= self.read_limit:
            return self._close(Closed.READ_LIMIT)
        return Output()

    def on_timeout(self) -> Output:
        """One read timeout passed without data."""
        if self.closed is not Closed.OPEN:
            return Output()
        self.idle += 1
        if self.idle >= self.idle_limit:
            return self._close(Closed.IDLE)
        if self.turn_pending and self.sent < self.template_repeat:
            self.turn_pending = False
            self.sent += 1
            return Output(send=self.template)
        return Output()

    def on_eof(self) -> Output:
        """The peer half-closed: it gets nothing more (as in the original)."""
        return self._close(Closed.EOF)

    def abort(self, why: Closed) -> Output:
        return self._close(why)

    def _close(self, why: Closed) -> Output:
        if self.closed is Closed.OPEN:
            self.closed = why
        return Output(close=True)


class UdpExchange:
    """One peer's datagrams to a UDP port: one reply per datagram, one attack per exchange
    (the datagrams until the peer is silent for a read timeout). The original re-forked on one
    datagram and replied about ten times to it; we reply exactly once."""

    def __init__(self, template: bytes, *, read_limit: int) -> None:
        self.template = template
        self.read_limit = read_limit
        self.received = bytearray()
        self.datagrams = 0
        self.truncated = False

    @property
    def payload(self) -> bytes:
        return bytes(self.received)

    def on_datagram(self, data: bytes) -> bytes:
        """Record the datagram (up to read_limit) and return the one reply to send."""
        self.datagrams += 1
        room = self.read_limit - len(self.received)
        if len(data) > room:
            self.truncated = True
            data = data[: max(room, 0)]
        self.received += data
        return self.template
