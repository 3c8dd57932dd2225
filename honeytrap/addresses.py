"""Socket address helpers shared by the servers and monitors."""

from __future__ import annotations

import ipaddress
from typing import Any

# Our own addresses seen on accepted connections, normalized once: every connection's record
# then shares one string per local address instead of holding a copy (~60 bytes per open
# connection). Bounded: a sensor answering for whole networks (ip_nonlocal) has many.
LOCAL_CACHE_MAX = 256
_local: dict[str, str] = {}


def normalize(address: str) -> str:
    """An address as the kernel gives it (inet_ntop text): an IPv4 peer of a dual-stack socket
    shows as ::ffff:a.b.c.d, recorded as a.b.c.d.
    (Called for every connection: the kernel's own common forms skip the parse.)"""
    if address.startswith("::ffff:") and address.count(".") == 3:
        return address[7:]
    if "%" not in address and (":" in address) != ("." in address):
        return address  # plain IPv4 or hex-only IPv6 from inet_ntop is already canonical
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def split(sockaddr: Any) -> tuple[str, int]:
    """(address, port) of a socket address tuple, normalized."""
    return normalize(str(sockaddr[0])), int(sockaddr[1])


def split_local(sockaddr: Any) -> tuple[str, int]:
    """split() for our side of a connection: the address string shared (see LOCAL_CACHE_MAX)."""
    raw = str(sockaddr[0])
    address = _local.get(raw)
    if address is None:
        address = normalize(raw)
        if len(_local) < LOCAL_CACHE_MAX:
            _local[raw] = address
    return address, int(sockaddr[1])


def bracket(address: str) -> str:
    """IPv6 in brackets, for "address:port" text."""
    return f"[{address}]" if ":" in address else address
