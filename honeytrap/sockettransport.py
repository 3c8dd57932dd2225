"""Normal-mode TCP connections served straight on their sockets, without an event loop transport
each: one epoll per server process for all of them (Poller, a single reader on the loop), and per
connection the part of asyncio's Transport a NormalConnection uses (SocketTransport: write,
close, is_closing, get_extra_info), calling its protocol as an asyncio transport does
(connection_made, data_received, eof_received, then connection_lost once, from the loop).

Why: uvloop's connect_accepted_socket makes each connection a coroutine, a future, a libuv handle
and a C transport, and asks the kernel for TCP_NODELAY, O_NONBLOCK (FIONBIO), its own address and
the peer's (four system calls; the peer's address came with accept, TCP_NODELAY is inherited
from the listening socket, listener.py, and every call here says MSG_DONTWAIT). Measured: a
minimal server (bench/accept.py, mode "direct") spends 14.5 us of user time per connection on
this path against 21.2 on connect_accepted_socket (medians of 3 interleaved reps, a loaded
machine); the daemon's servers 95 against 126 us of CPU per connection on one port (5
interleaved reps, load average 7-9). Mirror and proxy connections (relay.py) keep the loop's
transports: they change protocol and pause reading mid-stream.

The socket stays in blocking mode: each send and recv is non-blocking by its MSG_DONTWAIT flag.
What the socket does not take at once waits in the transport's buffer (without bound, as in
asyncio's transports: what a dialogue sends is its own to bound) and goes when the socket is
writable; close() sends it first. A socket error or a reset closes at once, connection_lost
getting the exception. The descriptor is closed before connection_lost (closing removes it from
the epoll); an event already read for a reused descriptor number finds the new connection's
socket with nothing to read (EAGAIN), or no transport, and is dropped.
"""

from __future__ import annotations

import _socket
import asyncio
import select
import socket
from typing import Any

# Bytes read at a time (as asyncio's selector transports; below malloc's mmap threshold).
READ_SIZE = 65536
# Events taken from the epoll per wake-up of the loop: more ready ones keep it readable (level
# triggered), so they come in the loop's next pass, after its other callbacks and timers.
POLL_BATCH = 256

_READ = select.EPOLLIN | select.EPOLLRDHUP
_WRITE = select.EPOLLOUT
_RDHUP = select.EPOLLRDHUP
_FAILED = select.EPOLLERR | select.EPOLLHUP
_READABLE = select.EPOLLIN | _FAILED | select.EPOLLRDHUP
_DONTWAIT = socket.MSG_DONTWAIT


