"""FTP's passive data connection (honeytrap/datachannel.py) on loopback: the port listens before
the reply naming it can leave, it serves the control connection's client only, and the
control connection hears of each finished transfer."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

from honeytrap.datachannel import FtpData
from honeytrap.dialogue.base import DataChannel


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def until(condition: Callable[[], bool], limit: float = 5.0) -> None:
    """Polls the loop (bounded) until condition holds: the transfers run as tasks of their own."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while not condition():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.001)


def channel(uploaded: bytearray, done: list[bytes]) -> FtpData:
    return FtpData("127.0.0.1", "127.0.0.1", room=lambda: 1 << 20, sink=uploaded.extend,
                   done=done.append)


def test_the_port_listens_when_handle_returns() -> None:
    """The 227 reply is written right after handle(): a client that connects before the loop
    runs again must find the port listening (else the master would trap it as unserved)."""

    async def main() -> None:
        data = channel(bytearray(), [])
        port = free_port()
        data.handle(DataChannel(listen=port))
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass  # no await between handle() and the connect: the loop has not run
        data.shutdown()

    asyncio.run(main())


def test_a_listing_then_an_upload_each_end_with_their_reply() -> None:
    async def main() -> None:
        uploaded, done = bytearray(), list[bytes]()
        data = channel(uploaded, done)
        port = free_port()
        data.handle(DataChannel(listen=port))
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        data.handle(DataChannel(send=b"welcome.msg\r\n", then=b"226 done\r\n"))
        assert await asyncio.wait_for(reader.read(), 5) == b"welcome.msg\r\n"
        writer.close()
        await until(lambda: len(done) == 1)  # the transfer's own task ends it
        assert done == [b"226 done\r\n"]
        port = free_port()
        data.handle(DataChannel(listen=port))
        data.handle(DataChannel(receive=True, then=b"226 stored\r\n"))  # STOR before the connect
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"#!/bin/sh\n")
        writer.write_eof()
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed once the upload is read
        writer.close()
        await until(lambda: len(done) == 2)
        assert done[1:] == [b"226 stored\r\n"] and bytes(uploaded) == b"#!/bin/sh\n"
        data.shutdown()

    asyncio.run(main())


def test_closed_before_its_server_started_leaves_no_socket() -> None:
    async def main() -> None:
        data = channel(bytearray(), [])
        port = free_port()
        data.handle(DataChannel(listen=port))
        data.close()  # before the task that starts the server has run
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert data.server is None and data.listener is None
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", port))  # free again
        data.shutdown()

    asyncio.run(main())
