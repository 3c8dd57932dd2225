"""FTP's data connection (RFC 959 3.2) for the FTP dialogue, offered to the client only.

The dialogue (sans-IO) picks a passive port and says what to do with the data connection
(dialogue/base.py's DataChannel); this adapter listens on that port of the address the client
dialled, takes one connection *from the control connection's client only* (any other peer is
closed unread: the sensor is no FTP bounce, RFC 2577), sends the listing or reads the upload,
and closes. It never connects anywhere (PORT/EPRT get a reply, never a connection). Everything
ends after DATA_SECONDS, or with the control connection.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable

from honeytrap.addresses import split
from honeytrap.dialogue.base import DataChannel

log = logging.getLogger("honeytrap.datachannel")

# A passive listener (and its data connection) lasts at most this long: a client that asked for
# PASV connects at once; one that never does must not hold the port.
DATA_SECONDS = 30.0
READ_CHUNK = 64 * 1024


class FtpData:
    """One control connection's data connections, one at a time."""

    def __init__(self, local: str, client: str, room: Callable[[], int],
                 sink: Callable[[bytes], None], done: Callable[[bytes], None]) -> None:
        self.local = local
        self.client = client
        self.room = room  # bytes of upload still kept (the read_limit's share left)
        self.sink = sink  # uploaded bytes, for the record
        self.done = done  # bytes for the control connection once a transfer is over
        self.listener: socket.socket | None = None  # until its server is started
        self.server: asyncio.Server | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.reader: asyncio.StreamReader | None = None
        self.pending: DataChannel | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self.expiry: asyncio.TimerHandle | None = None

    def handle(self, channel: DataChannel) -> None:
        if channel.listen:
            self.close()
            self._listen(channel.listen)
        if channel.send is not None or channel.receive:
            self.pending = channel
            self._go()

    def _spawn(self, coro: object) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)  # type: ignore[arg-type]
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _listen(self, port: int) -> None:
        """Listening before the reply naming the port leaves (handle() runs before it is sent):
        the client's connect must meet this socket, never a port nobody serves, which the
        master would trap as a connection attempt of its own."""
        try:
            sock = listening_socket(self.local, port)
        except OSError as exc:  # the port is taken: the client's connection fails, as it may
            log.debug("FTP data port %d: %s", port, exc.strerror)
            return
        self.listener = sock
        self._spawn(self._serve(sock))
        self.expiry = asyncio.get_running_loop().call_later(DATA_SECONDS, self.close)

    async def _serve(self, sock: socket.socket) -> None:
        if self.listener is not sock:  # closed before it started
            return
        try:
            server = await asyncio.start_server(self._accepted, sock=sock)
        except OSError as exc:
            sock.close()
            log.debug("FTP data port: %s", exc.strerror)
            return
        if self.listener is not sock:  # closed while starting
            server.close()
            return
        self.listener = None
        self.server = server

    async def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = split(writer.get_extra_info("peername"))[0]
        if peer != self.client or self.writer is not None:
            writer.close()  # only the client that asked, and only once
            return
        self.reader, self.writer = reader, writer
        if self.server is not None:
            self.server.close()
        self._go()

    def _go(self) -> None:
        if self.writer is None or self.pending is None:
            return
        channel, self.pending = self.pending, None
        writer, reader = self.writer, self.reader
        self.writer = self.reader = None
        if channel.send is not None:
            self._spawn(self._download(writer, channel.send, channel.then))
        elif reader is not None:
            self._spawn(self._upload(reader, writer, channel.then))

    async def _download(self, writer: asyncio.StreamWriter, data: bytes, then: bytes) -> None:
        try:
            writer.write(data)
            await writer.drain()
            writer.close()
            await writer.wait_closed()
        except OSError:
            return  # the client went away: no 226
        self.done(then)

    async def _upload(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      then: bytes) -> None:
        try:
            while data := await reader.read(READ_CHUNK):
                self.sink(data[: max(self.room(), 0)])
        except OSError:
            return
        finally:
            writer.close()
        self.done(then)

    def close(self) -> None:
        if self.expiry is not None:
            self.expiry.cancel()
            self.expiry = None
        if self.server is not None:
            self.server.close()
            self.server = None
        if self.listener is not None:
            self.listener.close()
            self.listener = None
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def shutdown(self) -> None:
        self.close()
        for task in list(self.tasks):
            task.cancel()


def listening_socket(local: str, port: int) -> socket.socket:
    """A non-blocking TCP socket listening on local:port, backlog 1 (one data connection)."""
    family, kind, proto, _, address = socket.getaddrinfo(
        local, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(1)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock
