"""Normal mode's connection adapters: the asyncio side of a port that answers by itself.

`NormalConnection` drives one accepted TCP connection's NormalSession (session.py) with data, the
read-timeout clock and EOF; `UdpServer` reads a UDP port's datagrams and hands each peer's to its
exchange (`UdpPeer`, or relay.py's `UdpRelayPeer` in mirror/proxy mode). They see the dynamic
server hosting them only through host.py's `Host`, so server.py imports them and not the reverse.
"""

from __future__ import annotations

import _socket
import asyncio
import errno
import logging
import os
import socket
import time
from collections.abc import Sequence
from typing import Any, cast

from honeytrap.addresses import split, split_local
from honeytrap.attack import (
    Attack,
    Connection,
    DialogueRecord,
    Mode,
    Payload,
    jsonable,
)
from honeytrap.datachannel import FtpData
from honeytrap.deadlines import Entry
from honeytrap.dialogue.base import DataChannel
from honeytrap.host import RESOURCE_ERRNOS, Finisher, Host
from honeytrap.relay import RELAY_MODES, UdpRelayPeer
from honeytrap.session import Closed, NormalSession, Output, UdpExchange

log = logging.getLogger("honeytrap.server")

# No connection may last longer than this, however it trickles: bounds how long an attacker can
# hold a slot (read_limit bounds the bytes, this the time).
MAX_CONNECTION_SECONDS = 600.0
# Datagrams read per wake-up of a UDP socket.
UDP_BATCH = 64
# A connection closed by us takes what the kernel already received first: at most this many
# reads of this size (read_limit caps what is kept).
ABORT_READS = 16
ABORT_READ_SIZE = 65536
UDP_BUFFER = 65535
# in6_pktinfo / in_pktinfo ancillary data for the local address of a datagram.
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
CMSG_SPACE = socket.CMSG_SPACE(32)


_recent_time = float("-inf")


def _shared_time(now: float) -> float:
    """`now`, as the float object of the last call if it was equal: connections opened in one
    round of the loop (one accept batch: the loop's clock is read once per round) share one
    (24 bytes each otherwise)."""
    global _recent_time
    if now == _recent_time:
        return _recent_time
    _recent_time = now
    return now


