"""How a server process's accept and connection set-up cost, three ways.

    python bench/accept.py [--reps 5] [--count 20000]

Each mode serves the same minimal protocol (a banner, read until EOF, close) on a loopback port
to bench/loadgen.py's burst (200 bytes, half-close, 64 in flight), in a fresh interpreter per
rep, the modes interleaved (A B C, C B A, ...); printed: the server's CPU per connection (user
and system time from getrusage), medians and all reps.
- "direct" is how normal mode serves a connection now (dynamicserver.py): a reader on the
  listening socket, socket._accept() in batches, then the socket served on the process's epoll
  with no loop transport (sockettransport.py).
- "transport" was the way before it: the same accept, the descriptor handed to uvloop's
  connect_accepted_socket, whose coroutine is driven by hand (relay modes still take a loop
  transport, on asyncio's loop).
- "create_server" is uvloop's own: libuv accepts and makes the transport in C. It is not used
  (ACCEPT_IN_C in dynamicserver.py says why).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import resource
import socket
import statistics
import subprocess
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))

from honeytrap.listener import LISTEN_BACKLOG  # noqa: E402
from honeytrap.sockettransport import Poller  # noqa: E402

MODES = ("transport", "create_server", "direct")
# As dynamicserver.ACCEPT_BATCH: accepted per wake-up of the listening socket at most.
ACCEPT_BATCH = 64
CONCURRENCY = 64
LOADGEN_DEADLINE = 120.0


class UvAccepted:
    """(How dynamicserver.py handed a connection to uvloop before sockettransport.py.) An
    accepted connection's descriptor as uvloop's connect_accepted_socket takes it (built
    like a socket.socket: family, type, proto, fileno): it reads `type` and `family`, opens its
    own handle on `fileno()`, keeps the object and, once libuv closed the descriptor, calls
    `close()` on it (a socket.socket it would `detach()`). A socket.socket's Python __init__ and
    detach() were ~2% of a server process's CPU under load (py-spy); nothing else of a socket is
    used. close() does nothing: the descriptor is libuv's from the handle's opening, and closing
    it again here could close a descriptor reused meanwhile. (asyncio's loop uses the socket
    itself: AcceptedSocket.) As uvloop reads `fileno()` only while connect_accepted_socket sets
    the handle up (before its first await), one object serves every connection of a listening
    socket (`reuse`): not one kept per open connection (~50 bytes each, bench/idle.py)."""

    __slots__ = ("family", "_fd")
    type = socket.SOCK_STREAM

    def __init__(self, family: int, type: int, proto: int, fileno: int) -> None:  # noqa: A002
        self.family = family
        self._fd = fileno

    def fileno(self) -> int:
        return self._fd

    def reuse(self, family: int, type: int, proto: int, fileno: int) -> UvAccepted:  # noqa: A002
        """This object for the next accepted descriptor (the constructor's arguments)."""
        self._fd = fileno
        return self

    def close(self) -> None:
        pass


class Minimal(asyncio.Protocol):
    """Banner, read until EOF, close; counts the connections that ended."""

    done = 0
    wanted = 0
    finished: asyncio.Event | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.write(b"\n")  # type: ignore[attr-defined]  # uvloop's is a write transport

    def eof_received(self) -> bool:
        return False  # close

    def connection_lost(self, exc: Exception | None) -> None:
        Minimal.done += 1
        if Minimal.done >= Minimal.wanted and Minimal.finished is not None:
            Minimal.finished.set()


def itself(protocol: Minimal) -> Callable[[], Minimal]:
    return lambda: protocol


def accept_batches(loop: asyncio.AbstractEventLoop, sock: socket.socket,
                   serve: Callable[[int], None]) -> None:
    """dynamicserver.py's accept (its budget, records and limits left out): a reader on the
    listening socket taking up to ACCEPT_BATCH descriptors a wake-up, each handed to `serve`."""

    def batch() -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                fd, _addr = sock._accept()  # type: ignore[attr-defined]  # as dynamicserver.py
            except BlockingIOError:
                return
            serve(fd)

    loop.add_reader(sock.fileno(), batch)


def accept_in_python(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    """DynamicServer's way until session 9: our accept, then a uvloop transport per
    connection."""
    accepted = UvAccepted(sock.family, socket.SOCK_STREAM, 0, -1).reuse

    def set_up(setup: Coroutine[Any, Any, object], _: object = None) -> None:
        try:
            waiter = setup.send(None)
        except StopIteration:
            return
        waiter.add_done_callback(functools.partial(set_up, setup))

    def serve(fd: int) -> None:
        transport_socket: Any = accepted(sock.family, socket.SOCK_STREAM, 0, fd)
        set_up(loop.connect_accepted_socket(itself(Minimal()), transport_socket))

    accept_batches(loop, sock, serve)


def accept_direct(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    """Normal mode's way: the same accept, the connection served on the process's epoll
    without a loop transport (sockettransport.py)."""
    poller = Poller(loop)

    def serve(fd: int) -> None:
        poller.transport(fd, sock.family, Minimal())

    accept_batches(loop, sock, serve)


async def serve(mode: str, count: int) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    Minimal.wanted, Minimal.finished = count, asyncio.Event()
    sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.bind(("::", 0))
    sock.listen(LISTEN_BACKLOG)
    if mode == "transport":
        accept_in_python(loop, sock)
    elif mode == "direct":
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as listener.bind_port
        accept_direct(loop, sock)
    else:
        await loop.create_server(Minimal, sock=sock, backlog=LISTEN_BACKLOG)
    before = resource.getrusage(resource.RUSAGE_SELF)
    client = await asyncio.create_subprocess_exec(
        sys.executable, str(BENCH / "loadgen.py"), "burst", "--address", "127.0.0.1",
        "--port", str(sock.getsockname()[1]), "--count", str(count),
        "--concurrency", str(CONCURRENCY), "--deadline", str(LOADGEN_DEADLINE),
        stdout=subprocess.DEVNULL)
    await asyncio.wait_for(Minimal.finished.wait(), LOADGEN_DEADLINE + 30)
    after = resource.getrusage(resource.RUSAGE_SELF)
    await client.wait()
    user = (after.ru_utime - before.ru_utime) * 1e6 / count
    system = (after.ru_stime - before.ru_stime) * 1e6 / count
    return {"user_us": user, "sys_us": system, "cpu_us": user + system}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--one", choices=MODES, help=argparse.SUPPRESS)  # a rep, in a child
    args = parser.parse_args()
    import uvloop

    if args.one:
        print(json.dumps(uvloop.run(serve(args.one, args.count))))
        return 0
    results: dict[str, list[dict[str, float]]] = {mode: [] for mode in MODES}
    for rep in range(args.reps):
        for mode in MODES if rep % 2 == 0 else MODES[::-1]:
            out = subprocess.run(
                [sys.executable, __file__, "--one", mode, "--count", str(args.count)],
                check=True, capture_output=True, text=True,
                timeout=LOADGEN_DEADLINE + 60).stdout
            results[mode].append(json.loads(out))
    for mode in MODES:
        figures = {key: [r[key] for r in results[mode]] for key in ("cpu_us", "user_us", "sys_us")}
        print(f"{mode:14} " + "  ".join(
            f"{key} {statistics.median(v):.1f} ({', '.join(f'{x:.1f}' for x in v)})"
            for key, v in figures.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
