"""What a port's connections may ask of the dynamic server hosting them.

Connection adapters (normal.py's NormalConnection and UdpServer, relay.py's RelayConnection and
UdpRelayPeer) are written against these narrow Protocols, not against
dynamicserver.DynamicServer, so that dynamicserver.py imports the adapters and nothing imports it
back (no import cycle).
DynamicServer satisfies `Host` structurally; normal.UdpServer satisfies `UdpHost`.
"""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from honeytrap.attack import Attack
    from honeytrap.config import Config, PortConf
    from honeytrap.deadlines import Deadlines
    from honeytrap.dialogue.base import DialogueFactory
    from honeytrap.dialogue.catalog import Catalog
    from honeytrap.mirror import MirrorPolicy
    from honeytrap.reflector import ReflectorGuard
    from honeytrap.session import Closed
    from honeytrap.wire import Endpoints

# accept()/recvmsg() failing for lack of fds or memory: back off, do not crash.
RESOURCE_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


class Finisher(Protocol):
    """A connection or exchange the server can abort on shutdown."""

    __slots__ = ()  # so that a slotted connection (normal.py) has no instance dict through it

    def abort(self, why: Closed) -> None: ...


class Stats(Protocol):
    """The counters a connection adapter moves (server.ServerStats)."""

    refused_full: int
    accept_errors: int


class Host(Protocol):
    """A port's dynamic server, as its connections see it."""

    port: PortConf
    config: Config
    template: bytes  # the raw template (or the default), for UDP and relay fall-backs
    has_template: bool  # False: the port has no template file (UDP then sends nothing)
    catalog: Catalog  # the sensor's dialogues (dialogue/catalog.py)
    dialogue: DialogueFactory  # what answers this port's TCP connections in normal mode
    mirror: MirrorPolicy
    reflector: ReflectorGuard  # what a UDP port may send to a source (reflector.py)
    loop: asyncio.AbstractEventLoop
    deadlines: Deadlines  # the process's one timer for its connections' deadlines
    sock: Any  # the listening (TCP) or bound (UDP) socket

    @property
    def stats(self) -> Stats: ...

    def connection_opened(self, conn: Finisher) -> None: ...

    def connection_closed(self, conn: Finisher, attack: Attack) -> None: ...

    def normal_closed(self, handler: Finisher, conn: Endpoints, payload: bytes, start: float,
                      end: float, dialogue: str, turns: Sequence[int], sent: bytes,
                      fields: dict[str, Any], notes: Sequence[str]) -> None:
        """A normal-mode TCP connection's end: its attack's figures (not an Attack)."""

    def perread(self, conn: Endpoints, direction: str, data: bytes) -> None: ...

    def fall_back_to_normal(
        self, old: Finisher, transport: asyncio.Transport, note: str, start: float
    ) -> None: ...


class UdpHost(Protocol):
    """A UDP port's datagram pump, as one peer's exchange sees it."""

    server: Host

    def reply(self, data: bytes, pktinfo: tuple[int, int, bytes] | None, addr: Any) -> None: ...

    def finished(self, peer: Any) -> None: ...