class NormalConnection(asyncio.Protocol, Finisher):
    """Normal mode over TCP: the port's dialogue in a NormalSession (session.py), driven by data,
    the session's clock and EOF. Replies wait their jitter (in order); FTP's data connection is
    datachannel.py's."""

    # One per open connection, most of them idle: no instance dict (bench/idle.py).
    # The loop and the deadlines are the server's (self.server.loop, .deadlines), the deadline's
    # time its entry's: not three slots more each. Its addresses in slots of its own: it is
    # the record's connection itself (wire.Endpoints, with `protocol`), no Connection made for
    # the frame or the perread hooks (~2 us of a server process's CPU per connection, py-spy).
    __slots__ = ("server", "local_addr", "local_port", "remote_addr", "remote_port", "notes",
                 "session", "transport", "start", "opened", "deadline", "send_at", "data",
                 "uploaded", "done")
    protocol = "tcp"

    def __init__(self, server: Host, notes: Sequence[str] = (),
                 remote: tuple[str, int] | None = None,
                 local: tuple[str, int] | None = None) -> None:
        self.server = server
        # The peer's address as accept gave it, the one it reached if the server knows it
        # ("": attach asks the transport).
        self.remote_addr = ""
        self.local_addr = ""
        self.remote_port = self.local_port = 0
        if remote is not None:
            self.remote_addr, self.remote_port = remote
        if local is not None:
            self.local_addr, self.local_port = local
        self.notes = tuple(notes)  # e.g. why a mirror connection fell back (mostly the one ())
        self.session: NormalSession | None = None
        self.transport: asyncio.Transport | None = None
        self.start = time.time()
        self.opened = _shared_time(server.loop.time())
        # The session's next deadline: an entry in the process's one heap (deadlines.py; its
        # time is the entry's first item).
        self.deadline: Entry | None = None
        self.send_at = 0.0  # when the last reply scheduled goes out (replies keep their order)
        self.data: FtpData | None = None
        self.uploaded: bytearray | None = None  # FTP uploads (STOR), made with the data channel
        self.done = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's does not subclass it
        self.attach(transport)
        self.server.connection_opened(self)

    def attach(self, transport: asyncio.Transport) -> None:
        """Take over the connection (from connection_made, or from a relay falling back)."""
        self.transport = transport
        local_addr, port = self.local_addr, self.local_port
        if not local_addr:
            local_addr, port = split_local(transport.get_extra_info("sockname"))
            # The port's own int, not the one getsockname made (above 256 an int of its own per
            # connection, 32 bytes, in the record and the dialogue's context).
            if port == self.server.port.port:
                port = self.server.port.port
            self.local_addr, self.local_port = local_addr, port
        remote_addr, remote_port = self.remote_addr, self.remote_port
        if not remote_addr:
            remote_addr, remote_port = split(transport.get_extra_info("peername"))
            self.remote_addr, self.remote_port = remote_addr, remote_port
        config = self.server.config
        ctx = self.server.catalog.context("tcp", port, config.read_limit, local_addr,
                                          remote_addr, remote_port)
        # The session's clock starts when the connection was opened (a moment ago: its float
        # shared, not one more per connection).
        self.session = NormalSession(
            self.server.dialogue(ctx), read_limit=config.read_limit,
            read_timeout=config.read_timeout, now=self.opened,
        )
        self._apply(self.session.start())
        self._arm()

    def data_received(self, data: bytes) -> None:
        assert self.session is not None
        self.server.perread(self, "in", data)
        self._apply(self.session.on_data(data, self.server.loop.time()))
        self._arm()

    def eof_received(self) -> bool:
        if self.session is not None:
            self._apply(self.session.on_eof())
        return False

    def _arm(self) -> None:
        """One deadline per connection, the session's next (or the lifetime's)."""
        if self.done or self.session is None:
            return
        due = min(self.session.deadline(), self.opened + MAX_CONNECTION_SECONDS)
        deadlines = self.server.deadlines
        if self.deadline is not None:
            if self.deadline[0] <= due:  # type: ignore[operator]  # the entry's time, a float
                return  # it comes first and re-arms
            deadlines.cancel(self.deadline)
        self.deadline = deadlines.at(due, self)

    def __call__(self) -> None:
        """The deadline came (the connection is its own callback in the deadlines' heap: no
        bound method held per connection, ~64 bytes each)."""
        self.deadline = None
        if self.done or self.session is None:
            return
        now = self.server.loop.time()
        if now - self.opened >= MAX_CONNECTION_SECONDS:
            self.abort(Closed.LIFETIME)
            return
        self._apply(self.session.on_tick(now))
        self._arm()

    def _apply(self, out: Output) -> None:
        if self.transport is None:
            return
        if not (out.send or out.close or out.delay) and out.data is None:
            return  # nothing to do, now or later (most events of most connections)
        if out.data is not None:
            self._data_channel(out.data)
        loop = self.server.loop
        if not out.delay and self.send_at <= loop.time():
            self._send(out)
            return
        self.send_at = max(self.send_at, loop.time() + out.delay)
        loop.call_at(self.send_at, self._send, out)

    def _send(self, out: Output) -> None:
        assert self.transport is not None
        if out.send and not self.transport.is_closing():
            self.transport.write(out.send)
        if out.close:
            self.transport.close()
        if self.send_at and self.send_at <= self.server.loop.time():
            self.send_at = 0.0  # the last one scheduled went: its float not kept (idle, 24 B)

    def _data_channel(self, channel: DataChannel) -> None:
        if self.data is None:
            assert self.session is not None
            session = self.session
            uploaded = self.uploaded = bytearray()
            self.data = FtpData(
                self.local_addr, self.remote_addr,
                room=lambda: session.read_limit - len(uploaded), sink=uploaded.extend,
                done=lambda then: self._apply(session.later(then)),
            )
        self.data.handle(channel)

    def abort(self, why: Closed) -> None:
        if self.session is not None:
            self._take_pending()
            self.session.abort(why)
        if self.transport is not None:
            self.transport.close()

    def _take_pending(self) -> None:
        """Closing now (shutdown, lifetime): what the attacker sent and the kernel already holds
        is part of the attack, even if the loop has not read it yet (an accept just before
        "shutdown" would otherwise be recorded empty)."""
        transport = self.transport
        if transport is None or transport.is_closing() or self.session is None:
            return
        sock = transport.get_extra_info("socket")
        if sock is None:
            return
        for _ in range(ABORT_READS):
            try:
                if isinstance(sock, _socket.socket):  # sockettransport.py's, in blocking mode
                    data = sock.recv(ABORT_READ_SIZE, socket.MSG_DONTWAIT)
                else:  # a loop transport's (non-blocking)
                    data = os.read(sock.fileno(), ABORT_READ_SIZE)
            except OSError:
                return
            if not data or self.session is None or self.session.closed is not Closed.OPEN:
                return
            self.data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.done:
            return
        self.done = True
        if self.deadline is not None:
            self.server.deadlines.cancel(self.deadline)
            self.deadline = None
        if self.data is not None:
            self.data.shutdown()
        session = self.session
        assert session is not None
        if session.closed is Closed.OPEN:
            session.abort(Closed.RESET if exc else Closed.EOF)
        fields = session.record()
        if self.uploaded:
            fields["data_received"] = bytes(self.uploaded)
        notes = self.notes
        if session.truncated or session.transcript.sent_cut or session.error:
            notes = (*notes, *self._limit_notes(session))
        transcript = session.transcript
        # Encoded for the recorder straight from these figures (the frame an Attack of them
        # would make: wire.encode_normal), not through an Attack; its ends are this handler's.
        self.server.normal_closed(self, self, session.payload, self.start, time.time(),
                                  session.dialogue.name, transcript.turns,
                                  bytes(transcript.sent), jsonable(fields), notes)

    @staticmethod
    def _limit_notes(session: NormalSession) -> list[str]:
        notes = []
        if session.truncated:
            notes.append(f"read_limit of {session.read_limit} bytes reached")
        if session.transcript.sent_cut:
            notes.append(f"replies over read_limit of {session.read_limit} bytes not kept")
        if session.error:
            notes.append(session.error)
        return notes


