"""Mirror and proxy modes: relay one attacker's connection (or UDP exchange) to a target and
record both directions.

The sans-IO part is relaystate.py (`Relay`: the two byte streams and their rules, as `Step`s);
the asyncio adapters here carry its steps out: `RelayConnection` for an accepted TCP connection,
`UdpRelayPeer` for one peer's datagrams to a UDP port, each with one outbound leg to the target
(`TcpLeg` or `UdpLeg`, whatever the target protocol). The target is the connection's own peer on
the attacked port (mirror: never anyone else's, the C original's defect) or the port's proxy
target, resolved when the connection is made. A refused mirror target (mirror.py) or an outbound
connection that fails serves the connection in normal mode instead, with a note in the record.

Record: the attacker's bytes are the attack string (attack_connection), the target's bytes the
second half (proxy_connection, with the real addresses and ports of our outbound socket).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any, cast

from honeytrap.addresses import split
from honeytrap.attack import Attack, Connection, Mode, Payload
from honeytrap.relaystate import Relay, Side, Step, Target, chunks, target_of
from honeytrap.session import DEFAULT_IDLE_LIMIT, Closed

if TYPE_CHECKING:
    from honeytrap.host import Host, UdpHost

log = logging.getLogger("honeytrap.relay")

# The modes this module serves.
RELAY_MODES = (Mode.MIRROR, Mode.PROXY)
# The outbound connection must be up within this long, else normal mode takes over; the
# attacker waits meanwhile, and a scanner gives up after a few seconds (the C original used a
# short timeout for mirror connections for the same reason).
CONNECT_TIMEOUT = 5.0
# A TCP relay ends after this many read timeouts with no data either way (normal mode's idle
# limit: the C original's 11 read timeouts).
TCP_IDLE_TIMEOUTS = DEFAULT_IDLE_LIMIT
# Bytes queued for one side before we stop reading the other (asyncio flow control): a side
# that does not read cannot make us buffer more than this per direction.
WRITE_HIGH_WATER = 256 * 1024
WRITE_LOW_WATER = 64 * 1024
# The largest UDP payload over IPv4 (65535 - 8 - 20): stream data for a UDP side is cut into
# datagrams of at most this size.
UDP_MAX_PAYLOAD = 65507
# Datagrams from a UDP peer held while its outbound leg is being opened; more are recorded
# but not forwarded (UDP may drop them anyway).
UDP_PENDING_DATAGRAMS = 64


# --- the outbound leg -------------------------------------------------------------------------


class TcpLeg(asyncio.Protocol):
    """A TCP connection to the target."""

    def __init__(self, owner: RelayBase) -> None:
        self.owner = owner
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's does not subclass it
        self.transport = transport
        transport.set_write_buffer_limits(WRITE_HIGH_WATER, WRITE_LOW_WATER)
        self.owner.leg_made(self)

    def connection(self) -> Connection:
        assert self.transport is not None
        return _connection("tcp", self.transport)

    def data_received(self, data: bytes) -> None:
        self.owner.target_data(data)

    def eof_received(self) -> bool:
        self.owner.target_eof()
        return True  # keep writing to it until the relay ends

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner.target_lost(exc)

    def pause_writing(self) -> None:
        self.owner.pause_client()

    def resume_writing(self) -> None:
        self.owner.resume_client()

    def send(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def send_eof(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write_eof()

    def pause(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.transport is not None:
            self.transport.resume_reading()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class UdpLeg(asyncio.DatagramProtocol):
    """A connected UDP socket to the target: one per relay, so its replies are this relay's."""

    def __init__(self, owner: RelayBase) -> None:
        self.owner = owner
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (the selector loop's datagram transport does not subclass DatagramTransport in 3.11)
        self.transport = cast(asyncio.DatagramTransport, transport)
        self.owner.leg_made(self)

    def connection(self) -> Connection:
        assert self.transport is not None
        return _connection("udp", self.transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.owner.target_data(data)

    def error_received(self, exc: Exception) -> None:
        self.owner.target_error(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner.target_lost(exc)

    def send(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            for chunk in chunks(data, UDP_MAX_PAYLOAD):
                self.transport.sendto(chunk)

    def send_eof(self) -> None:
        """A datagram socket has no half-close: the relay ends by its idle rule."""

    def pause(self) -> None:
        """Datagrams are not flow-controlled (the kernel drops what nobody reads)."""

    def resume(self) -> None:
        """See pause."""

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


Leg = TcpLeg | UdpLeg


def _connection(protocol: str, transport: asyncio.BaseTransport) -> Connection:
    local = split(transport.get_extra_info("sockname"))
    remote = split(transport.get_extra_info("peername"))
    return Connection(protocol, local[0], local[1], remote[0], remote[1])


async def open_leg(owner: RelayBase, target: Target) -> Leg:
    """Connect to the target (a host name is resolved now); OSError or TimeoutError."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(CONNECT_TIMEOUT):
        if target.protocol == "tcp":
            _, tcp = await loop.create_connection(lambda: TcpLeg(owner), target.host, target.port)
            return tcp
        _, udp = await loop.create_datagram_endpoint(
            lambda: UdpLeg(owner), remote_addr=(target.host, target.port)
        )
        return udp


# --- the attacker's side ----------------------------------------------------------------------


class RelayBase:
    """What TCP and UDP relays share: the policy, the outbound leg, the clock, the record."""

    def __init__(self, server: Host, conn: Connection, idle_timeout: float) -> None:
        self.server = server
        self.conn = conn
        self.mode = server.port.mode
        self.start = time.time()
        self.relay = Relay(
            read_limit=server.config.read_limit, idle_timeout=idle_timeout,
            now=time.monotonic(),
        )
        self.leg: Leg | None = None
        self.proxy_conn: Connection | None = None
        self.notes: list[str] = []
        self.connecting: asyncio.Task[None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.live = False  # the leg is connected and both sides are read
        self.done = False

    # What the client side's adapter provides.

    def client_send(self, data: bytes) -> None:
        raise NotImplementedError

    def client_eof(self) -> None:
        raise NotImplementedError

    def client_close(self) -> None:
        raise NotImplementedError

    def fall_back(self, note: str) -> None:
        raise NotImplementedError

    def pause_client(self) -> None:
        """The target's write buffer is full: stop reading the attacker (TCP only)."""

    def resume_client(self) -> None:
        """See pause_client."""

    # Starting.

    def begin(self) -> None:
        """Check the target and start connecting; or fall back to normal mode at once."""
        target = target_of(self.server.port, self.conn)
        if self.mode is Mode.MIRROR:
            reason = self.server.mirror.refusal(self.conn.remote_addr, self.conn.local_addr)
            if reason is not None:
                self._fall_back(f"mirror refused: {reason}")
                return
        self.connecting = asyncio.get_running_loop().create_task(self._connect(target))

    async def _connect(self, target: Target) -> None:
        try:
            leg = await open_leg(self, target)
        except TimeoutError:
            self._fall_back(f"{self.mode.label} connection to {target} failed: timed out")
            return
        except OSError as exc:
            why = exc.strerror or str(exc)
            self._fall_back(f"{self.mode.label} connection to {target} failed: {why}")
            return
        finally:
            self.connecting = None
        if self.done or self.leg is not leg:
            leg.close()
            return
        self.live = True
        self._arm()
        self.connected()

    def leg_made(self, leg: Leg) -> None:
        """The leg's connection_made: from now on its data is relayed (a target that speaks
        first may do so before `open_leg` returns)."""
        if self.done or self.mode is Mode.NORMAL:
            leg.close()
            return
        self.leg = leg
        self.proxy_conn = leg.connection()

    def connected(self) -> None:
        """The leg is up (adapters resume reading or flush what they held)."""

    def _fall_back(self, note: str) -> None:
        log.info("port %d/%s: %s; normal mode", self.conn.local_port, self.conn.protocol, note)
        self.mode = Mode.NORMAL
        if self.leg is not None:
            self.leg.close()
            self.leg = None
        self.fall_back(note)

    # Events from both sides.

    def client_data(self, data: bytes) -> None:
        self.server.perread(self.conn, Side.CLIENT.value, data)
        self.apply(self.relay.on_data(Side.CLIENT, data, time.monotonic()))

    def target_data(self, data: bytes) -> None:
        if self.leg is None or self.proxy_conn is None:
            return  # a datagram racing a fall-back
        self.server.perread(self.proxy_conn, Side.TARGET.value, data)
        self.apply(self.relay.on_data(Side.TARGET, data, time.monotonic()))

    def target_eof(self) -> None:
        self.apply(self.relay.on_eof(Side.TARGET))

    def target_lost(self, exc: Exception | None) -> None:
        self.apply(self.relay.on_lost(Side.TARGET, exc is not None))

    def target_error(self, exc: Exception) -> None:
        """A UDP leg got an ICMP error (port unreachable, ...): the target is not there."""
        self.notes.append(f"{self.mode.label} target error: {_reason(exc)}")
        self.apply(self.relay.on_lost(Side.TARGET, True))

    def abort(self, why: Closed) -> None:
        self.apply(self.relay.abort(why))

    def apply(self, step: Step) -> None:
        if step.to_target and self.leg is not None:
            self.leg.send(step.to_target)
        if step.to_client:
            self.client_send(step.to_client)
        if step.eof_target and self.leg is not None:
            self.leg.send_eof()
        if step.eof_client:
            self.client_eof()
        if step.close:
            self.close_all()

    def close_all(self) -> None:
        if self.connecting is not None:
            self.connecting.cancel()
        if self.timer is not None:
            self.timer.cancel()
        if self.leg is not None:
            self.leg.close()
        self.client_close()

    def _arm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        loop = asyncio.get_running_loop()
        delay = max(self.relay.deadline() - time.monotonic(), 0.0)
        self.timer = loop.call_later(delay, self._tick)

    def _tick(self) -> None:
        self.timer = None
        if self.done:
            return
        if self.connecting is not None:  # CONNECT_TIMEOUT bounds this phase
            self.relay.last = time.monotonic()
            self._arm()
            return
        self.apply(self.relay.on_tick(time.monotonic()))
        if self.relay.closed is Closed.OPEN:
            self._arm()

    # The record.

    def attack(self) -> Attack:
        relay = self.relay
        attack = Attack(
            attack_connection=replace(self.conn, payload=Payload(relay.payload(Side.CLIENT))),
            mode=self.mode,
            start_time=self.start,
            end_time=time.time(),
        )
        if self.mode is not Mode.NORMAL and self.proxy_conn is not None:
            attack.proxy_connection = replace(
                self.proxy_conn, payload=Payload(relay.payload(Side.TARGET))
            )
        for note in self.notes:
            attack.add_note(note)
        for side in sorted(relay.truncated, key=lambda s: s.value):
            attack.add_note(f"read_limit of {relay.read_limit} bytes reached "
                            f"({'attacker' if side is Side.CLIENT else 'target'} side)")
        return attack


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return type(exc).__name__


class RelayConnection(asyncio.Protocol, RelayBase):
    """An accepted TCP connection in mirror or proxy mode."""

    def __init__(self, server: Host) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's does not subclass it
        self.transport = transport
        local = split(transport.get_extra_info("sockname"))
        remote = split(transport.get_extra_info("peername"))
        conn = Connection("tcp", local[0], local[1], remote[0], remote[1])
        idle = self.server.config.read_timeout * TCP_IDLE_TIMEOUTS
        RelayBase.__init__(self, self.server, conn, idle)
        transport.set_write_buffer_limits(WRITE_HIGH_WATER, WRITE_LOW_WATER)
        # Nothing is read until the target is connected (or normal mode takes over): what the
        # attacker sends meanwhile waits in the kernel, and goes to whichever handles it.
        transport.pause_reading()
        self.server.connection_opened(self)
        self.begin()

    def connected(self) -> None:
        assert self.transport is not None
        self.transport.resume_reading()

    def fall_back(self, note: str) -> None:
        assert self.transport is not None
        self.done = True
        if self.timer is not None:
            self.timer.cancel()
        self.server.fall_back_to_normal(self, self.transport, note, self.start)

    def data_received(self, data: bytes) -> None:
        self.client_data(data)

    def eof_received(self) -> bool:
        self.apply(self.relay.on_eof(Side.CLIENT))
        return True  # the target's answer may still come

    def pause_writing(self) -> None:
        if self.leg is not None:
            self.leg.pause()

    def resume_writing(self) -> None:
        if self.leg is not None:
            self.leg.resume()

    def pause_client(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_client(self) -> None:
        if self.transport is not None and self.live:
            self.transport.resume_reading()

    def client_send(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def client_eof(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write_eof()

    def client_close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.done:
            return
        self.apply(self.relay.on_lost(Side.CLIENT, exc is not None))
        self.done = True
        self.server.connection_closed(self, self.attack())


class UdpRelayPeer(RelayBase):
    """One peer's datagrams to a UDP port in mirror or proxy mode: relayed through one connected
    socket to the target, the replies sent back from the attacked address; the exchange (and
    its record) ends after a read timeout of silence both ways."""

    def __init__(
        self, udp: UdpHost, conn: Connection, addr: Any, pktinfo: tuple[int, int, bytes] | None
    ) -> None:
        super().__init__(udp.server, conn, udp.server.config.read_timeout)
        self.udp = udp
        self.addr = addr
        self.pktinfo = pktinfo
        self.pending: list[bytes] = []
        self.dropped = 0

    def open(self) -> None:
        self.begin()
        if self.timer is None:
            self._arm()  # the idle rule runs while connecting and in normal mode too

    def datagram(self, data: bytes) -> None:
        self.client_data(data)
        if self.mode is Mode.NORMAL and not self.done:
            self.client_send(self.server.template)  # one reply per datagram, as UdpPeer

    def apply(self, step: Step) -> None:
        if step.to_target and self.leg is None and self.mode is not Mode.NORMAL:
            if len(self.pending) < UDP_PENDING_DATAGRAMS:
                self.pending.append(step.to_target)
            else:
                self.dropped += 1
        super().apply(step)

    def leg_made(self, leg: Leg) -> None:
        """What waited for the leg goes first, the moment it exists: a datagram read between the
        leg's connection_made and open_leg's return is sent at once (apply: the leg is set) and
        would overtake the ones still pending until connected()."""
        super().leg_made(leg)
        self.connected()

    def connected(self) -> None:
        if self.leg is None:
            return  # closed or fallen back meanwhile: fall_back answered what waited
        pending, self.pending = self.pending, []
        for data in pending:
            self.leg.send(data)

    def fall_back(self, note: str) -> None:
        self.notes.append(note)
        # Each datagram that waited for the failed leg gets its normal-mode reply.
        for _ in self.pending:
            self.client_send(self.server.template)
        self.pending = []
        if self.timer is None and not self.done:
            self._arm()

    def target_error(self, exc: Exception) -> None:
        if self.relay.payload(Side.TARGET):
            super().target_error(exc)
            return
        # The target never answered and is not there (ICMP unreachable): normal mode, and the
        # datagram that found nobody gets its reply.
        self._fall_back(f"{self.mode.label} target did not answer: {_reason(exc)}")
        self.client_send(self.server.template)

    def target_lost(self, exc: Exception | None) -> None:
        if self.mode is not Mode.NORMAL:
            super().target_lost(exc)

    def client_send(self, data: bytes) -> None:
        for chunk in list(chunks(data, UDP_MAX_PAYLOAD)) or [b""]:
            self.udp.reply(chunk, self.pktinfo, self.addr)

    def client_eof(self) -> None:
        """Datagrams have no half-close."""

    def client_close(self) -> None:
        if self.done:
            return
        self.done = True
        if self.dropped:
            self.notes.append(f"{self.dropped} datagrams not forwarded (target not ready)")
        self.udp.finished(self)
        self.server.connection_closed(self, self.attack())
