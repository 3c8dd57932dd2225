"""Our TFTP client (RFC 1350 read request, octet mode) over a stdlib UDP socket: the I/O
around tftpproto.RrqSession, with retransmission and the policy's deadline."""

from __future__ import annotations

import socket

from honeytrap.download.policy import FetchContext, Fetched
from honeytrap.download.request import DownloadRequest
from honeytrap.download.tftpproto import RrqSession
from honeytrap.errors import DownloadError

# RFC 1350 leaves timeouts to the implementation; tftp clients commonly wait a few seconds
# per packet and retransmit about five times before giving up.
RETRY_TIMEOUT = 2.0
MAX_RETRIES = 5
# Stray datagrams (other sources, duplicates) ignored in a row before we give up: a flood
# must not keep a worker busy until the deadline.
MAX_STRAY = 1000
# Larger than any TFTP packet (4 + 512 bytes; options could raise it): reads whole datagrams.
DATAGRAM = 65536


def fetch(request: DownloadRequest, ctx: FetchContext) -> Fetched:
    server_ip = ctx.addresses[0]
    family = socket.AF_INET6 if server_ip.version == 6 else socket.AF_INET
    session = RrqSession(request.path, ctx.policy.max_size)
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.connect((str(server_ip), request.port))  # only to learn our source address
        local = sock.getsockname()
    with ctx.deadline.new_socket(family, socket.SOCK_DGRAM) as sock:
        # Unconnected: the server answers from a new port (its transfer ID, RFC 1350 sec. 4).
        sock.bind((str(local[0]), 0))
        local = sock.getsockname()
        _transfer(sock, session, (str(server_ip), request.port), ctx)
        assert session.server is not None
        return Fetched(
            session.data, session.server[0], request.port, str(local[0]), int(local[1])
        )


def _transfer(
    sock: socket.socket, session: RrqSession, server: tuple[str, int], ctx: FetchContext
) -> None:
    sock.sendto(session.start(), server)
    retries = stray = 0
    while not session.done:
        try:
            packet, source = ctx.deadline.call(sock, socket.socket.recvfrom, sock, DATAGRAM,
                                               cap=RETRY_TIMEOUT)
        except TimeoutError:
            retries += 1
            if retries > MAX_RETRIES:
                raise DownloadError(f"TFTP server silent after {MAX_RETRIES} retries") from None
            sock.sendto(session.last_sent, session.server or server)
            continue
        peer = (str(source[0]), int(source[1]))
        if peer[0] != server[0]:
            stray += 1  # never answer strangers: no reflection through us
        else:
            block = session.block
            answer = session.receive(packet, peer)
            if answer is not None:
                sock.sendto(answer, peer)
            if session.block != block:
                retries = stray = 0
            else:
                stray += 1
        if stray > MAX_STRAY:
            raise DownloadError("too many stray TFTP datagrams")