class Poller:
    """The epoll of a server process's normal-mode TCP connections, read by one loop reader."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.epoll = select.epoll()
        self.transports: dict[int, SocketTransport] = {}
        # Connections closed since the loop's last pass, their connection_lost due (with its
        # exception): one loop callback for them all, not a handle each.
        self._lost: list[tuple[SocketTransport, Exception | None]] = []
        loop.add_reader(self.epoll.fileno(), self._ready)

    def transport(self, fd: int, family: int, protocol: asyncio.Protocol) -> SocketTransport:
        """Serve an accepted descriptor (it is the transport's from now on) with `protocol`,
        calling its connection_made now."""
        transport = SocketTransport(self, _socket.socket(family, socket.SOCK_STREAM, 0, fd),
                                    protocol)
        try:
            protocol.connection_made(transport)  # type: ignore[arg-type]  # the part it uses
        except Exception as exc:  # noqa: BLE001 - as a loop's transport: logged, closed
            transport._failed(exc, "protocol.connection_made() failed")
        return transport

    def close(self) -> None:
        self.loop.remove_reader(self.epoll.fileno())
        self.epoll.close()

    def lost(self, transport: SocketTransport, exc: Exception | None) -> None:
        """Call transport's connection_lost(exc) from the loop, soon."""
        if not self._lost:
            self.loop.call_soon(self._call_lost)
        self._lost.append((transport, exc))

    def _call_lost(self) -> None:
        lost, self._lost = self._lost, []
        for transport, exc in lost:
            try:
                transport._connection_lost(exc)
            except Exception as failure:  # noqa: BLE001 - as the loop does with a callback
                self.loop.call_exception_handler(
                    {"message": "protocol.connection_lost() failed", "exception": failure,
                     "transport": transport})

    def _ready(self) -> None:
        transports = self.transports
        for fd, events in self.epoll.poll(0, POLL_BATCH):
            transport = transports.get(fd)
            if transport is not None:
                transport._ready(events)


class SocketTransport:
    """One connection's socket, as the asyncio Transport NormalConnection sees (normal.py)."""

    # One per open connection, most of them idle: slots only (bench/idle.py).
    __slots__ = ("_poller", "_sock", "_fd", "_protocol", "_events", "_buffer", "_closing",
                 "_done")

    def __init__(self, poller: Poller, sock: _socket.socket, protocol: asyncio.Protocol) -> None:
        self._poller = poller
        self._sock = sock
        self._fd = sock.fileno()
        self._protocol: asyncio.Protocol | None = protocol
        self._events = _READ
        self._buffer: bytearray | None = None  # what the socket did not take yet
        self._closing = False
        self._done = False  # the descriptor is closed, connection_lost scheduled
        poller.transports[self._fd] = self
        poller.epoll.register(self._fd, _READ)

    # --- the Transport API (the part normal.py uses) ---------------------------------------

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "socket":
            return self._sock
        try:
            if name == "sockname":
                return self._sock.getsockname()
            if name == "peername":
                return self._sock.getpeername()
        except OSError:
            return default
        return default

    def is_closing(self) -> bool:
        return self._closing

    def write(self, data: bytes) -> None:
        if self._closing or not data:
            return
        if self._buffer is not None:
            self._buffer += data
            return
        try:
            sent = self._sock.send(data, _DONTWAIT)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            self._lose(exc)
            return
        if sent < len(data):
            self._buffer = bytearray(memoryview(data)[sent:])
            self._want(_READ | _WRITE)

    def close(self) -> None:
        """Send what is buffered, then close (connection_lost(None) from the loop)."""
        if self._closing:
            return
        self._closing = True
        if self._buffer:
            self._want(_WRITE)  # nothing more is read
        else:
            self._lose(None)

    def abort(self) -> None:
        """Close now, dropping what is buffered."""
        self._closing = True
        self._lose(None)

    # --- the poller's side -----------------------------------------------------------------

    def _ready(self, events: int) -> None:
        if self._buffer is not None and events & (_WRITE | _FAILED):
            self._write_ready()
        if events & _READABLE and not self._closing:
            self._read_ready(events)

    def _read_ready(self, events: int) -> None:
        sock = self._sock
        while True:
            try:
                data = sock.recv(READ_SIZE, _DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._lose(exc)
                return
            protocol = self._protocol
            assert protocol is not None
            try:
                if not data:
                    # A normal connection does not stay half open: eof_received's False.
                    protocol.eof_received()
                    self.close()
                    return
                protocol.data_received(data)
            except Exception as exc:  # noqa: BLE001 - as a loop's transport: logged, closed
                self._failed(exc, "protocol callback failed")
                return
            # The peer's FIN is in (EPOLLRDHUP): the end of the stream, or what is left before
            # it (a read stops at urgent data), is read now, not in the loop's next pass.
            if self._closing or not events & _RDHUP:
                return

    def _write_ready(self) -> None:
        buffer = self._buffer
        assert buffer is not None
        try:
            del buffer[: self._sock.send(buffer, _DONTWAIT)]
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._lose(exc)
            return
        if buffer:
            return
        self._buffer = None
        if self._closing:
            self._lose(None)
        else:
            self._want(_READ)

    def _want(self, events: int) -> None:
        if events != self._events and not self._done:
            self._events = events
            self._poller.epoll.modify(self._fd, events)

    def _failed(self, exc: Exception, message: str) -> None:
        self._poller.loop.call_exception_handler(
            {"message": message, "exception": exc, "transport": self, "protocol": self._protocol})
        self._lose(exc)

    def _lose(self, exc: Exception | None) -> None:
        """Close the descriptor now; connection_lost(exc) from the loop (never from inside the
        protocol's own call to write or close, as asyncio's transports)."""
        if self._done:
            return
        self._done = True
        self._closing = True
        self._buffer = None
        self._poller.transports.pop(self._fd, None)
        self._sock.close()  # out of the epoll with it
        self._poller.lost(self, exc)

    def _connection_lost(self, exc: Exception | None) -> None:
        protocol, self._protocol = self._protocol, None  # no cycle left with the protocol
        if protocol is not None:
            protocol.connection_lost(exc)
