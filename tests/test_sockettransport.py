"""sockettransport.py: normal-mode connections on the process's epoll, with real loopback sockets
on each loop the server processes may run on: the protocol's calls in asyncio's order, writes the
socket cannot take at once sent in full before the close, resets and failing protocols closing
with the exception, urgent data and a FIN read in order. Every wait ends on a future the
protocol sets."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from honeytrap import eventloop
from honeytrap.config import Config
from honeytrap.listener import bind_port
from honeytrap.sockettransport import Poller, SocketTransport

WAIT = 10.0  # seconds: only a broken transport waits this long


def run(body: Callable[[], Awaitable[None]]) -> None:
    for name in ("asyncio", "uvloop"):
        if eventloop.available(name):
            with asyncio.Runner(loop_factory=eventloop.factory(Config(event_loop=name))) as runner:
                runner.run(body())


class Recording(asyncio.Protocol):
    """Records its calls; `lost` is set by connection_lost."""

    def __init__(self, loop: asyncio.AbstractEventLoop, on_data: Callable[..., None] | None = None,
                 ) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.lost: asyncio.Future[Exception | None] = loop.create_future()
        self.transport: Any = None
        self.on_data = on_data

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.calls.append(("made", None))

    def data_received(self, data: bytes) -> None:
        self.calls.append(("data", data))
        if self.on_data is not None:
            self.on_data(self, data)

    def eof_received(self) -> bool:
        self.calls.append(("eof", None))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.calls.append(("lost", exc))
        self.lost.set_result(exc)


async def accepted(listener: socket.socket) -> tuple[int, tuple[Any, ...]]:
    """The next connection of a non-blocking listening socket, as DynamicServer takes it."""
    loop = asyncio.get_running_loop()
    ready = loop.create_future()
    loop.add_reader(listener.fileno(), lambda: ready.done() or ready.set_result(None))
    try:
        await asyncio.wait_for(ready, WAIT)
    finally:
        loop.remove_reader(listener.fileno())
    fd, addr = listener._accept()  # type: ignore[attr-defined]
    return fd, addr


def pair() -> tuple[socket.socket, socket.socket]:
    """A listening socket made as the master makes one, and a client connected to it."""
    listener = bind_port("tcp", 0, "127.0.0.1", socket.AF_INET)
    client = socket.create_connection(listener.getsockname())
    return listener, client


@contextlib.asynccontextmanager
async def connection() -> AsyncIterator[tuple[Poller, socket.socket, socket.socket, int]]:
    """A poller, a listening socket made as the master makes one, a client connected to it and
    the descriptor accepted for it; all closed at the end, also when the test fails."""
    poller = Poller(asyncio.get_running_loop())
    listener, client = pair()
    try:
        with listener, client:
            fd, _ = await accepted(listener)
            yield poller, listener, client, fd
    finally:
        poller.close()


def data_of(calls: list[tuple[str, Any]]) -> bytes:
    return b"".join(arg for name, arg in calls if name == "data")


def test_data_then_eof_then_lost_once_and_the_socket_closed() -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        async with connection() as (poller, listener, client, fd):
            protocol = Recording(loop)
            transport = poller.transport(fd, socket.AF_INET, protocol)
            assert protocol.calls == [("made", None)]
            assert transport.get_extra_info("peername") == client.getsockname()
            assert transport.get_extra_info("sockname") == listener.getsockname()
            # Inherited from the listening socket (listener.py), as the loops set it.
            sock = transport.get_extra_info("socket")
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            client.sendall(b"hello")
            client.shutdown(socket.SHUT_WR)
            assert await asyncio.wait_for(protocol.lost, WAIT) is None
            assert data_of(protocol.calls) == b"hello"
            assert [name for name, _ in protocol.calls if name != "data"] == [
                "made", "eof", "lost"]
            assert client.recv(10) == b""  # closed by the transport
            assert fd not in poller.transports

    run(body)


def test_what_the_socket_cannot_take_is_sent_before_the_close() -> None:
    reply = bytes(range(256)) * 40000  # ~10 MB: far over the socket buffers

    def answer(protocol: Recording, data: bytes) -> None:
        protocol.transport.write(reply)
        protocol.transport.close()
        assert protocol.transport.is_closing()
        assert not protocol.lost.done()  # connection_lost comes from the loop, later

    async def body() -> None:
        loop = asyncio.get_running_loop()
        async with connection() as (poller, listener, client, fd):
            protocol = Recording(loop, answer)
            poller.transport(fd, socket.AF_INET, protocol)
            client.sendall(b"go")
            received = bytearray()
            client.setblocking(False)
            while True:
                readable = loop.create_future()
                loop.add_reader(client.fileno(), lambda f=readable: f.done() or f.set_result(None))
                try:
                    await asyncio.wait_for(readable, WAIT)
                finally:
                    loop.remove_reader(client.fileno())
                chunk = client.recv(1 << 20)
                if not chunk:
                    break
                received += chunk
            assert received == reply
            assert await asyncio.wait_for(protocol.lost, WAIT) is None

    run(body)


def test_a_reset_closes_with_the_exception() -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        poller = Poller(loop)
        listener, client = pair()
        with listener:
            fd, _ = await accepted(listener)
            protocol = Recording(loop)
            poller.transport(fd, socket.AF_INET, protocol)
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            client.close()  # an RST
            exc = await asyncio.wait_for(protocol.lost, WAIT)
            assert isinstance(exc, ConnectionResetError)
            assert ("eof", None) not in protocol.calls
        poller.close()

    run(body)


def test_urgent_data_and_the_fin_are_read_in_order() -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        async with connection() as (poller, listener, client, fd):
            protocol = Recording(loop)
            client.sendall(b"ab")
            client.send(b"!", socket.MSG_OOB)  # inline (SO_OOBINLINE from the listener)
            client.sendall(b"cd")
            client.shutdown(socket.SHUT_WR)
            poller.transport(fd, socket.AF_INET, protocol)
            assert await asyncio.wait_for(protocol.lost, WAIT) is None
            assert data_of(protocol.calls) == b"ab!cd"

    run(body)


def test_a_failing_protocol_is_reported_and_closed() -> None:
    def fail(protocol: Recording, data: bytes) -> None:
        raise RuntimeError("a bug")

    async def body() -> None:
        loop = asyncio.get_running_loop()
        reported: list[dict[str, Any]] = []
        loop.set_exception_handler(lambda _loop, context: reported.append(context))
        async with connection() as (poller, listener, client, fd):
            protocol = Recording(loop, fail)
            transport = poller.transport(fd, socket.AF_INET, protocol)
            client.sendall(b"x")
            exc = await asyncio.wait_for(protocol.lost, WAIT)
            assert isinstance(exc, RuntimeError)
            assert [c["transport"] for c in reported] == [transport]
            assert client.recv(10) == b""

    run(body)


def test_writes_after_close_are_dropped() -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        async with connection() as (poller, listener, client, fd):
            protocol = Recording(loop)
            transport: SocketTransport = poller.transport(fd, socket.AF_INET, protocol)
            transport.write(b"one")
            transport.close()
            transport.write(b"two")
            transport.close()
            assert await asyncio.wait_for(protocol.lost, WAIT) is None
            assert client.recv(10) == b"one"
            assert client.recv(10) == b""
            assert [name for name, _ in protocol.calls] == ["made", "lost"]

    run(body)


def test_a_failing_connection_lost_is_reported_and_the_others_still_run() -> None:
    """Connections closed in one loop pass get connection_lost in one callback: one failing
    does not keep it from the others."""

    class Failing(Recording):
        def connection_lost(self, exc: Exception | None) -> None:
            super().connection_lost(exc)
            raise RuntimeError("a bug")

    async def body() -> None:
        loop = asyncio.get_running_loop()
        reported: list[dict[str, Any]] = []
        loop.set_exception_handler(lambda _loop, context: reported.append(context))
        poller = Poller(loop)
        listener, first_client = pair()
        second_client = socket.create_connection(listener.getsockname())
        with listener, first_client, second_client:
            first, second = Failing(loop), Recording(loop)
            transports = []
            for protocol in (first, second):
                fd, _ = await accepted(listener)
                transports.append(poller.transport(fd, socket.AF_INET, protocol))
            for transport in transports:
                transport.close()
            await asyncio.wait_for(asyncio.gather(first.lost, second.lost), WAIT)
            assert [c["transport"] for c in reported] == [transports[0]]
        poller.close()

    run(body)
