"""The relay's sans-IO part for mirror and proxy modes (relay.py carries it out): two byte
streams, `read_limit` on each, the idle and lifetime rules, half-closes. `Relay` returns `Step`s
(what to forward, half-close or close) and never sees a socket; `target_of` says where a
connection is relayed to.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from honeytrap.addresses import bracket
from honeytrap.attack import Connection, Mode
from honeytrap.session import Closed

if TYPE_CHECKING:
    from honeytrap.config import PortConf

# No relay lasts longer than this, however it trickles (as normal.MAX_CONNECTION_SECONDS for
# normal mode): bounds how long an attacker can hold two sockets of ours.
RELAY_LIFETIME = 600.0


class Side(enum.Enum):
    """The two ends of a relay; the values are the PERREAD directions (plugin.ReadEvent)."""

    CLIENT = "in"  # the attacker
    TARGET = "out"  # the mirror or proxy target

    @property
    def other(self) -> Side:
        return Side.TARGET if self is Side.CLIENT else Side.CLIENT


@dataclass(frozen=True)
class Step:
    """What the adapter does next: forward bytes, half-close a side, close everything."""

    to_client: bytes = b""
    to_target: bytes = b""
    eof_client: bool = False
    eof_target: bool = False
    close: bool = False


class Relay:
    """The state of one relay. Times are the caller's clock (monotonic seconds)."""

    def __init__(
        self, *, read_limit: int, idle_timeout: float, now: float,
        lifetime: float = RELAY_LIFETIME,
    ) -> None:
        self.read_limit = read_limit
        self.idle_timeout = idle_timeout
        self.lifetime = lifetime
        self.started = now
        self.last = now
        self.received: dict[Side, bytearray] = {Side.CLIENT: bytearray(), Side.TARGET: bytearray()}
        self.truncated: set[Side] = set()
        self.eof: set[Side] = set()
        self.closed = Closed.OPEN

    def payload(self, side: Side) -> bytes:
        return bytes(self.received[side])

    def deadline(self) -> float:
        """When `on_tick` must be called next."""
        return min(self.last + self.idle_timeout, self.started + self.lifetime)

    def on_data(self, side: Side, data: bytes, now: float) -> Step:
        """`side` sent `data`: record it (up to read_limit per side) and forward it."""
        if self.closed is not Closed.OPEN or side in self.eof:
            return Step()
        self.last = now
        kept = self.received[side]
        room = self.read_limit - len(kept)
        if len(data) > room:
            self.truncated.add(side)
            data = data[: max(room, 0)]
        kept += data
        if len(kept) >= self.read_limit:
            self.closed = Closed.READ_LIMIT
            return self._forward(side, data, close=True)
        return self._forward(side, data)

    def on_eof(self, side: Side) -> Step:
        """`side` half-closed: pass the half-close on; both half-closed ends the relay."""
        if self.closed is not Closed.OPEN:
            return Step()
        self.eof.add(side)
        if self.eof == {Side.CLIENT, Side.TARGET}:
            return self._close(Closed.EOF)
        if side is Side.CLIENT:
            return Step(eof_target=True)
        return Step(eof_client=True)

    def on_lost(self, side: Side, error: bool) -> Step:
        """`side` is gone (closed or reset): the relay ends."""
        return self._close(Closed.RESET if error else Closed.EOF)

    def on_tick(self, now: float) -> Step:
        if self.closed is not Closed.OPEN:
            return Step(close=True)
        if now >= self.started + self.lifetime:
            return self._close(Closed.LIFETIME)
        if now >= self.last + self.idle_timeout:
            return self._close(Closed.IDLE)
        return Step()

    def abort(self, why: Closed) -> Step:
        return self._close(why)

    def _forward(self, side: Side, data: bytes, close: bool = False) -> Step:
        if side is Side.CLIENT:
            return Step(to_target=data, close=close)
        return Step(to_client=data, close=close)

    def _close(self, why: Closed) -> Step:
        if self.closed is Closed.OPEN:
            self.closed = why
        return Step(close=True)


@dataclass(frozen=True)
class Target:
    """Where a relay connects to."""

    host: str
    port: int
    protocol: str  # "tcp" or "udp"

    def __str__(self) -> str:
        return f"{bracket(self.host)}:{self.port}/{self.protocol}"


def target_of(port: PortConf, conn: Connection) -> Target:
    """Proxy: the configured target. Mirror: this connection's own peer, on the attacked port."""
    if port.mode is Mode.PROXY and port.proxy is not None:
        return Target(port.proxy.host, port.proxy.port, port.proxy.protocol)
    return Target(conn.remote_addr, conn.local_port, conn.protocol)


def chunks(data: bytes, size: int) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]
