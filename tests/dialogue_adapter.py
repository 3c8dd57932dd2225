"""A tiny asyncio adapter for unit-level tests of dialogues with real clients over loopback:
start() at once, receive() per chunk, idle() per read timeout, the record kept when the
connection ends. The daemon's own adapter is tested end to end in the daemon tests."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from honeytrap.dialogue.base import Dialogue


@contextmanager
def serve(factory: Callable[[], Dialogue], read_timeout: float = 0.3, max_idle: int = 20,
          sock: socket.socket | None = None,
          ) -> Iterator[tuple[int, list[dict[str, Any]], threading.Event]]:
    """Serve `factory`'s dialogues on a loopback port (or on `sock`, a bound socket, e.g. one
    made in a test namespace) in a thread; yields (port, records, ended): `records` gets each
    connection's record, `ended` is set after each one."""
    records: list[dict[str, Any]] = []
    ended = threading.Event()
    ready = threading.Event()
    port: list[int] = []
    loop = asyncio.new_event_loop()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        dialogue = factory()
        try:
            writer.write(dialogue.start())
            idles = 0
            while idles < max_idle:
                try:
                    data = await asyncio.wait_for(reader.read(65536), read_timeout)
                except TimeoutError:
                    idles += 1
                    reply = dialogue.idle()
                else:
                    if not data:
                        break
                    reply = dialogue.receive(data)
                writer.write(reply.send)
                await writer.drain()
                if reply.close:
                    break
        except (ConnectionError, OSError):
            pass
        finally:
            records.append({"name": dialogue.name, **dialogue.record()})
            writer.close()
            ended.set()

    async def main(stop: asyncio.Event) -> None:
        if sock is not None:
            server = await asyncio.start_server(handle, sock=sock)
        else:
            server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port.append(server.sockets[0].getsockname()[1])
        ready.set()
        await stop.wait()
        server.close()
        await server.wait_closed()

    stop_box: list[asyncio.Event] = []

    def run() -> None:
        asyncio.set_event_loop(loop)
        stop = asyncio.Event()
        stop_box.append(stop)
        loop.run_until_complete(main(stop))
        loop.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(10), "test adapter did not start"
    try:
        yield port[0], records, ended
    finally:
        loop.call_soon_threadsafe(stop_box[0].set)
        thread.join(10)