class UdpServer:
    """Normal mode over UDP: one reply per datagram, one attack per peer exchange."""

    def __init__(self, server: Host) -> None:
        self.server = server
        self.sock = server.sock
        self.family = self.sock.family
        self.exchanges: dict[tuple[str, int], UdpPeer | UdpRelayPeer] = {}
        if self.family == socket.AF_INET6:
            self.sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
        else:
            self.sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)

    def start(self) -> None:
        self.server.loop.add_reader(self.sock.fileno(), self._readable)

    def stop(self) -> None:
        self._readable()  # what already arrived is still answered and recorded
        self.pause()

    def pause(self) -> None:
        self.server.loop.remove_reader(self.sock.fileno())

    def _readable(self) -> None:
        for _ in range(UDP_BATCH):
            try:
                data, ancdata, _flags, addr = self.sock.recvmsg(UDP_BUFFER, CMSG_SPACE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in RESOURCE_ERRNOS:
                    self.server.stats.accept_errors += 1
                    return
                if exc.errno == errno.ECONNREFUSED:
                    continue  # an ICMP error for an earlier reply
                raise
            self._datagram(data, ancdata, addr)

    def _datagram(
        self, data: bytes, ancdata: list[tuple[int, int, bytes]], addr: tuple[str, int]
    ) -> None:
        remote = split(addr)
        self.server.reflector.received(remote[0], len(data))
        local_addr, pktinfo = _local_address(self.family, ancdata)
        peer = self.exchanges.get(remote)
        if peer is None:
            if len(self.exchanges) >= self.server.config.max_connections:
                self.server.stats.refused_full += 1
                return
            conn = Connection("udp", local_addr, self.server.port.port, remote[0], remote[1])
            if self.server.port.mode in RELAY_MODES:
                peer = UdpRelayPeer(self, conn, addr, pktinfo)
            else:
                peer = UdpPeer(self, conn)
            self.exchanges[remote] = peer
            self.server.connection_opened(peer)
            if isinstance(peer, UdpRelayPeer):
                peer.open()
        if isinstance(peer, UdpRelayPeer):
            peer.datagram(data)  # recorded, PERREAD and relayed there
            return
        self.server.perread(peer.conn, "in", data)
        reply = peer.exchange.on_datagram(data)
        peer.touch()
        # A port without a template file stays silent unless a dialogue answers (reflector.py)
        if reply is not None and (self.server.has_template or peer.exchange.dialogue is not None):
            self.reply(reply, pktinfo, addr)

    def reply(self, data: bytes, pktinfo: tuple[int, int, bytes] | None, addr: Any) -> None:
        """Send one datagram to `addr` from the address it attacked (`pktinfo`), as far as the
        reflector guard lets us: cut, or not sent (counted there)."""
        allowed = self.server.reflector.allow(split(addr)[0], len(data))
        if allowed is None:
            return
        if allowed < len(data):
            data = data[:allowed]
        try:
            if pktinfo is not None:
                self.sock.sendmsg([data], [pktinfo], 0, addr)
            else:
                self.sock.sendto(data, addr)
        except OSError as exc:
            log.debug("port %d/udp: reply failed: %s", self.server.port.port, exc.strerror)

    def finished(self, peer: UdpPeer | UdpRelayPeer) -> None:
        key = (peer.conn.remote_addr, peer.conn.remote_port)
        self.exchanges.pop(key, None)


class UdpPeer(Finisher):
    def __init__(self, udp: UdpServer, conn: Connection) -> None:
        self.udp = udp
        self.conn = conn
        server = udp.server
        factory = server.catalog.udp_factory(server.port.port)
        ctx = server.catalog.context("udp", server.port.port, server.config.read_limit,
                                     conn.local_addr, conn.remote_addr, conn.remote_port)
        self.exchange = UdpExchange(server.template, read_limit=server.config.read_limit,
                                    dialogue=factory(ctx) if factory is not None else None,
                                    fallback=server.has_template)
        self.start = time.time()
        self.last = time.monotonic()
        self.timer = server.loop.call_later(server.config.read_timeout, self._tick)
        self.done = False

    def touch(self) -> None:
        self.last = time.monotonic()

    def _tick(self) -> None:
        server = self.udp.server
        waited = time.monotonic() - self.last
        timeout = server.config.read_timeout
        if waited < timeout and not self.done:
            self.timer = server.loop.call_later(timeout - waited, self._tick)
            return
        self.abort(Closed.IDLE)

    def abort(self, why: Closed) -> None:
        if self.done:
            return
        self.done = True
        self.timer.cancel()
        self.udp.finished(self)
        conn = self.conn
        attack = Attack(
            attack_connection=Connection(
                "udp", conn.local_addr, conn.local_port, conn.remote_addr, conn.remote_port,
                Payload(self.exchange.payload),
            ),
            mode=Mode.NORMAL,
            start_time=self.start,
            end_time=time.time(),
            dialogue=DialogueRecord(
                self.exchange.dialogue.name if self.exchange.dialogue is not None else "raw",
                tuple(self.exchange.transcript.turns),
                Payload(bytes(self.exchange.transcript.sent)), jsonable(self.exchange.record()),
            ),
        )
        if self.exchange.error:
            attack.add_note(self.exchange.error)
        if self.exchange.truncated:
            attack.add_note(f"read_limit of {self.exchange.read_limit} bytes reached")
        self.udp.server.connection_closed(self, attack)


def _local_address(
    family: int, ancdata: list[tuple[int, int, bytes]]
) -> tuple[str, tuple[int, int, bytes] | None]:
    """The datagram's destination (our) address from IPV6_PKTINFO / IP_PKTINFO, and the
    ancillary item to send the reply from that same address."""
    for level, kind, data in ancdata:
        is_v6 = level == socket.IPPROTO_IPV6 and kind == socket.IPV6_PKTINFO
        if family == socket.AF_INET6 and is_v6:
            if len(data) >= 20:
                address = socket.inet_ntop(socket.AF_INET6, data[:16])
                reply = (socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, data[:16] + bytes(4))
                return split((address, 0))[0], reply
        if family == socket.AF_INET and level == socket.IPPROTO_IP and kind == IP_PKTINFO:
            if len(data) >= 12:
                address = socket.inet_ntop(socket.AF_INET, data[8:12])
                # in_pktinfo: ifindex 0, spec_dst = our address, addr ignored on send.
                reply = (socket.IPPROTO_IP, IP_PKTINFO, bytes(4) + data[8:12] + bytes(4))
                return address, reply
    return "", None

