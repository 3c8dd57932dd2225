"""Which destination addresses a download may go to (pure functions, no I/O but the
interface listing in `local_addresses`).

An attacker names the host; we must not let that turn the sensor into a probe of its own
network (downloads refuse non-global addresses by default; the original fetched whatever it
was told). IPv4 hidden in IPv6 is judged as the IPv4 address it reaches:
IPv4-mapped (::ffff:a.b.c.d, which an AF_INET6 socket connects to over IPv4), IPv4-compatible
(::a.b.c.d), NAT64 (64:ff9b::/96, RFC 6052; 64:ff9b:1::/48, RFC 8215), 6to4 (2002::/16,
RFC 3056) and Teredo (2001::/32, RFC 4380: server and obfuscated client).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")
_SIX_TO_FOUR = ipaddress.IPv6Network("2002::/16")
_TEREDO = ipaddress.IPv6Network("2001::/32")
_COMPAT = ipaddress.IPv6Network("::/96")

# Reasons that no `download_allow` entry overrides: fetching from ourselves, from nowhere or
# from a group is never what a sample download is.
ALWAYS_REFUSED = frozenset({"loopback", "unspecified", "multicast", "a sensor address"})


def parse_ip(text: str) -> IPAddress | None:
    """An IP address literal (brackets and an IPv6 zone are accepted), else None."""
    text = text.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    text = text.split("%", 1)[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def embedded_ipv4(addr: IPAddress) -> list[ipaddress.IPv4Address]:
    """Every IPv4 address an IPv6 address carries (empty for plain IPv6 and for IPv4)."""
    if not isinstance(addr, ipaddress.IPv6Address):
        return []
    found: list[ipaddress.IPv4Address] = []
    if addr.ipv4_mapped is not None:
        found.append(addr.ipv4_mapped)
    if addr in _NAT64 or (addr in _COMPAT and int(addr) > 1):
        found.append(ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF))
    if addr in _NAT64_LOCAL:
        # RFC 6052 section 2.2: with a /48 prefix the IPv4 address sits in bits 48..63 and
        # 72..87 (bits 64..71 are the reserved "u" octet).
        raw = addr.packed
        found.append(ipaddress.IPv4Address(raw[6:8] + raw[9:11]))
    if addr.sixtofour is not None:
        found.append(addr.sixtofour)
    if addr.teredo is not None:
        found.extend(addr.teredo)
    return found


def normalise(addr: IPAddress) -> IPAddress:
    """The address a socket really reaches: IPv4-mapped IPv6 becomes its IPv4 address."""
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def classify(addr: IPAddress) -> str | None:
    """Why this (plain) address is not a global unicast destination, or None if it is."""
    if addr.is_unspecified:
        return "unspecified"
    if addr.is_loopback:
        return "loopback"
    if addr.is_multicast:
        return "multicast"
    if addr.is_link_local:
        return "link-local"
    if addr.is_private:
        return "private"
    if addr.is_reserved:
        return "reserved"
    if isinstance(addr, ipaddress.IPv4Address) and addr in ipaddress.IPv4Network("100.64.0.0/10"):
        return "shared address space"
    if not addr.is_global:
        return "not global"
    return None


def refusal(
    addr: IPAddress,
    *,
    own: Iterable[IPAddress] = (),
    allow: Iterable[IPNetwork] = (),
) -> str | None:
    """Why a download must not go to `addr`, or None if it may.

    `own` are the sensor's addresses (always refused); `allow` are ranges the operator
    permits (config `download_allow`) even though they are not global.
    """
    allow = list(allow)
    own_set = {normalise(a) for a in own}
    reached = normalise(addr)
    candidates: list[IPAddress] = [reached, *embedded_ipv4(reached)]
    for candidate in candidates:
        if candidate is reached and _translated(reached):
            continue  # a NAT64 address is judged by the IPv4 address it translates to
        reason = classify(candidate)
        if candidate in own_set and reason not in ALWAYS_REFUSED:
            reason = "a sensor address"
        if reason is None:
            continue
        if reason not in ALWAYS_REFUSED and _allowed(candidate, allow):
            continue
        if candidate == reached:
            return f"{candidate} is {reason}"
        return f"{reached} embeds {candidate}, which is {reason}"
    return None


def _translated(addr: IPAddress) -> bool:
    return isinstance(addr, ipaddress.IPv6Address) and (addr in _NAT64 or addr in _NAT64_LOCAL)


def _allowed(addr: IPAddress, allow: Iterable[IPNetwork]) -> bool:
    return any(addr.version == net.version and addr in net for net in allow)


def parse_networks(texts: Iterable[str]) -> list[IPNetwork]:
    """CIDR strings (config `download_allow`) as networks; ValueError names a bad one."""
    nets: list[IPNetwork] = []
    for text in texts:
        try:
            nets.append(ipaddress.ip_network(text.strip(), strict=False))
        except ValueError as exc:
            raise ValueError(f"download_allow: not a network: {text!r}") from exc
    return nets


def local_addresses() -> set[IPAddress]:
    """The addresses of this host's interfaces (in the current network namespace), read from
    /proc: IPv4 from the local routing table, IPv6 from if_inet6. Best effort: an unreadable
    file yields nothing from it (the attacked address is added by the caller anyway)."""
    found: set[IPAddress] = set()
    found.update(_ipv4_from_fib_trie(_read("/proc/net/fib_trie")))
    found.update(_ipv6_from_if_inet6(_read("/proc/net/if_inet6")))
    try:
        for info in socket.getaddrinfo(socket.gethostname(), None):
            addr = parse_ip(str(info[4][0]))
            if addr is not None:
                found.add(addr)
    except (OSError, UnicodeError):
        pass
    return found


def _read(path: str) -> str:
    try:
        with open(path, encoding="ascii", errors="replace") as handle:
            return handle.read(_PROC_READ_LIMIT)
    except OSError:
        return ""


# /proc/net/fib_trie of a host with many routes is large; local addresses are few. Enough for
# hundreds of thousands of routes; reading is bounded so a full BGP table cannot stall us.
_PROC_READ_LIMIT = 64 * 1024 * 1024


def _ipv4_from_fib_trie(text: str) -> set[IPAddress]:
    """Lines `|-- a.b.c.d` followed by `/32 host LOCAL` name the local IPv4 addresses."""
    found: set[IPAddress] = set()
    last: str | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("|--") or stripped.startswith("+--"):
            last = stripped[3:].split()[0] if len(stripped) > 3 else None
        elif "host LOCAL" in stripped and last is not None:
            addr = parse_ip(last)
            if addr is not None:
                found.add(addr)
    return found


def _ipv6_from_if_inet6(text: str) -> set[IPAddress]:
    found: set[IPAddress] = set()
    for line in text.splitlines():
        fields = line.split()
        if fields and len(fields[0]) == 32:
            try:
                found.add(ipaddress.IPv6Address(bytes.fromhex(fields[0])))
            except ValueError:
                continue
    return found


__all__ = [
    "ALWAYS_REFUSED",
    "IPAddress",
    "IPNetwork",
    "classify",
    "embedded_ipv4",
    "local_addresses",
    "normalise",
    "parse_ip",
    "parse_networks",
    "refusal",
]
