"""Hostile download servers, for the downloaders' deadline and the background pool's bounds.

Run in the attacker namespace by `download_servers.start(lab, lab.attacker, "hostile", <kind>,
<ip>)` (or as a script: `hostile_servers.py <kind> <ip>`): it binds a port chosen by
the kernel, prints `ready <port>` (the explicit ready signal), and serves any number of
clients at once on one asyncio loop (a hundred dripping downloads cost it nothing):

    status     HTTP: the status line, one byte every DRIP seconds, never finished
    headers    HTTP: a status line, then header bytes one every DRIP seconds, never finished
    body       HTTP: a 200 with a Content-Length of BODY_LENGTH, the body one byte per DRIP
    endless    HTTP: a 200 without a length, then CHUNK bytes every DRIP seconds, for ever
    chunks     HTTP: chunked encoding, a chunk-size line dripped a byte at a time
    short      HTTP: a Content-Length of 1000, 100 bytes, then the end of the connection
    tls        TLS: a ServerHello record header, then its body a byte at a time
    ftp        FTP: the greeting dripped a byte at a time, never finished
    ftpdata    FTP: a quick login, passive mode, and the file dripped on the data connection
    tftp       TFTP (UDP): one 512-byte block every TFTP_DRIP seconds from a new port, for ever

Every client that connects is counted on stdout, `conn <n>`: a test can wait for that many
downloads to have started (an explicit signal again).
"""

from __future__ import annotations

import asyncio
import socket
import struct
import sys

DRIP = 0.5  # seconds between dripped bytes (the 1 byte every 0.5 s)
BODY_LENGTH = 1_000_000
CHUNK = 1024
# TFTP: under the client's RETRY_TIMEOUT (2 s), so no block is ever "late" and only the
# deadline can end the transfer.
TFTP_DRIP = 1.0
_connections = 0


def _ready(port: int) -> None:
    sys.stdout.write(f"ready {port}\n")
    sys.stdout.flush()


def _connected() -> None:
    global _connections
    _connections += 1
    sys.stdout.write(f"conn {_connections}\n")
    sys.stdout.flush()


async def _drip(writer: asyncio.StreamWriter, data: bytes) -> None:
    for byte in data:
        writer.write(bytes([byte]))
        await writer.drain()
        await asyncio.sleep(DRIP)


async def _forever(writer: asyncio.StreamWriter, pattern: bytes) -> None:
    while True:
        await _drip(writer, pattern)


async def _request(reader: asyncio.StreamReader) -> None:
    """Read the client's request head (and ignore it)."""
    await reader.readuntil(b"\r\n\r\n")


async def _http(kind: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await _request(reader)
    if kind == "status":
        await _forever(writer, b"HTTP/1.1 200 OK but slowly")
    elif kind == "headers":
        writer.write(b"HTTP/1.1 200 OK\r\n")
        await _forever(writer, b"X-Slow: yes\r\n")
    elif kind == "body":
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % BODY_LENGTH)
        await _forever(writer, b"x")
    elif kind == "endless":
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
        while True:
            writer.write(b"y" * CHUNK)
            await writer.drain()
            await asyncio.sleep(DRIP)
    elif kind == "short":
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"s" * 100)
        await writer.drain()
    elif kind == "chunks":
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        await _forever(writer, b"0000000")


async def _tls(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read(1)  # the ClientHello has begun
    # A handshake record of 16 KiB announced; its body never completes.
    writer.write(b"\x16\x03\x03\x40\x00")
    await _forever(writer, b"\x02")


async def _ftp_greeting(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await _forever(writer, b"220-slow ")


async def _ftp_data(
    ip: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """Just enough FTP (RFC 959, EPSV of RFC 2428) to reach RETR, then drip the file."""
    data_ready: asyncio.Future[asyncio.StreamWriter] = asyncio.get_running_loop().create_future()

    async def data_client(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        if not data_ready.done():
            data_ready.set_result(w)

    data_server = await asyncio.start_server(data_client, ip, 0)
    port = data_server.sockets[0].getsockname()[1]
    writer.write(b"220 hostile\r\n")
    try:
        while line := await reader.readline():
            verb = line.split(b" ", 1)[0].strip().upper()
            if verb == b"USER":
                writer.write(b"331 pass\r\n")
            elif verb == b"PASS":
                writer.write(b"230 in\r\n")
            elif verb == b"TYPE":
                writer.write(b"200 binary\r\n")
            elif verb in (b"PORT", b"EPRT"):
                writer.write(b"502 passive only\r\n")
            elif verb == b"EPSV":
                writer.write(b"229 Entering Extended Passive Mode (|||%d|)\r\n" % port)
            elif verb == b"PASV":
                writer.write(b"502 EPSV only\r\n")
            elif verb == b"RETR":
                writer.write(b"150 here it comes\r\n")
                await writer.drain()
                data = await data_ready
                await _forever(data, b"z")
            else:
                writer.write(b"502 no\r\n")
            await writer.drain()
    finally:
        data_server.close()


class _Tftp(asyncio.DatagramProtocol):
    """Answers each read request from a fresh port (its transfer ID) with endless blocks."""

    def __init__(self, ip: str) -> None:
        self.ip = ip

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if data[:2] == b"\x00\x01":  # RRQ
            _connected()
            asyncio.get_running_loop().create_task(self.transfer(addr))

    async def transfer(self, client: tuple[str, int]) -> None:
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in self.ip else socket.AF_INET
        transport, _ = await loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, local_addr=(self.ip, 0), family=family
        )
        block = 1
        try:
            while True:
                transport.sendto(struct.pack("!HH", 3, block & 0xFFFF) + b"t" * 512, client)
                block += 1
                await asyncio.sleep(TFTP_DRIP)
        finally:
            transport.close()


async def serve(kind: str, ip: str) -> None:
    loop = asyncio.get_running_loop()
    if kind == "tftp":
        family = socket.AF_INET6 if ":" in ip else socket.AF_INET
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Tftp(ip), local_addr=(ip, 0), family=family
        )
        _ready(transport.get_extra_info("sockname")[1])
        await asyncio.Event().wait()

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _connected()
        try:
            if kind == "tls":
                await _tls(reader, writer)
            elif kind == "ftp":
                await _ftp_greeting(reader, writer)
            elif kind == "ftpdata":
                await _ftp_data(ip, reader, writer)
            else:
                await _http(kind, reader, writer)
        except (OSError, asyncio.IncompleteReadError):
            pass  # the client gave up: what we want it to do
        finally:
            writer.close()

    server = await asyncio.start_server(client, ip, 0, backlog=1024)
    _ready(server.sockets[0].getsockname()[1])
    await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1], sys.argv[2]))
