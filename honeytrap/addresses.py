"""Socket address helpers shared by the servers and monitors."""

from __future__ import annotations

import ipaddress
from typing import Any


def normalize(address: str) -> str:
    """An IPv4 peer of a dual-stack socket shows as ::ffff:a.b.c.d: record it as a.b.c.d."""
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


def bracket(address: str) -> str:
    """IPv6 in brackets, for "address:port" text."""
    return f"[{address}]" if ":" in address else address
