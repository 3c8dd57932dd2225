"""Binding a port for a dynamic server (done by the master, as root, before the socket goes to
a server process, forked or running).

Binding in the master, not the child, means the port is listening the moment bind() returns:
the master can let the held SYN through at once, and a port already bound by a real service
(EADDRINUSE) costs no fork at all.
"""

from __future__ import annotations

import _socket
import errno
import socket
import struct

# The kernel caps this at net.core.somaxconn; asking high keeps bursts queued, not refused.
LISTEN_BACKLOG = 4096


# The start of struct tcp_info (linux/tcp.h) up to tcpi_unacked, which for a listening socket is
# the length of its accept queue (tcp_get_info: "listeners aliased fields").
_TCP_INFO_UNACKED = struct.Struct("=24xI")


def ready_to_accept(sock: socket.socket) -> int:
    """Connections waiting in a listening TCP socket's accept queue (0 if the kernel does not
    say): the server accepts that many and no more, rather than until accept() fails, which on a
    sweep (one connection per wake-up) was a failed accept(), an exception, per connection."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_UNACKED.size)
    except OSError:
        return 0
    if len(info) < _TCP_INFO_UNACKED.size:
        return 0
    return int(_TCP_INFO_UNACKED.unpack(info)[0])


class PortInUse(Exception):
    """The port is served by someone else (a real service, or our own draining server)."""


def _new(family: int, protocol: str) -> socket.socket:
    kind = socket.SOCK_STREAM if protocol == "tcp" else socket.SOCK_DGRAM
    # Non-blocking from the start: one syscall less per port than setblocking() (a sweep binds
    # thousands a second).
    sock = socket.socket(family, kind | socket.SOCK_NONBLOCK)
    if protocol == "tcp":
        # TIME_WAIT leftovers of an earlier server on this port must not block the next one.
        # (Never for UDP: there SO_REUSEADDR would let us share a real service's port.)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # TCP urgent data stays in the stream (the record is byte-exact: telnet's and FTP's
        # ABOR send their IAC/DM byte urgent, RFC 854 and RFC 959 4.1.3). Every connection
        # accepted on this socket inherits it (Linux copies the flags to the new socket when
        # the handshake completes, so also those queued before the server process takes the
        # port): one setsockopt per port, none per connection.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_OOBINLINE, 1)
        # Replies go out as the dialogue writes them, as the loops' transports sent them (they
        # set TCP_NODELAY per connection): inherited the same way, so normal mode's
        # connections, served without a loop transport (sockettransport.py), need no call.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def bind_port(protocol: str, port: int, bind_address: str, family_hint: int) -> socket.socket:
    """A bound (and, for TCP, listening) non-blocking socket. Without bind_address: dual-stack
    [::] so IPv4 and IPv6 attackers reach one server; IPv4 only where IPv6 is off, or the
    attempt's family only where the other family's port is taken. Raises PortInUse."""
    candidates: list[tuple[int, str, int | None]]
    if bind_address:
        wanted = socket.AF_INET6 if ":" in bind_address else socket.AF_INET
        candidates = [(wanted, bind_address, None)]
    else:
        candidates = [
            (socket.AF_INET6, "::", 0),
            (family_hint, "::" if family_hint == socket.AF_INET6 else "0.0.0.0", 1),
        ]
    in_use = False
    for family, address, v6only in candidates:
        try:
            sock = _new(family, protocol)
        except OSError as exc:
            if exc.errno in (errno.EAFNOSUPPORT, errno.EPROTONOSUPPORT):
                continue
            raise
        try:
            if family == socket.AF_INET6 and v6only is not None:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, v6only)
            sock.bind((address, port))
            if protocol == "tcp":
                sock.listen(LISTEN_BACKLOG)
        except OSError as exc:
            sock.close()
            if exc.errno == errno.EADDRINUSE:
                in_use = True
                continue
            if exc.errno in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL):
                continue
            raise
        return sock
    if in_use:
        raise PortInUse(f"{port}/{protocol}")
    raise OSError(errno.EADDRNOTAVAIL, f"cannot bind {port}/{protocol}")


def raw_family(sock: socket.socket) -> int:
    """A socket's family as the plain integer of the C socket: socket.socket's property builds
    an AddressFamily enum on each read (~1.5 us; a sweep hands over thousands of ports)."""
    return int(_RAW_FAMILY.__get__(sock))


_RAW_FAMILY = _socket.socket.family


class AcceptedSocket(socket.socket):
    """An accepted connection's socket as the loops take it (connect_accepted_socket): its
    `family` and `type` are the plain integers of the C socket, not socket.socket's properties,
    which build an AddressFamily and a SocketKind enum on every read (uvloop reads both once per
    connection: ~1 us)."""

    __slots__ = ()
    family = _socket.socket.family  # type: ignore[assignment]
    type = _socket.socket.type  # type: ignore[assignment]
