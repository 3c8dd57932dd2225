"""The benchmark's baselines: the least a honeypot port can do, in plain asyncio (the asyncio
floor) or, with `--loop uvloop`, the same code on uvloop's event loop (the uvloop floor).

On every connection: send the banner, read what the client sends (up to READ_LIMIT), and when the
client closes or half-closes, close and append one JSON line to the output file; with `--files
DIR`, also save what the client sent as one atomic file per connection in DIR, the way
honeytrap's SaveFile does (O_TMPFILE, write, linkat under a new name: the file floor, which pays
the one cost per attack the other floors never do). Listens on
`--port` .. `--port + --ports - 1`, dual-stack. Prints "ready" on stdout once every port is
listening (the benchmark's explicit ready signal); stops on SIGTERM.

Run by bench/run.py inside the sensor namespace, where honeytrap runs in its turn.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import itertools
import json
import os
import resource
import signal
import socket
import sys
import time
from typing import cast

# As honeytrap's read_limit in the benchmark's configuration (tests/daemon.py: 1 MiB).
READ_LIMIT = 1024 * 1024
# Descriptors: the largest idle test (15,000) plus room.
FD_LIMIT = 65536
# As honeytrap's listener (honeytrap/listener.py); the kernel caps it at somaxconn.
BACKLOG = 4096


# linkat(fd, "", dir, name, AT_EMPTY_PATH): names an O_TMPFILE file (as honeytrap/outfile.py).
AT_EMPTY_PATH = 0x1000
LINKAT = ctypes.CDLL(None, use_errno=True).linkat

# On SIGTERM, open connections are closed and recorded within this long.
STOP_TIMEOUT = 10.0

OPEN: set[Recorder] = set()
ALL_CLOSED: list[asyncio.Event] = []  # set once stopping and the last connection is recorded


class Recorder(asyncio.Protocol):
    def __init__(self, banner: bytes, out: int, files: int | None) -> None:
        self.banner = banner
        self.out = out
        self.files = files
        OPEN.add(self)
        self.data = bytearray()
        self.transport: asyncio.Transport | None = None
        self.start = 0.0
        self.peer: tuple[str, int] = ("", 0)
        self.local = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self.start = time.time()
        self.peer = transport.get_extra_info("peername")[:2]
        self.local = transport.get_extra_info("sockname")[1]
        transport.write(self.banner)

    def data_received(self, data: bytes) -> None:
        room = READ_LIMIT - len(self.data)
        self.data += data[:room]
        if len(self.data) >= READ_LIMIT and self.transport is not None:
            self.transport.close()

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        OPEN.discard(self)
        if not OPEN and ALL_CLOSED:
            ALL_CLOSED[0].set()
        record = {
            "start_time": self.start,
            "end_time": time.time(),
            "remote_ip": self.peer[0],
            "remote_port": self.peer[1],
            "local_port": self.local,
            "payload_hex": self.data.hex(),
        }
        os.write(self.out, (json.dumps(record, separators=(",", ":")) + "\n").encode())
        if self.files is not None:
            save(self.files, f"from_port_{self.local}-tcp_{next(NAMES)}", bytes(self.data))


NAMES = itertools.count()  # the files' names, unique in the run


def save(dir_fd: int, name: str, data: bytes) -> None:
    """One complete file under `name` in `dir_fd`, or none (SaveFile's atomic file)."""
    fd = os.open(".", os.O_WRONLY | os.O_TMPFILE | os.O_CLOEXEC, 0o644, dir_fd=dir_fd)
    try:
        os.write(fd, data)
        if LINKAT(fd, b"", dir_fd, name.encode(), AT_EMPTY_PATH) != 0:
            raise OSError(ctypes.get_errno(), f"linkat {name}")
    finally:
        os.close(fd)


async def serve(args: argparse.Namespace) -> None:
    banner = bytes.fromhex(args.banner_hex)
    out = os.open(args.out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    files = None if args.files is None else os.open(args.files, os.O_RDONLY | os.O_DIRECTORY)
    loop = asyncio.get_running_loop()
    servers = []
    for port in range(args.port, args.port + args.ports):
        sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(("::", port))
        sock.listen(BACKLOG)
        servers.append(
            await loop.create_server(lambda: Recorder(banner, out, files), sock=sock,
                                     backlog=BACKLOG)
        )
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    await stop.wait()
    for server in servers:
        server.close()
    ALL_CLOSED.append(asyncio.Event())
    for recorder in list(OPEN):
        if recorder.transport is not None:
            recorder.transport.close()
    if OPEN:
        try:
            await asyncio.wait_for(ALL_CLOSED[0].wait(), STOP_TIMEOUT)
        except TimeoutError:
            pass
    os.close(out)
    if files is not None:
        os.close(files)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ports", type=int, default=1)
    parser.add_argument("--banner-hex", default="0a")
    parser.add_argument("--out", required=True)
    parser.add_argument("--files", default=None, help="also save one atomic file per connection")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, max(FD_LIMIT, hard)))
    except (ValueError, OSError):  # no CAP_SYS_RESOURCE (a container): as far as allowed
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.loop == "uvloop":
        import uvloop

        uvloop.run(serve(args))
    else:
        asyncio.run(serve(args))


if __name__ == "__main__":
    main()
